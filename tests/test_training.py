"""Training, resume, export and the encoder-weights choice, on a tiny generated set."""

import json
import os

import pytest
import torch
from safetensors.torch import load_file

from model.export_format import ExportError, load_exported_captioner
from model.decoding import greedy_decode
from training import auxiliary_losses, train
from training.checkpoints import load_checkpoint
from training.encoder_weights import load_encoder_weights
from training.export import export_checkpoint
from training.shapes_dataset import generate


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    return generate(tmp_path_factory.mktemp("shapes"), train=24, val=8, seed=3, canvas=64)


def train_args(dataset, output_dir, *extra):
    return train.get_args_parser().parse_args(
        [
            "--annotations", str(dataset / "annotations" / "captions_train.json"),
            "--val-annotations", str(dataset / "annotations" / "captions_val.json"),
            "--images", str(dataset / "images"),
            "--output-dir", str(output_dir),
            "--encoder-weights", "none",
            "--embed-size", "16", "--hidden-size", "32", "--image-size", "32",
            "--batch-size", "8", "--min-word-count", "1", "--quiet",
            *extra,
        ]
    )


def test_training_lowers_the_loss(dataset, tmp_path):
    train.main(train_args(dataset, tmp_path, "--epochs", "10", "--lr", "2e-2"))
    history = json.loads((tmp_path / "history.json").read_text())
    losses = history["train_loss"]
    assert sum(losses[-3:]) / 3 < 0.8 * sum(losses[:3]) / 3, losses
    assert (tmp_path / "loss_curve.png").stat().st_size > 1000


def test_frozen_backbone_features_are_computed_once(dataset, tmp_path, monkeypatch):
    calls = []
    original = train.compute_backbone_features
    monkeypatch.setattr(train, "compute_backbone_features", lambda *a, **k: calls.append(1) or original(*a, **k))
    train.main(train_args(dataset, tmp_path, "--epochs", "2"))
    assert len(calls) == 2, "once for the training images, once for the validation images, not per epoch"


def test_resume_continues_from_the_checkpoint_epoch(dataset, tmp_path, capsys):
    first = tmp_path / "first"
    train.main(train_args(dataset, first, "--epochs", "1", "--train-backbone"))
    assert load_checkpoint(first / "checkpoint.pt")["epoch"] == 0
    assert "earlier run's checkpoint" not in capsys.readouterr().out
    resumed = tmp_path / "resumed"
    train.main(train_args(dataset, resumed, "--epochs", "3", "--train-backbone", "--resume", str(first / "checkpoint.pt")))
    checkpoint = load_checkpoint(resumed / "checkpoint.pt")
    assert checkpoint["epoch"] == 2
    assert len(checkpoint["history"]["val_loss"]) == 3, "epoch 1 from the first run, epochs 2-3 resumed"
    first_weights = load_checkpoint(first / "checkpoint.pt")["model"]
    changed = [k for k in first_weights if not torch.equal(first_weights[k], checkpoint["model"][k])]
    assert changed, "training went on from the loaded weights"

    # Going on in the run's own folder replaces its checkpoint, as asked; a new run there is told it replaces one.
    train.main(train_args(dataset, first, "--epochs", "2", "--train-backbone", "--resume", str(first / "checkpoint.pt")))
    assert "earlier run's checkpoint" not in capsys.readouterr().out
    train.main(train_args(dataset, first, "--epochs", "1"))
    assert f"{first / 'checkpoint.pt'} holds an earlier run's checkpoint; this run's first epoch replaces it" in (
        capsys.readouterr().out)


def test_export_rebuilds_an_identical_model(dataset, tmp_path):
    train.main(train_args(dataset, tmp_path / "run", "--epochs", "1"))
    export_dir = export_checkpoint(tmp_path / "run" / "checkpoint.pt", tmp_path / "export")
    assert sorted(os.listdir(export_dir)) == ["config.json", "model.safetensors", "vocab.json"]
    checkpoint = load_checkpoint(tmp_path / "run" / "checkpoint.pt")
    model, vocab = load_exported_captioner(export_dir)
    from model.captioner import Captioner
    from model.config import CaptionerConfig

    original = Captioner(CaptionerConfig.from_dict(checkpoint["config"]))
    original.load_state_dict(checkpoint["model"])
    original.eval()
    images = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(original.encode(images), model.encode(images))
    ids = dict(start_id=vocab.start_id, end_id=vocab.end_id, max_length=10)
    a = greedy_decode(original.decoder, original.encode(images), **ids)
    b = greedy_decode(model.decoder, model.encode(images), **ids)
    assert [c.tokens for c in a.captions] == [c.tokens for c in b.captions]
    assert set(load_file(str(export_dir / "model.safetensors"))) == set(checkpoint["model"])


def test_a_weights_file_with_a_pickle_payload_is_refused(tmp_path):
    from tests.helpers import write_tiny_export

    export_dir = write_tiny_export(tmp_path)
    marker = tmp_path / "pwned"

    class Payload:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    torch.save({"weights": Payload()}, export_dir / "model.safetensors")
    with pytest.raises(ExportError, match="not a valid safetensors"):
        load_exported_captioner(export_dir)
    assert not marker.exists(), "the payload never ran"


def test_incomplete_export_names_the_fix(tmp_path):
    with pytest.raises(ExportError, match="make model"):
        load_exported_captioner(tmp_path)


def test_imagenet_weights_without_a_cache_fail_clearly(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    with pytest.raises(FileNotFoundError, match="not in torchvision's cache") as error:
        load_encoder_weights("imagenet")
    assert "--encoder-weights" in str(error.value)


def test_encoder_weights_from_a_path(tmp_path):
    from torchvision.models import resnet34

    path = tmp_path / "resnet34.pth"
    torch.save(resnet34(weights=None).state_dict(), path)
    weights = load_encoder_weights(str(path))
    assert "layer4.2.bn2.weight" in weights


@pytest.mark.parametrize("total_steps", [1, 2, 3, 19, 20, 21, 40, 600])
def test_the_learning_rate_schedule_runs_every_step_of_a_run_of_any_length(total_steps):
    """A run of 20 steps (`--epochs 1 --max-steps 20`) once stopped at its first step: a one-step warm-up."""
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1)
    scheduler = train.one_cycle_schedule(optimizer, total_steps)
    rates = [optimizer.param_groups[0]["lr"]]
    for _ in range(total_steps - 1):
        optimizer.step()
        scheduler.step()
        rates.append(optimizer.param_groups[0]["lr"])
    assert all(0 <= rate <= 0.1 + 1e-9 for rate in rates), rates
    if total_steps >= 40:
        assert max(rates) == pytest.approx(0.1) and rates[-1] < 0.01, "up to the peak, then down to near zero"


def test_word_position_head_learns_each_images_first_caption_in_order():
    from training.coco_data import collate_captions

    # Two images, the first with two captions: the head's targets are caption 0 of each image.
    first_a, second_a, first_b = torch.tensor([1, 5, 6, 2]), torch.tensor([1, 7, 2]), torch.tensor([1, 6, 5, 8, 2])
    batch = collate_captions([(torch.zeros(3), [first_a, second_a], 10), (torch.zeros(3), [first_b], 11)])
    head = auxiliary_losses.WordPositionHead(embed_size=4, vocab_size=9, max_length=6)
    embeddings = torch.randn(2, 4, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        head.linear.weight.zero_()
        head.linear.bias.zero_()
        uniform = head.loss(embeddings, batch, pad_id=0).item()
    assert uniform == pytest.approx(torch.log(torch.tensor(9.0)).item(), rel=1e-5)
    # If image a's second caption were a target too, position 1 would want both 6 and 7
    # and the loss could not approach zero.
    optimizer = torch.optim.Adam(head.parameters(), lr=0.1)
    for _ in range(200):
        optimizer.zero_grad()
        head.loss(embeddings, batch, pad_id=0).backward()
        optimizer.step()
    assert head.loss(embeddings, batch, pad_id=0).item() < 0.01, "the second caption of image a is not a target"
    logits = head.linear(embeddings).view(2, 6, 9)
    assert logits[0, :3].argmax(-1).tolist() == [5, 6, 2]
    assert logits[1, :4].argmax(-1).tolist() == [6, 5, 8, 2]


def test_training_with_the_auxiliary_heads_saves_and_resumes_them(dataset, tmp_path):
    heads = ("--concept-weight", "1.0", "--word-position-weight", "1.0", "--scene-weight", "1.0", "--train-backbone")
    train.main(train_args(dataset, tmp_path / "first", "--epochs", "1", *heads))
    checkpoint = load_checkpoint(tmp_path / "first" / "checkpoint.pt")
    assert {"concept_head", "position_head", "scene_head"} <= set(checkpoint)
    train.main(train_args(dataset, tmp_path / "resumed", "--epochs", "2", *heads,
                          "--resume", str(tmp_path / "first" / "checkpoint.pt")))
    resumed = load_checkpoint(tmp_path / "resumed" / "checkpoint.pt")
    assert resumed["epoch"] == 1
    assert not resumed["position_head"]["linear.weight"].equal(checkpoint["position_head"]["linear.weight"])
    assert not resumed["scene_head"]["linear.weight"].equal(checkpoint["scene_head"]["linear.weight"])


def test_scene_head_learns_what_stands_in_each_column_of_each_image():
    from training.coco_data import collate_captions

    # Two images with their scenes keyed by image id: (columns=2, attributes=(3, 2)).
    scenes = {10: torch.tensor([[2, 1], [0, 0]]), 11: torch.tensor([[0, 0], [1, 1]])}
    head = auxiliary_losses.SceneHead(embed_size=4, columns=2, attribute_classes=(3, 2), scenes=scenes)
    caption = torch.tensor([1, 5, 2])
    batch = collate_captions([(torch.zeros(3), [caption], 11), (torch.zeros(3), [caption], 10)])
    embeddings = torch.randn(2, 4, generator=torch.Generator().manual_seed(0))
    optimizer = torch.optim.Adam(head.parameters(), lr=0.1)
    for _ in range(200):
        optimizer.zero_grad()
        head.loss(embeddings, batch).backward()
        optimizer.step()
    assert head.loss(embeddings, batch).item() < 0.01
    logits = head.linear(embeddings).view(2, 2, 5)
    colour, shape = logits[..., :3].argmax(-1), logits[..., 3:].argmax(-1)
    # Batch row 0 is image 11, row 1 image 10: targets follow the image ids, not the row order.
    assert colour.tolist() == [[0, 1], [2, 0]] and shape.tolist() == [[0, 1], [1, 0]]


def test_scene_loss_on_images_without_scenes_says_why(dataset, tmp_path):
    coco = json.loads((dataset / "annotations" / "captions_train.json").read_text())
    for image in coco["images"]:
        del image["objects"]
    (tmp_path / "plain.json").write_text(json.dumps(coco))
    args = train_args(dataset, tmp_path / "run", "--epochs", "1", "--scene-weight", "1.0")
    args.annotations = str(tmp_path / "plain.json")
    with pytest.raises(SystemExit, match="objects.*generated set"):
        train.main(args)


def test_fewer_captions_per_image_train_and_the_word_position_loss_refuses_them(dataset, tmp_path):
    train.main(train_args(dataset, tmp_path / "one", "--epochs", "1", "--captions-per-image", "1"))
    assert load_checkpoint(tmp_path / "one" / "checkpoint.pt")["epoch"] == 0
    with pytest.raises(SystemExit, match="every caption"):
        train.main(train_args(dataset, tmp_path / "two", "--epochs", "1", "--captions-per-image", "1",
                              "--word-position-weight", "1.0"))


def test_init_from_with_another_decoder_trains_a_new_one_on_the_checkpoints_encoder(dataset, tmp_path):
    first = train.main(train_args(dataset, tmp_path / "first", "--epochs", "1", "--train-backbone",
                                  "--object-map-weight", "1.0"))
    source = load_checkpoint(first)
    second = train.main(train_args(dataset, tmp_path / "second", "--epochs", "1", "--decoder", "soft_attention",
                                   "--init-from", str(first)))
    result = load_checkpoint(second)
    assert source["config"]["decoder"] == "show_tell" and result["config"]["decoder"] == "soft_attention"
    encoder = [k for k in source["model"] if k.startswith("encoder.backbone.")]
    assert encoder and all(torch.equal(result["model"][k], source["model"][k]) for k in encoder)
    assert "decoder.cell_attention.weight" in result["model"] and "decoder.cell_attention.weight" not in source["model"]


def test_init_from_starts_a_new_run_on_a_checkpoints_weights_with_the_backbone_frozen(dataset, tmp_path):
    first = train.main(train_args(dataset, tmp_path / "first", "--epochs", "2", "--train-backbone", "--scene-weight", "1.0"))
    source = load_checkpoint(first)
    second = train.main(train_args(dataset, tmp_path / "second", "--epochs", "1", "--scene-weight", "1.0",
                                   "--init-from", str(first)))
    result = load_checkpoint(second)
    assert result["epoch"] == 0 and len(result["history"]["val_loss"]) == 1, "a new run, not the first one resumed"
    assert result["config"]["train_backbone"] is False
    assert result["vocab"] == source["vocab"]
    backbone = [k for k in source["model"] if k.startswith("encoder.backbone.")]
    assert backbone and all(torch.equal(result["model"][k], source["model"][k]) for k in backbone)
    assert not torch.equal(result["model"]["decoder.linear.weight"], source["model"]["decoder.linear.weight"])
    assert not torch.equal(result["scene_head"]["linear.weight"], source["scene_head"]["linear.weight"])
    with pytest.raises(SystemExit, match="give one"):
        train.main(train_args(dataset, tmp_path / "both", "--resume", str(first), "--init-from", str(first)))


def test_a_video_set_trains_its_backbone_with_every_sampled_frames_object_map(tmp_path):
    """The video recipe's stage 1: clips of 4 frames, a ResNet-18 read frame by frame, the per-frame object map."""
    from training import video_data

    train_json, val_json = video_data.generate(tmp_path / "videos", train=8, val=2, seed=3, frame_size=32)
    args = train.get_args_parser().parse_args([
        "--annotations", str(train_json), "--val-annotations", str(val_json),
        "--images", str(tmp_path / "videos" / "clips"), "--output-dir", str(tmp_path / "run"),
        "--encoder-weights", "none", "--backbone", "resnet18", "--train-backbone", "--num-frames", "4",
        "--embed-size", "16", "--hidden-size", "32", "--image-size", "32", "--batch-size", "4",
        "--min-word-count", "1", "--quiet", "--epochs", "1", "--object-map-weight", "1.0", "--eval-captions",
    ])
    checkpoint = load_checkpoint(train.main(args))
    config = checkpoint["config"]
    assert (config["modality"], config["backbone"], config["num_frames"]) == ("video", "resnet18", 4)
    assert checkpoint["model"]["encoder.linear.weight"].shape == (16, 512)
    metrics = checkpoint["history"]["val_metrics"][0]  # --eval-captions scores the clips' captions each epoch
    assert 0 <= metrics["motion_accuracy"] <= 1 and "bleu4" in metrics, metrics


@pytest.mark.parametrize("languages", [("en",), ("fr", "en")], ids=["one language", "multilingual"])
def test_eval_captions_scores_the_model_in_its_first_language_each_epoch(tmp_path, capsys, languages):
    dataset = generate(tmp_path / "shapes", train=16, val=4, seed=3, canvas=64, languages=languages)
    checkpoint = load_checkpoint(train.main(train_args(dataset, tmp_path / "run", "--epochs", "1", "--eval-captions")))
    assert tuple(checkpoint["config"]["languages"]) == languages
    metrics = checkpoint["history"]["val_metrics"][0]
    assert {"bleu4", "cider", "attribute_accuracy"} <= set(metrics), metrics
    assert "attribute_accuracy" in capsys.readouterr().out.splitlines()[-1]


def test_ctrl_c_says_in_one_line_where_the_last_checkpoint_is_and_how_to_resume(dataset, tmp_path):
    import signal
    import subprocess
    import sys
    import time

    out = tmp_path / "run"
    command = [
        sys.executable, "-m", "training.train", "--annotations", str(dataset / "annotations" / "captions_train.json"),
        "--val-annotations", str(dataset / "annotations" / "captions_val.json"), "--images", str(dataset / "images"),
        "--output-dir", str(out), "--encoder-weights", "none", "--backbone", "resnet18", "--embed-size", "16",
        "--hidden-size", "32", "--image-size", "32", "--batch-size", "8", "--min-word-count", "1", "--quiet",
        "--epochs", "1000",
    ]
    checkpoint = out / "checkpoint.pt"
    # A shell starts background jobs with SIGINT ignored, and Python then never raises KeyboardInterrupt:
    # the training process gets SIGINT's default back, as a terminal's foreground command has it.
    with open(tmp_path / "stdout", "w") as stdout, open(tmp_path / "stderr", "w") as stderr:
        process = subprocess.Popen(command, stdout=stdout, stderr=stderr,
                                   preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
        try:
            deadline = time.monotonic() + 120
            while not checkpoint.exists() and process.poll() is None and time.monotonic() < deadline:
                time.sleep(0.1)
            process.send_signal(signal.SIGINT)  # what Ctrl-C sends
            process.wait(timeout=60)
        finally:
            if process.poll() is None:  # never leave a 1,000-epoch run behind
                process.kill()
                process.wait()
    err = (tmp_path / "stderr").read_text()
    assert process.returncode == 130 and "Traceback" not in err, err
    assert err.strip().splitlines()[-1] == (
        f"interrupted; the last checkpoint is {checkpoint} (saved at the end of an epoch): to go on from it, run the "
        f"same command with --resume {checkpoint}")

    # Stopped in its first epoch: an older run's checkpoint in the folder is not this run's.
    args = train.get_args_parser().parse_args(["--annotations", "a.json", "--images", "i", "--output-dir", str(out)])
    assert train.interrupted_message(args, started=time.time() + 60).startswith(
        "interrupted before the first epoch ended, so no checkpoint was written")
    args.resume = "earlier/checkpoint.pt"
    assert train.interrupted_message(args, started=time.time() + 60).endswith("--resume earlier/checkpoint.pt")


def test_resume_goes_on_from_the_saved_object_map_head_and_takes_a_checkpoint_without_one(dataset, tmp_path,
                                                                                        monkeypatch):
    from training.checkpoints import save_checkpoint

    heads = ("--object-map-weight", "1.0", "--train-backbone", "--backbone", "resnet18")
    first = train.main(train_args(dataset, tmp_path / "first", "--epochs", "1", *heads))
    saved = load_checkpoint(first)
    assert set(saved["object_map_head"]) == {"conv.weight", "conv.bias"}
    loaded = []
    load = auxiliary_losses.ObjectMapHead.load_state_dict
    monkeypatch.setattr(auxiliary_losses.ObjectMapHead, "load_state_dict",
                        lambda head, state, *a, **k: loaded.append(state) or load(head, state, *a, **k))
    train.main(train_args(dataset, tmp_path / "resumed", "--epochs", "2", *heads, "--resume", str(first)))
    assert len(loaded) == 1 and all(torch.equal(loaded[0][k], v) for k, v in saved["object_map_head"].items())
    resumed = load_checkpoint(tmp_path / "resumed" / "checkpoint.pt")
    assert not resumed["object_map_head"]["conv.weight"].equal(saved["object_map_head"]["conv.weight"]), "trained on"

    # A checkpoint from before the head was saved still resumes, the head starting afresh.
    save_checkpoint({k: v for k, v in saved.items() if k != "object_map_head"}, tmp_path / "old.pt")
    train.main(train_args(dataset, tmp_path / "from_old", "--epochs", "2", *heads, "--resume", str(tmp_path / "old.pt")))
    assert load_checkpoint(tmp_path / "from_old" / "checkpoint.pt")["epoch"] == 1 and len(loaded) == 1


def test_the_progress_bar_of_a_max_steps_epoch_counts_the_steps_that_run(dataset, tmp_path, capsys):
    args = train_args(dataset, tmp_path, "--epochs", "1", "--max-steps", "2")  # 24 images of 8: 3 batches an epoch
    args.quiet = False
    train.main(args)
    bars = [line for line in capsys.readouterr().err.replace("\r", "\n").splitlines() if line.startswith("epoch 1:")]
    assert bars and "2/2" in bars[-1] and "100%" in bars[-1], bars
    assert not any("/3" in bar for bar in bars), bars
    assert len(load_checkpoint(tmp_path / "checkpoint.pt")["history"]["train_loss"]) == 2


def test_a_resumed_run_trains_as_the_uninterrupted_run_would(dataset, tmp_path, monkeypatch, capsys):
    """Batch order, caption picks and dropout come back with the checkpoint: stopping after epoch 1 and
    resuming ends with the weights of a run that never stopped (24 images of 8: 3 batches an epoch)."""
    epochs = ("--epochs", "3", "--workers", "0", "--lr", "2e-2")
    straight = load_checkpoint(train.main(train_args(dataset, tmp_path / "straight", *epochs)))["model"]

    one_epoch = train.train_one_epoch
    calls = []

    def stop_in_the_second_epoch(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return one_epoch(*args, **kwargs)

    monkeypatch.setattr(train, "train_one_epoch", stop_in_the_second_epoch)
    with pytest.raises(KeyboardInterrupt):
        train.main(train_args(dataset, tmp_path / "first", *epochs))
    monkeypatch.setattr(train, "train_one_epoch", one_epoch)
    capsys.readouterr()
    first = tmp_path / "first" / "checkpoint.pt"
    resumed = load_checkpoint(train.main(train_args(dataset, tmp_path / "resumed", *epochs, "--resume", str(first))))
    assert f"resuming from {first} at epoch 2 of 3" in capsys.readouterr().out
    assert resumed["epoch"] == 2
    differ = [k for k in straight if not torch.allclose(straight[k], resumed["model"][k], rtol=1e-5, atol=1e-7)]
    assert not differ, differ


def test_options_the_data_cannot_serve_stop_the_run_before_the_feature_pass(dataset, tmp_path, monkeypatch):
    """Refused before the frozen backbone's features are computed (on COCO a long pass), not after."""
    calls = []
    monkeypatch.setattr(train, "compute_backbone_features", lambda *a, **k: calls.append(1))
    with pytest.raises(SystemExit, match="--object-map-weight trains the backbone's layer3: add --train-backbone"):
        train.main(train_args(dataset, tmp_path / "a", "--object-map-weight", "1.0"))
    record = json.loads((dataset / "annotations" / "captions_train.json").read_text())
    for image in record["images"]:
        image.pop("objects", None)  # as COCO's own records are
    no_scenes = tmp_path / "no_scenes.json"
    no_scenes.write_text(json.dumps(record))
    args = train_args(dataset, tmp_path / "b", "--scene-weight", "1.0")
    args.annotations = str(no_scenes)
    with pytest.raises(SystemExit, match="--scene-weight needs the scene of every training image"):
        train.main(args)
    assert calls == []


def test_a_run_with_nothing_held_out_says_so_instead_of_a_loss_of_zero(dataset, tmp_path, capsys):
    args = train_args(dataset, tmp_path, "--epochs", "1", "--val-fraction", "0", "--eval-captions")
    args.val_annotations = None  # hold out from the training file itself: 0 of it
    history = load_checkpoint(train.main(args))["history"]
    assert history["val_loss"] == [None] and history["val_metrics"] == [{}]
    printed = capsys.readouterr().out
    assert "no held-out images" in printed and "val loss" not in printed, printed
    assert (tmp_path / "loss_curve.png").is_file()
