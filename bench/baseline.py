"""The seed-style pipeline: what a simple Flask app built around yunjey's `sample.py` does per request.

One image at a time: PIL decode, Lanczos resize to the model's input size,
ToTensor + Normalize, the encoder at batch 1, then a Python loop that calls the
LSTM module once per word, runs every one of the `max_length` steps and pulls
each chosen word to the host with `.item()`. It runs under `torch.no_grad()` (the seed-style code is
given that much), with the same weights and threads as the other pipelines,
so the comparison measures the pipeline, not the model.
"""

from __future__ import annotations

import io
import time
from pathlib import Path
from typing import Sequence

import torch
from PIL import Image
from torchvision import transforms as T

from bench.stats import Run
from model.export_format import load_exported_captioner


class SeedStylePipeline:
    def __init__(self, export_dir: Path | str, device: torch.device | str = "cpu") -> None:
        self.device = torch.device(device)
        self.model, self.vocab = load_exported_captioner(export_dir, self.device)
        config = self.model.config
        self.size = config.image_size
        self.max_length = config.max_length
        self.to_tensor = T.Compose([T.ToTensor(), T.Normalize(config.mean, config.std)])

    def caption(self, jpeg: bytes) -> str:
        image = Image.open(io.BytesIO(jpeg)).convert("RGB").resize((self.size, self.size), Image.LANCZOS)
        pixels = self.to_tensor(image).unsqueeze(0).to(self.device)  # (1, 3, S, S)
        decoder = self.model.decoder
        with torch.no_grad():
            feature = self.model.encoder(pixels)  # (1, E)
            _, states = decoder.lstm(feature.unsqueeze(1))  # the image is the first input
            inputs = decoder.embed(torch.tensor([[self.vocab.start_id]], device=self.device))  # (1, 1, E)
            word_ids = []
            for _ in range(self.max_length):  # always every step, no early stop
                hiddens, states = decoder.lstm(inputs, states)  # the LSTM module, one step at a time
                predicted = decoder.linear(hiddens.squeeze(1)).argmax(dim=1)  # (1,)
                word_ids.append(predicted.item())  # a host sync per step
                inputs = decoder.embed(predicted).unsqueeze(1)
        return " ".join(self.vocab.decode(word_ids))

    def run(self, jpegs: Sequence[bytes]) -> Run:
        """Caption `jpegs` one after another; one latency sample per image."""
        latencies = []
        cpu_started, started = time.process_time(), time.perf_counter()
        for jpeg in jpegs:
            t0 = time.perf_counter()
            self.caption(jpeg)
            latencies.append(time.perf_counter() - t0)
        wall, cpu = time.perf_counter() - started, time.process_time() - cpu_started
        return Run(images=len(jpegs), wall_s=wall, latencies_s=latencies,
                   extra={"cpu_ms_per_image": round(1000 * cpu / len(jpegs), 2)})
