"""Data-parallel training: two `torchrun` processes on CPU (gloo) train a tiny model for a few steps.

With a frozen backbone (cached features) and with a fine-tuned one, each process runs `training.train` through `tests/ddp_probe.py`, which saves the
rank's trained parameters and the images its sampler handed out. The ranks see
different images, so their weights only stay equal if DistributedDataParallel
really averages the gradients.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from training.checkpoints import load_checkpoint
from training.shapes_dataset import generate

ROOT = Path(__file__).resolve().parent.parent
RANKS = 2


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    return generate(tmp_path_factory.mktemp("shapes"), train=32, val=8, seed=3, canvas=64)


def torchrun(dataset: Path, output_dir: Path, dump: Path, *extra: str) -> tuple[list[dict], str]:
    """Train with 2 processes; returns each rank's record (rank order) and the combined output."""
    command = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(RANKS),
        "-m", "tests.ddp_probe", "--dump", str(dump), "--",
        "--annotations", str(dataset / "annotations" / "captions_train.json"),
        "--val-annotations", str(dataset / "annotations" / "captions_val.json"),
        "--images", str(dataset / "images"),
        "--output-dir", str(output_dir),
        "--device", "cpu", "--encoder-weights", "none",
        "--embed-size", "16", "--hidden-size", "32", "--image-size", "32",
        "--batch-size", "4", "--min-word-count", "1", "--quiet",
        *extra,
    ]
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "PYTHONPATH")}
    env["GLOO_SOCKET_IFNAME"] = "lo"  # the processes talk over loopback only
    result = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-4000:]
    records = [torch.load(dump / f"rank{rank}.pt", weights_only=True) for rank in range(RANKS)]
    assert [r["rank"] for r in records] == list(range(RANKS)) and records[0]["world_size"] == RANKS
    return records, output


def assert_ranks_agree_and_trained(records: list[dict]) -> None:
    first, second = records
    assert first["final"].keys() == second["final"].keys()
    differing = [name for name in first["final"] if not torch.equal(first["final"][name], second["final"][name])]
    assert not differing, f"ranks disagree on {differing[:5]}"
    moved = {name for name in first["final"] if not torch.equal(first["final"][name], first["initial"][name])}
    assert moved <= set(first["trainable"]), "frozen weights stay as they were"
    # Not all of them: in the first steps a BatchNorm scale whose output the next BatchNorm
    # normalises again gets a gradient too small for Adam to move it.
    assert len(moved) > len(first["trainable"]) // 2, (len(moved), len(first["trainable"]))
    assert first["last_epoch_indices"] != second["last_epoch_indices"], "each rank got its own images"
    assert not set(first["last_epoch_indices"]) & set(second["last_epoch_indices"])


def model_parameters(record: dict) -> dict[str, torch.Tensor]:
    """The captioner's parameters from a record (they sit under `model.` in the trained module)."""
    return {name.removeprefix("model."): p for name, p in record["final"].items() if name.startswith("model.")}


@pytest.fixture(scope="module")
def first_run(dataset, tmp_path_factory):
    """One epoch (2 steps per rank) on cached backbone features, with the concept loss on."""
    root = tmp_path_factory.mktemp("ddp")
    records, output = torchrun(
        dataset, root / "train", root / "dump", "--concept-weight", "1.0", "--epochs", "1", "--max-steps", "2"
    )
    return root, records, output


def test_ranks_keep_equal_weights_while_training_on_different_images(first_run):
    _, records, _ = first_run
    assert_ranks_agree_and_trained(records)
    assert any(name.startswith("concept_head.") for name in records[0]["trainable"]), "the concept head trains too"
    assert not any(name.startswith("model.encoder.backbone.") for name in records[0]["trainable"])


def test_only_rank_0_writes_and_prints(first_run):
    root, records, output = first_run
    assert [r["checkpoints_written"] for r in records] == [1, 0]
    assert output.count("epoch 1/1:") == 1, output[-2000:]
    checkpoint = load_checkpoint(root / "train" / "checkpoint.pt")
    for name, weight in model_parameters(records[0]).items():
        assert torch.equal(checkpoint["model"][name], weight), name
    assert checkpoint["concept_head"]["linear.weight"].equal(records[0]["final"]["concept_head.linear.weight"])
    assert (root / "train" / "history.json").is_file() and (root / "train" / "loss_curve.png").is_file()


def test_resume_under_torchrun_continues_from_the_checkpoint(first_run, dataset):
    root, first_records, _ = first_run
    records, output = torchrun(
        dataset, root / "resumed", root / "dump-resumed", "--concept-weight", "1.0",
        "--epochs", "2", "--max-steps", "2", "--resume", str(root / "train" / "checkpoint.pt"),
    )
    for name, weight in first_records[0]["final"].items():
        assert torch.equal(records[1]["initial"][name], weight), f"rank 1 started from the checkpoint ({name})"
    assert_ranks_agree_and_trained(records)
    checkpoint = load_checkpoint(root / "resumed" / "checkpoint.pt")
    assert checkpoint["epoch"] == 1
    assert len(checkpoint["history"]["val_loss"]) == 2 and len(checkpoint["history"]["train_loss"]) == 4
    assert output.count("epoch 2/2:") == 1 and "epoch 1/2:" not in output


def test_a_fine_tuned_backbone_stays_equal_across_ranks(dataset, tmp_path):
    """`--train-backbone` (the default recipe): the ResNet's weights are averaged too."""
    records, _ = torchrun(
        dataset, tmp_path / "train", tmp_path / "dump", "--train-backbone", "--epochs", "1", "--max-steps", "1"
    )
    assert_ranks_agree_and_trained(records)
    assert any(name.startswith("model.encoder.backbone.") for name in records[0]["trainable"])
