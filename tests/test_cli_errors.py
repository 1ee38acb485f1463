"""The training tools' command lines: numbers an option cannot mean and caption files that are not caption
files are refused in one line before any work, and the files a tool writes are where it says."""

from __future__ import annotations

import json
import subprocess
import sys
from functools import partial
from pathlib import Path

import pytest

REQUIRED = {  # each parser's required options, so only the option under test is wrong
    "training.train": ["--annotations", "a.json", "--images", "img"],
    "training.evaluate": ["--annotations", "a.json", "--images", "img"],
    "training.gallery": ["--annotations", "a.json", "--images", "img"],
    "training.shapes_dataset": ["--out", "out"],
    "training.second_renderer": ["--out", "out"],
    "training.video_data": [],
    "training.video_gallery": ["--annotations", "a.json", "--videos", "clips"],
    "training.domain_calibration": [],
    "training.domain_report": [],
}

REFUSED = [  # (module, option, value, what argparse says of it)
    ("training.train", "--epochs", "0", "must be at least 1, got 0"),
    ("training.train", "--epochs", "-2", "must be at least 1, got -2"),
    ("training.train", "--batch-size", "0", "must be at least 1"),
    ("training.train", "--batch-size", "-4", "must be at least 1"),
    ("training.train", "--captions-per-image", "0", "must be at least 1"),
    ("training.train", "--workers", "-1", "must be 0 or more, got -1"),
    ("training.train", "--num-frames", "0", "must be at least 1"),
    ("training.train", "--max-steps", "0", "must be at least 1"),
    ("training.train", "--lr", "0", "must be above 0"),
    ("training.train", "--val-fraction", "1", "must be at least 0 and below 1, got 1"),
    ("training.train", "--epochs", "two", "expected a whole number, got 'two'"),
    ("training.evaluate", "--batch-size", "0", "must be at least 1"),
    ("training.evaluate", "--beam-size", "0", "must be at least 1"),
    ("training.evaluate", "--limit", "-8", "must be at least 1, got -8"),
    ("training.domain_calibration", "--fit-max-images", "-30", "must be at least 1, got -30"),
    ("training.domain_calibration", "--fit-max-images", "0", "must be at least 1, got 0"),
    ("training.domain_calibration", "--domain-batch-size", "0", "must be at least 1"),
    ("training.domain_report", "--domain-batch-size", "0", "must be at least 1"),
    ("training.gallery", "--count", "0", "must be at least 1"),
    ("training.shapes_dataset", "--train", "-5", "must be 0 or more, got -5"),
    ("training.second_renderer", "--count", "-5", "must be at least 1, got -5"),
    ("training.second_renderer", "--count", "0", "must be at least 1, got 0"),
    ("training.second_renderer", "--first-id", "-1", "must be 0 or more, got -1"),
    ("training.shapes_dataset", "--canvas", "8", "must be from 32 to 2048, got 8"),
    ("training.shapes_dataset", "--canvas", "4096", "must be from 32 to 2048, got 4096"),
    ("training.video_data", "--frame-size", "63", "must be even, got 63"),
    ("training.video_data", "--frame-size", "8", "must be from 16 to 1024, got 8"),
    ("training.video_gallery", "--count", "0", "must be at least 1, got 0"),
    ("training.train", "--device", "gpu", "expected cpu, cuda or cuda:N, got 'gpu'"),
    ("training.evaluate", "--device", "tpu", "expected cpu, cuda or cuda:N, got 'tpu'"),
    ("training.domain_calibration", "--device", "cuda:x", "expected cpu, cuda or cuda:N, got 'cuda:x'"),
    # cuda:99 is on no machine: "no CUDA device" here, "has N CUDA device(s)" on a GPU machine
    ("training.train", "--device", "cuda:99", "'cuda:99': this machine has "),
]


def parse(module: str, argv: list[str]):
    """The module's own parser on `argv`, as its command line reads it."""
    import importlib

    tool = importlib.import_module(module)
    return tool.get_args_parser().parse_args(argv)


@pytest.mark.parametrize(("module", "option", "value", "words"), REFUSED)
def test_a_number_an_option_cannot_mean_is_refused_naming_the_option(module, option, value, words, capsys):
    with pytest.raises(SystemExit) as stop:
        parse(module, [*REQUIRED[module], f"{option}={value}"])
    assert stop.value.code == 2
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert f"error: argument {option}: {words}" in last, last


@pytest.mark.parametrize(("module", "option", "value", "read"), [
    ("training.train", "--workers", "0", 0),
    ("training.train", "--val-fraction", "0", 0.0),
    ("training.evaluate", "--top-k", "0", 0),
    ("training.gallery", "--photos", "0", 0),
    ("training.shapes_dataset", "--val", "0", 0),
    ("training.second_renderer", "--first-id", "0", 0),
    ("training.shapes_dataset", "--canvas", "32", 32),
    ("training.video_data", "--frame-size", "16", 16),
    ("training.domain_report", "--fresh-scenes", "0", 0),
])
def test_the_numbers_that_mean_none_or_the_smallest_size_are_still_taken(module, option, value, read):
    args = parse(module, [*REQUIRED[module], option, value])
    assert getattr(args, option[2:].replace("-", "_")) == read


def test_the_training_command_refuses_zero_epochs_before_reading_anything(tmp_path):
    run = subprocess.run([sys.executable, "-m", "training.train", "--annotations", str(tmp_path / "none.json"),
                          "--images", str(tmp_path), "--epochs", "0", "--output-dir", str(tmp_path / "out")],
                         capture_output=True, text=True, timeout=120, check=False)
    assert run.returncode == 2 and "Traceback" not in run.stderr, run.stderr
    assert run.stderr.strip().splitlines()[-1].endswith("error: argument --epochs: must be at least 1, got 0")
    assert not (tmp_path / "out").exists()


def test_the_domain_report_with_nothing_in_domain_to_score_says_so(tmp_path, capsys):
    from training import domain_report

    with pytest.raises(SystemExit) as stop:
        domain_report.main(["--export-dir", str(tmp_path / "none"), "--fresh-scenes", "0"])
    assert stop.value.code == 2
    assert "no in-domain images to score" in capsys.readouterr().err.strip().splitlines()[-1]


def test_fuzz_batches_and_the_tiny_models_names_are_checked(capsys):
    from ops import fuzz

    for batches in ("0", "-3"):
        with pytest.raises(SystemExit) as stop:
            fuzz.main(["--batches", batches])
        assert stop.value.code == 2
        assert f"argument --batches: must be at least 1, got {batches}" in capsys.readouterr().err
    for option, name, known in (("--backbone", "resnet99", "resnet18"), ("--decoder", "transformer", "soft_attention")):
        run = subprocess.run([sys.executable, "-m", "ops.tiny_model", option, name, "--out", "/nonexistent/x"],
                             capture_output=True, text=True, timeout=120, check=False)
        last = run.stderr.strip().splitlines()[-1]
        assert run.returncode == 2 and f"invalid choice: '{name}'" in last and known in last, run.stderr


def test_fuzz_shows_its_progress_on_stderr_and_keeps_stdout_to_the_report():
    run = subprocess.run([sys.executable, "-m", "ops.fuzz", "--batches", "2", "--strategies", "content-types"],
                         capture_output=True, text=True, timeout=300, check=False)
    assert run.returncode == 0, run.stderr[-2000:]
    report = json.loads(run.stdout)
    assert report["batches"] == {"content-types": 2} and report["failures"] == 0
    assert "fuzzing: 100%" in run.stderr and "2/2" in run.stderr, run.stderr[-2000:]


# --- caption files that are not caption files ------------------------------------------------------

NOT_CAPTION_FILES = {  # file text -> what the one line says of it
    '{"images": [], "annotations": []}': "holds no captioned images (0 images, 0 captions)",
    '{"foo": 1}': 'is not a COCO caption file (no "annotations" list)',
    "[1, 2]": "is not a COCO caption file (a JSON list",
    "not json at all": "is not a COCO caption file (not JSON",
    '{"images": [{"id": 1, "file_name": "a.jpg"}], "annotations": [{"id": 1, "image_id": 1, "bbox": [0, 0, 1, 1]}]}':
        'its annotations have no "caption"',
    '{"images": [{"id": 1, "file_name": "a.jpg"}], "annotations": [{"id": 1, "image_id": 2, "caption": "a"}]}':
        "holds no captioned images (1 images, 1 captions, none of a listed image)",
}


def one_line_error(run) -> str:
    """The message `user_errors` turns `run()`'s user mistake into (what the command prints, exit 1)."""
    from training.cli import user_errors

    with pytest.raises(SystemExit) as stop, user_errors():
        run()
    message = str(stop.value.code)
    assert message.startswith("error: ") and "\n" not in message, message
    return message


def test_training_on_a_file_that_is_not_a_caption_file_says_what_it_is(tmp_path):
    from training import train

    (tmp_path / "images").mkdir()
    for number, (text, words) in enumerate(NOT_CAPTION_FILES.items()):
        path = tmp_path / f"bad{number}.json"
        path.write_text(text)
        args = train.get_args_parser().parse_args([
            "--annotations", str(path), "--images", str(tmp_path / "images"), "--encoder-weights", "none",
            "--output-dir", str(tmp_path / "out")])
        message = one_line_error(partial(train.main, args))
        assert message.startswith(f"error: {path} ") and words in message, (text, message)


def test_evaluate_and_gallery_on_an_empty_caption_file_say_so(tmp_path):
    from ops.tiny_model import write_tiny_export
    from training import evaluate, gallery

    export = write_tiny_export(tmp_path / "export", seed=1)
    empty = tmp_path / "empty.json"
    empty.write_text('{"images": [], "annotations": []}')
    argv = ["--export-dir", str(export), "--annotations", str(empty), "--images", str(tmp_path)]
    for tool in (evaluate, gallery):
        args = tool.get_args_parser().parse_args([*argv, "--out", str(tmp_path / "g.png")] if tool is gallery else argv)
        message = one_line_error(partial(tool.main, args))
        assert message == f"error: {empty} holds no captioned images (0 images, 0 captions); give a caption file " \
                          "whose captions name its images", message


def test_the_training_command_says_an_empty_caption_file_or_a_split_with_nothing_to_train_in_one_line(tmp_path):
    from training.shapes_dataset import generate

    data = generate(tmp_path / "shapes", train=6, val=0, seed=3, canvas=32)
    empty = tmp_path / "empty.json"
    empty.write_text('{"images": [], "annotations": []}')
    common = ["--images", str(data / "images"), "--encoder-weights", "none", "--backbone", "resnet18",
              "--image-size", "32", "--epochs", "1", "--quiet", "--output-dir", str(tmp_path / "out")]
    runs = {
        f"error: {empty} holds no captioned images": ["--annotations", str(empty)],
        "error: --val-fraction 0.95 holds out all 6 images, leaving none to train on": [
            "--annotations", str(data / "annotations" / "captions_train.json"), "--val-fraction", "0.95"],
    }
    for words, argv in runs.items():
        run = subprocess.run([sys.executable, "-m", "training.train", *argv, *common],
                             capture_output=True, text=True, timeout=120, check=False)
        assert run.returncode == 1 and "Traceback" not in run.stderr, run.stderr
        assert run.stderr.strip().splitlines()[-1].startswith(words), run.stderr


# --- the gallery's paths ------------------------------------------------------------------------------


def test_the_gallery_prints_the_files_it_wrote_and_puts_the_attention_sheet_beside_its_out(tmp_path, monkeypatch,
                                                                                           capsys):
    from ops.tiny_model import write_tiny_export
    from training import gallery
    from training.shapes_dataset import generate

    export = write_tiny_export(tmp_path / "export", seed=1, decoder="soft_attention")
    data = generate(tmp_path / "shapes", train=1, val=2, seed=3, canvas=32)
    (tmp_path / "cwd").mkdir()
    monkeypatch.chdir(tmp_path / "cwd")  # the default once wrote build/attention.png here, wherever --out was
    argv = ["--export-dir", str(export), "--annotations", str(data / "annotations" / "captions_val.json"),
            "--images", str(data / "images"), "--count", "2", "--attention-count", "1"]
    gallery.main(gallery.get_args_parser().parse_args([*argv, "--out", str(tmp_path / "x" / "gal3")]))
    written = [line.removeprefix("wrote ") for line in capsys.readouterr().out.splitlines()]
    assert written == [str(tmp_path / "x" / "gal3.png"), str(tmp_path / "x" / "gal3_attention.png")]
    assert all(Path(path).is_file() for path in written)
    assert not any((tmp_path / "cwd").iterdir())

    gallery.main(gallery.get_args_parser().parse_args([*argv, "--out", str(tmp_path / "y.png"),
                                                       "--attention-out", str(tmp_path / "maps")]))
    assert capsys.readouterr().out.splitlines()[-1] == f"wrote {tmp_path / 'maps.png'}"
    assert (tmp_path / "maps.png").is_file() and (tmp_path / "y.png").is_file()


# --- checkpoints that are not checkpoints ---------------------------------------------------------


def _damaged_files(folder: Path) -> dict[str, str]:
    """Files given as checkpoints that are not one -> what the one line says of each."""
    import torch

    folder.mkdir()
    (folder / "garbage.pt").write_text("garbage\n")
    (folder / "empty.pt").write_bytes(b"")
    torch.save({"model": {"w": torch.zeros(2)}}, folder / "whole.pt")
    whole = (folder / "whole.pt").read_bytes()
    (folder / "truncated.pt").write_bytes(whole[: len(whole) // 2])
    (folder / "garbage.safetensors").write_text("garbage")
    return {
        "garbage.pt": "is not a checkpoint this project wrote: it is not a PyTorch file of tensors",
        "empty.pt": "is not a checkpoint this project wrote: the file is empty",
        "truncated.pt": "is not a checkpoint this project wrote: it is cut short or damaged",
        "garbage.safetensors": "is not a checkpoint this project wrote: it is not a safetensors file",
    }


def test_a_damaged_checkpoint_is_named_in_one_line_without_advice_to_load_it_unsafely(tmp_path):
    from training.checkpoints import load_checkpoint, load_tensors

    for name, words in _damaged_files(tmp_path / "bad").items():
        path = tmp_path / "bad" / name
        message = one_line_error(partial(load_checkpoint, path))
        assert message.startswith(f"error: {path} {words}") and "weights_only" not in message, message
        weights = one_line_error(partial(load_tensors, path))
        assert weights.startswith(f"error: {path} is not a weights file") and "weights_only" not in weights, weights


def test_a_state_dict_is_not_taken_for_a_training_checkpoint_nor_a_checkpoint_for_weights(tmp_path):
    import torch

    from training.checkpoints import load_checkpoint, load_tensors, save_checkpoint

    weights, checkpoint = tmp_path / "weights.pt", tmp_path / "run" / "checkpoint.pt"
    torch.save({"fc.weight": torch.zeros(2, 2)}, weights)
    save_checkpoint({"model": {"w": torch.zeros(2)}, "config": {}, "vocab": {}}, checkpoint)
    assert one_line_error(partial(load_checkpoint, weights)) == (
        f"error: {weights} is a state_dict (weights alone), not a training checkpoint: it has no config or "
        "vocabulary; give the checkpoint.pt a training run wrote")
    assert one_line_error(partial(load_tensors, checkpoint)) == (
        f"error: {checkpoint} is a training checkpoint, not a state_dict of weights; start a run from its weights "
        "with --init-from")
    assert torch.equal(load_tensors(weights)["fc.weight"], torch.zeros(2, 2))


def test_resume_from_a_runs_output_folder_reads_the_checkpoint_in_it(tmp_path):
    import torch

    from training.checkpoints import load_checkpoint, save_checkpoint

    save_checkpoint({"model": {"w": torch.ones(2)}, "config": {}, "vocab": {}, "epoch": 3}, tmp_path / "run" / "checkpoint.pt")
    assert load_checkpoint(tmp_path / "run")["epoch"] == 3
    (tmp_path / "empty").mkdir()
    assert one_line_error(partial(load_checkpoint, tmp_path / "empty")).startswith(
        f"error: no checkpoint at {tmp_path / 'empty'}")


def test_export_and_train_say_a_damaged_checkpoint_in_one_line(tmp_path):
    garbage = tmp_path / "g.pt"
    garbage.write_text("garbage\n")
    commands = [
        ["training.export", "--checkpoint", str(garbage), "--out", str(tmp_path / "x")],
        ["training.train", "--annotations", "a.json", "--images", "img", "--encoder-weights", str(garbage),
         "--output-dir", str(tmp_path / "out")],
    ]
    for command in commands:
        run = subprocess.run([sys.executable, "-m", *command], capture_output=True, text=True, timeout=120,
                             check=False)
        assert run.returncode == 1 and "Traceback" not in run.stderr and "weights_only" not in run.stderr, run.stderr
        assert run.stderr.strip().splitlines()[-1].startswith(f"error: {garbage} is not a"), run.stderr


# --- an error in a data-loader process --------------------------------------------------------------


class _UnreadableSet:
    """A dataset whose second item cannot be read, as a corrupt image file makes `CocoCaptions`."""

    def __len__(self) -> int:
        return 2

    def __getitem__(self, index: int) -> int:
        from training.coco_data import UnreadableImage

        if index == 1:
            raise UnreadableImage("image img/2.png (id 2) cannot be read: truncated; replace the file")
        return index


def test_a_users_mistake_found_in_a_loader_process_is_its_own_message_in_one_line():
    from torch.utils.data import DataLoader

    loader = DataLoader(_UnreadableSet(), batch_size=1, num_workers=1)
    assert one_line_error(lambda: list(loader)) == (
        "error: image img/2.png (id 2) cannot be read: truncated; replace the file")


# --- output folders that are files ---------------------------------------------------------------


def test_an_output_folder_that_is_a_file_is_said_in_one_line(tmp_path):
    from training import second_renderer

    taken = tmp_path / "taken"
    taken.write_text("")
    (tmp_path / "out" / "images").parent.mkdir()
    (tmp_path / "out" / "images").write_text("")
    for out, blocker in ((taken, taken), (taken / "deeper", taken), (tmp_path / "out", tmp_path / "out" / "images")):
        args = second_renderer.get_args_parser().parse_args(["--out", str(out), "--count", "1", "--quiet"])
        assert one_line_error(partial(second_renderer.main, args)) == (
            f"error: cannot make the folder {out / 'images'}: {blocker} is a file; give another path, or move the "
            "file away")
    run = subprocess.run([sys.executable, "-m", "training.second_renderer", "--out", str(taken), "--count", "1"],
                         capture_output=True, text=True, timeout=120, check=False)
    assert run.returncode == 1 and run.stderr.strip().startswith("error: cannot make the folder"), run.stderr


# --- the diversity table ---------------------------------------------------------------------------


def test_the_diversity_table_says_a_missing_export_in_one_line():
    run = subprocess.run([sys.executable, "-m", "training.diversity_table", "--export-dir", "nope",
                          "--annotations", "a.json", "--images", "img"], capture_output=True, text=True, timeout=120,
                         check=False)
    assert run.returncode == 1 and "Traceback" not in run.stderr, run.stderr
    assert run.stderr.strip().splitlines() == ["error: nope lacks config.json, vocab.json, model.safetensors; run "
                                               "`make model` (or training.export) first"]


def test_the_diversity_table_says_whether_the_model_or_the_file_lacks_the_language(tmp_path):
    from model.export_format import export_captioner
    from model.modalities import build_captioner
    from model.vocabulary import Vocabulary
    from ops.tiny_model import SHAPE_WORDS, tiny_config
    from training import diversity_table
    from training.shapes_dataset import generate

    vocab = Vocabulary(SHAPE_WORDS, languages=("en", "fr"))
    model = build_captioner(tiny_config(len(vocab), languages=("en", "fr"), backbone="resnet18")).eval()
    export = export_captioner(model, vocab, tmp_path / "export")
    data = generate(tmp_path / "data", train=0, val=2, seed=1, canvas=32, languages=("en", "de"))
    captions = data / "annotations" / "captions_val.json"
    argv = ["--export-dir", str(export), "--annotations", str(captions), "--images", str(data / "images"), "--quiet"]
    parser = diversity_table.get_args_parser()
    assert one_line_error(partial(diversity_table.main, parser.parse_args([*argv, "--language", "de"]))) == (
        "error: --language de: the model captions in en, fr only; choose one of those")
    assert one_line_error(partial(diversity_table.main, parser.parse_args([*argv, "--language", "fr"]))).startswith(
        f"error: {captions} has no captions in fr for 2 of its 2 images, e.g. image id ")
