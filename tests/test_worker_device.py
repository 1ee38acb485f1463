"""Each TorchServe worker runs on the GPU TorchServe assigned it (`gpu_id`), or on the CPU without one.

This machine has no GPU, so CUDA's availability is set by the test; the device
string is what the handler then moves the model to.
"""

import pytest
import torch

from handler.caption_handler import worker_device


@pytest.mark.parametrize("gpu_id, expected", [(0, "cuda:0"), (1, "cuda:1"), ("3", "cuda:3"), (None, "cpu")])
def test_the_worker_takes_the_gpu_torchserve_gave_it(monkeypatch, gpu_id, expected):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert worker_device({"gpu_id": gpu_id, "model_dir": "unused"}) == torch.device(expected)


def test_without_cuda_a_gpu_id_still_means_the_cpu(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert worker_device({"gpu_id": 1}) == torch.device("cpu")
