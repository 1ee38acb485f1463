"""Runs `training.train` in one `torchrun` process and records what tests/test_distributed.py checks.

    python -m torch.distributed.run --standalone --nproc_per_node 2 -m tests.ddp_probe --dump DIR -- <train args>

Training runs unchanged; the probe only watches it: it keeps a copy of the
trained parameters as they were when DistributedDataParallel took them, the
trained module itself and which of its parameters it trains, the image indices this rank's sampler handed out in the
last epoch, and how many checkpoints this rank wrote. Each rank saves that in
`DIR/rank<N>.pt`, to be compared across ranks.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from training import distributed, train


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--dump", required=True, help="folder for rank<N>.pt")
    parser.add_argument("train_args", nargs=argparse.REMAINDER, help="-- then the arguments of training.train")
    args = parser.parse_args()
    train_args = args.train_args[1:] if args.train_args[:1] == ["--"] else args.train_args

    seen: dict = {"checkpoints_written": 0}
    wrap, train_sampler, save_checkpoint = distributed.wrap, distributed.train_sampler, train.save_checkpoint

    def watching_wrap(module, place, device):
        seen["initial"] = {name: p.detach().clone() for name, p in module.named_parameters()}
        seen["trainable"] = [name for name, p in module.named_parameters() if p.requires_grad]
        seen["module"] = module
        return wrap(module, place, device)

    def watching_sampler(*a, **k):
        seen["sampler"] = train_sampler(*a, **k)
        return seen["sampler"]

    def counting_save(*a, **k):
        seen["checkpoints_written"] += 1
        return save_checkpoint(*a, **k)

    distributed.wrap, distributed.train_sampler, train.save_checkpoint = watching_wrap, watching_sampler, counting_save
    try:
        train.main(train.get_args_parser().parse_args(train_args))
        place = distributed.from_environment()
        final = {name: p.detach().cpu().clone() for name, p in seen["module"].named_parameters()}
        record = {
            "rank": place.rank,
            "world_size": place.world_size,
            "initial": seen["initial"],
            "final": final,
            "trainable": seen["trainable"],
            "last_epoch_indices": list(iter(seen["sampler"])),
            "checkpoints_written": seen["checkpoints_written"],
        }
        Path(args.dump).mkdir(parents=True, exist_ok=True)
        torch.save(record, Path(args.dump) / f"rank{place.rank}.pt")
    finally:
        distributed.cleanup()


if __name__ == "__main__":
    main()
