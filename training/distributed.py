"""Data-parallel training with torch.distributed, for `training/train.py` started by `torchrun`.

    torchrun --standalone --nproc_per_node 2 -m training.train ...           # one machine
    torchrun --nnodes 2 --node_rank 0 --master_addr HOST --nproc_per_node 8 -m training.train ...

`torchrun` sets RANK, LOCAL_RANK and WORLD_SIZE for every process. With them,
training joins a process group (NCCL when the device is CUDA, gloo on CPU),
puts process `LOCAL_RANK` on `cuda:<LOCAL_RANK>`, wraps the trained modules in
DistributedDataParallel (gradients are averaged across processes at each
step, so every copy takes the same optimiser step) and gives each process its
own share of the images through a DistributedSampler. Only rank 0 writes
checkpoints, history and plots, and prints. Without those variables (a plain
`python -m training.train`) nothing here changes what training does.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import Dataset, DistributedSampler


@dataclass(frozen=True)
class Distributed:
    """Where this process stands among the training processes; world_size 1 means a single process."""

    rank: int = 0
    local_rank: int = 0
    world_size: int = 1

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """The process that writes files and prints."""
        return self.rank == 0


def from_environment() -> Distributed:
    """RANK / LOCAL_RANK / WORLD_SIZE as `torchrun` sets them; one process when they are absent."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        return Distributed()
    return Distributed(int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0")), world_size)


def setup(device_name: str) -> tuple[Distributed, torch.device]:
    """Join the process group when started by `torchrun`; returns this process's place and device.

    On CUDA each process takes the GPU numbered by its local rank and the group
    uses NCCL; on CPU it uses gloo.
    """
    device = torch.device(device_name)
    place = from_environment()
    if not place.enabled:
        return place, device
    if device.type == "cuda":
        device = torch.device("cuda", place.local_rank)
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    return place, device


def wait_for_all(place: Distributed) -> None:
    """A barrier across the training processes; a no-op for one process."""
    if place.enabled:
        dist.barrier()


def cleanup() -> None:
    """Leave the process group (a no-op when none was joined)."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def train_sampler(dataset: Dataset, place: Distributed, seed: int) -> DistributedSampler | None:
    """Each process's share of the training set, reshuffled every epoch (`set_epoch`); None for one process.

    The sampler pads the shares to equal length, so every process takes the same
    number of steps and no one waits at a gradient exchange that never comes.
    """
    if not place.enabled:
        return None
    return DistributedSampler(dataset, num_replicas=place.world_size, rank=place.rank, shuffle=True, seed=seed)


def wrap(module: nn.Module, place: Distributed, device: torch.device) -> nn.Module:
    """`module` in DistributedDataParallel when several processes train; unchanged otherwise.

    DDP copies rank 0's parameters to every process when it is built, and
    averages gradients during `backward()` of a loss computed through the
    wrapper's `forward`.
    """
    if not place.enabled:
        return module
    device_ids = [device.index] if device.type == "cuda" else None
    return DistributedDataParallel(module, device_ids=device_ids)
