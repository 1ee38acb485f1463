"""`training.evaluate` on two held-out sets: one JSON line with both blocks and `by_objects`, and one
encoder pass per batch whatever the number of languages, with the captions of one language at a time."""

from __future__ import annotations

import itertools
import json

import pytest
import torch

from model.batch_captioning import DecodeSpec, decode_mixed
from model.export_format import export_captioner, load_exported_captioner
from model.modalities import build_captioner
from model.transforms import eval_transform
from model.vocabulary import Vocabulary, tokenize
from ops.tiny_model import tiny_config
from tests.helpers import write_tiny_export
from training import evaluate, second_renderer
from training.coco_data import caption_set, load_captions
from training.shapes_dataset import COLORS, COLUMNS, SHAPES, SIZES, ShapeObject, describe, generate

ALL = ("en", "fr", "de", "es")
TOP_LEVEL = {"bleu1", "bleu2", "bleu3", "bleu4", "cider", "attribute_accuracy", "by_objects", "images", "language",
             "decoding", "num_captions", "seconds"}


def tiny_multilingual_export(directory, seed: int = 2):
    """A tiny random captioner writing in all four languages (start tokens <en> ... <es>), exported."""
    singles = [[ShapeObject(shape, color, size, column)]
               for shape, color, size, column in itertools.product(SHAPES, COLORS, SIZES, COLUMNS)]
    scenes = singles + [singles[0] + singles[-1], singles[1] + singles[5] + singles[-2]]
    words: dict[str, None] = {}
    for objects in scenes:
        for code in ALL:
            for caption in describe(objects, code):
                words.update(dict.fromkeys(tokenize(caption, code)))
    vocab = Vocabulary(words, languages=ALL)
    torch.manual_seed(seed)
    model = build_captioner(tiny_config(len(vocab), languages=ALL)).eval()
    return export_captioner(model, vocab, directory)


def _check_by_objects(block: dict) -> None:
    by_objects = block["by_objects"]
    assert set(by_objects) <= {"1", "2", "3"} and sum(v["images"] for v in by_objects.values()) == block["images"]
    for figures in by_objects.values():
        assert 0.0 <= figures["attribute_accuracy"] <= 1.0


def test_evaluate_reports_the_first_set_at_the_top_and_the_second_renderers_in_its_block(tmp_path, capsys):
    shapes = generate(tmp_path / "shapes", train=1, val=6, seed=5, canvas=64)
    second = second_renderer.generate(tmp_path / "second", count=7, seed=3, quiet=True)
    export = write_tiny_export(tmp_path / "export", seed=2)
    args = evaluate.get_args_parser().parse_args([
        "--export-dir", str(export), "--annotations", str(shapes / "annotations" / "captions_val.json"),
        "--images", str(shapes / "images"), "--device", "cpu", "--quiet",
        "--held-out", "second_renderer", str(second / "annotations" / "captions_val.json"), str(second / "images"),
    ])
    metrics = evaluate.main(args)
    printed = capsys.readouterr().out.strip().splitlines()[-1]
    assert json.loads(printed) == metrics, "one JSON line holds everything"
    assert TOP_LEVEL <= set(metrics) and metrics["images"] == 6 and metrics["decoding"] == "greedy"
    _check_by_objects(metrics)
    block = metrics["second_renderer"]
    assert {"bleu4", "cider", "attribute_accuracy", "by_objects", "images"} <= set(block)
    assert block["images"] == 7 and not {"decoding", "num_captions"} & set(block)
    _check_by_objects(block)


def test_without_held_out_sets_the_report_is_todays(tmp_path, capsys):
    shapes = generate(tmp_path / "shapes", train=1, val=3, seed=6, canvas=64)
    export = write_tiny_export(tmp_path / "export", seed=2)
    metrics = evaluate.main(evaluate.get_args_parser().parse_args([
        "--export-dir", str(export), "--annotations", str(shapes / "annotations" / "captions_val.json"),
        "--images", str(shapes / "images"), "--device", "cpu", "--quiet",
    ]))
    assert set(metrics) == TOP_LEVEL


@pytest.mark.parametrize("names, message", [
    (["second renderer"], "a word"), (["a", "a"], "must differ"),
    (["images"], "'images' is one of the report's own fields"), (["bleu4"], "one of the report's own fields"),
])
def test_held_out_names_must_be_words_each_given_once(names, message):
    with pytest.raises(evaluate.BadOption, match=message):
        evaluate.check_held_out_names(names)


@pytest.mark.parametrize("options, message", [
    (["--do-sample", "--top-p", "0"], "--top-p must be above 0 and at most 1, got 0"),
    (["--do-sample", "--top-p", "5"], "--top-p must be above 0 and at most 1, got 5"),
    (["--beam-size", "3", "--num-captions", "5"], "--num-captions 5 needs --beam-size of at least 5"),
    (["--beam-size", "4", "--beam-groups", "3"], "--beam-groups must divide --beam-size (4), got 3"),
    (["--beam-size", "4", "--beam-groups", "2", "--diversity", "-3"], "--diversity must be 0 or more, got -3"),
    (["--held-out", "images", "a.json", "img"], "'images' is one of the report's own fields"),
])
def test_options_the_service_would_refuse_stop_evaluation_before_any_work(tmp_path, options, message):
    """Checked before the export is read: the folder given here does not even exist."""
    args = evaluate.get_args_parser().parse_args(
        ["--export-dir", str(tmp_path / "none"), "--annotations", "a.json", "--images", "img", *options])
    with pytest.raises(evaluate.BadOption) as refused:
        evaluate.main(args)
    assert message in str(refused.value)


def test_the_command_says_a_refused_option_in_one_line(tmp_path):
    import subprocess
    import sys

    run = subprocess.run(
        [sys.executable, "-m", "training.evaluate", "--export-dir", str(tmp_path / "none"), "--annotations", "a.json",
         "--images", "img", "--do-sample", "--top-p", "0"], capture_output=True, text=True, timeout=120, check=False)
    assert (run.returncode, run.stderr) == (1, "error: --top-p must be above 0 and at most 1, got 0\n")


def _captions_one_language_at_a_time(model, vocab, dataset, spec, batch_size):
    """What evaluation did before: every language its own pass, encoder included."""
    every = {}
    for language in model.config.languages:
        every[language] = {}
        for start in range(0, len(dataset.image_ids), batch_size):
            chunk = dataset.image_ids[start : start + batch_size]
            images = torch.stack([dataset.transform(dataset.load_image(i)) for i in chunk])
            specs = [evaluate._for_image(spec, i) for i in chunk]
            captions, _ = decode_mixed(model.decoder, model.encode(images), specs,
                                       start_id=vocab.start_id_for(language), end_id=vocab.end_id,
                                       unwritten_ids=vocab.unwritten_ids)
            for image_id, caption in zip(chunk, captions):
                every[language][image_id] = [vocab.decode(c.tokens) for c in [caption, *caption.alternatives]]
    return every


@pytest.mark.parametrize("spec", [
    DecodeSpec(12), DecodeSpec(12, beam_size=3, n_best=2), DecodeSpec(12, sample=True, n_best=3, seed=4),
], ids=["greedy", "beam", "sample"])
def test_one_encoder_pass_per_batch_gives_the_figures_of_one_language_at_a_time(tmp_path, spec):
    shapes = generate(tmp_path / "shapes", train=1, val=10, seed=5, canvas=64, languages=ALL)
    model, vocab = load_exported_captioner(tiny_multilingual_export(tmp_path / "export"))
    annotations = shapes / "annotations" / "captions_val.json"
    config = model.config
    dataset = caption_set(load_captions([annotations]), shapes / "images", vocab,
                          eval_transform(image_size=config.image_size, mean=config.mean, std=config.std))
    with torch.inference_mode():
        before = _captions_one_language_at_a_time(model, vocab, dataset, spec, batch_size=4)
    assert len({str(before[code]) for code in ALL}) == len(ALL), "the languages' captions differ"

    encoded = []
    encode = model.encode
    model.encode = lambda images: encoded.append(len(images)) or encode(images)
    metrics, predictions = evaluate.evaluate_model(model, vocab, annotations, shapes / "images",
                                                   device=torch.device("cpu"), batch_size=4, spec=spec, quiet=True)
    assert encoded == [4, 4, 2], "each batch encoded once, for all four languages"
    assert predictions == {i: captions[0] for i, captions in before["en"].items()}
    scenes = evaluate.scenes_of(dataset)
    for code in ALL:
        best = {i: captions[0] for i, captions in before[code].items()}
        expected = evaluate.score_captions(best, dataset.references(code), scenes, code)
        if spec.n_best > 1:
            expected.update(evaluate.diversity_metrics(before[code], dataset.references(code), scenes, code))
        assert metrics["languages"][code] == expected, code
