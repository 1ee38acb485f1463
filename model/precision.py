"""Inference precision: which one this machine should run, and how each is applied to a captioner.

A precision is a name in `PRECISIONS` (a small registry), chosen from the
`precision:` setting (`auto | fp32 | bf16 | int8`) by `choose_precision`, and
applied by `prepare_inference`, which returns the function that turns a batch
of images into fp32 embeddings for the decoder, and the fp32 domain features
the domain score reads (`model/domain_features.py`), both from one pass:

- **fp32**: the model as trained.
- **bf16**: the encoder under `torch.autocast` to bfloat16; CPUs with AMX or
  AVX512-BF16 run its convolutions in hardware. The decoder stays fp32.
- **int8**: the encoder quantized with PT2E (torchao's `X86InductorQuantizer`,
  calibrated on given images) and compiled with inductor, the only way its int8
  kernels are used; the decoder stays fp32.

The decoder's vocabulary projection (a hidden x vocabulary matmul at every
step) has its own setting, `vocabulary_projection: fp32 | bf16`: bf16 weights
make that matmul faster, but on the trained model they moved near-ties between
ending a caption and going on (BENCHMARKS.md, "Caption agreement"), so fp32 is
the default. The LSTM cell, log-softmax and search are fp32 in every case.

`auto` picks bf16 where the CPU reports `amx_bf16` or `avx512_bf16` (or on a CUDA
device that supports bf16) and fp32 elsewhere; int8 is never picked by itself
(BENCHMARKS.md has the figures behind that). `compile` (torch.compile with
inductor and frozen weights) is a separate switch, as it costs seconds at
worker start for each batch size it meets.

This module knows nothing about TorchServe, so the choice can be tested on
given flag strings and the helpers on a tiny model.
"""

from __future__ import annotations

import contextlib
import copy
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Sequence

import torch
from torch import nn
from torch.nn import functional as F

AUTO = "auto"
BF16_CPU_FLAGS = ("amx_bf16", "avx512_bf16")  # /proc/cpuinfo flags of CPUs with bf16 matmul instructions
INT8_CPU_FLAGS = ("amx_int8", "avx512_vnni", "avx_vnni")  # int8 dot-product instructions
CPUINFO = Path("/proc/cpuinfo")



class PrecisionError(ValueError):
    """A `precision` setting that cannot be used here."""


@dataclass(frozen=True)
class Precision:
    """How one precision runs the model.

    Args:
        name: the setting's value.
        encoder_dtype: the encoder's autocast dtype (None: fp32).
        quantized_encoder: the encoder runs PT2E int8 kernels (needs calibration images).
        description: for logs and reports.
    """

    name: str
    encoder_dtype: torch.dtype | None
    quantized_encoder: bool
    description: str


PRECISIONS: dict[str, Precision] = {
    p.name: p
    for p in (
        Precision("fp32", None, False, "fp32 throughout"),
        Precision("bf16", torch.bfloat16, False, "encoder under bf16 autocast"),
        Precision("int8", None, True, "encoder PT2E int8 (X86InductorQuantizer, compiled)"),
    )
}
SETTINGS = (AUTO, *PRECISIONS)
PROJECTION_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}  # `vocabulary_projection` values


def parse_cpu_flags(cpuinfo: str) -> frozenset[str]:
    """The feature flags in /proc/cpuinfo-style text (the `flags` lines; `Features` on Arm)."""
    flags: set[str] = set()
    for line in cpuinfo.splitlines():
        key, sep, value = line.partition(":")
        if sep and key.strip() in ("flags", "Features"):
            flags.update(value.split())
    return frozenset(flags)


def read_cpu_flags(path: Path | str = CPUINFO) -> frozenset[str]:
    """This machine's CPU flags; none where /proc/cpuinfo cannot be read (then auto picks fp32)."""
    try:
        return parse_cpu_flags(Path(path).read_text())
    except OSError:
        return frozenset()


def choose_precision(setting: str | None, *, device_type: str, cpu_flags: Iterable[str],
                     cuda_bf16: bool = False) -> Precision:
    """The precision a `precision:` setting means on this device.

    Args:
        setting: auto, fp32, bf16 or int8 (None: auto).
        device_type: "cpu" or "cuda".
        cpu_flags: the CPU's flags (`read_cpu_flags()`), read for auto on CPU.
        cuda_bf16: whether the CUDA device runs bf16 (`torch.cuda.is_bf16_supported()`).
    Raises:
        PrecisionError: an unknown value, or int8 on CUDA (its kernels are x86 CPU ones).
    """
    name = AUTO if setting is None else str(setting).strip().lower()
    if name not in SETTINGS:
        raise PrecisionError(
            f"precision must be one of {', '.join(SETTINGS)}, got {setting!r}; "
            "fix `precision:` in the `captioner:` section of handler/model-config.yaml")
    if name == AUTO:
        if device_type == "cuda":
            name = "bf16" if cuda_bf16 else "fp32"
        else:
            name = "bf16" if set(cpu_flags) & set(BF16_CPU_FLAGS) else "fp32"
    if name == "int8" and device_type != "cpu":
        raise PrecisionError("precision int8 runs on CPU workers only (x86 PT2E kernels); use bf16 or auto on GPU")
    return PRECISIONS[name]


def projection_dtype(setting: str | None) -> torch.dtype:
    """The dtype a `vocabulary_projection:` setting names (None: fp32)."""
    name = "fp32" if setting is None else str(setting).strip().lower()
    if name not in PROJECTION_DTYPES:
        raise PrecisionError(
            f"vocabulary_projection must be one of {', '.join(PROJECTION_DTYPES)}, got {setting!r}; "
            "fix it in the `captioner:` section of handler/model-config.yaml")
    return PROJECTION_DTYPES[name]


class ReducedPrecisionLinear(nn.Module):
    """A Linear layer whose weights are stored in `dtype`; takes and returns fp32.

    The vocabulary projection is the decoder's one large matmul; its logits
    go back to fp32 so that log-softmax, scores and the search are unchanged.
    """

    def __init__(self, linear: nn.Linear, dtype: torch.dtype) -> None:
        super().__init__()
        self.dtype = dtype
        self.weight = nn.Parameter(linear.weight.detach().to(dtype), requires_grad=False)  # (V, H)
        self.bias = None if linear.bias is None else nn.Parameter(linear.bias.detach().to(dtype), requires_grad=False)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return F.linear(hidden.to(self.dtype), self.weight, self.bias).float()  # (B, V)


def reduce_projection(decoder: nn.Module, dtype: torch.dtype) -> None:
    """Store the decoder's vocabulary projection (`decoder.linear`) in `dtype` (no-op for fp32)."""
    if dtype != torch.float32 and isinstance(decoder.linear, nn.Linear):
        decoder.linear = ReducedPrecisionLinear(decoder.linear, dtype)


def autocast_context(device: torch.device, dtype: torch.dtype | None) -> contextlib.AbstractContextManager:
    """`torch.autocast` to `dtype` on `device`'s type, or nothing for fp32."""
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=dtype)


def compile_module(module: nn.Module) -> nn.Module:
    """`torch.compile` with inductor and frozen weights (constants folded into the kernels).

    Freezing is inductor's global switch; it applies to graphs compiled under
    inference mode, which is how the handler runs the encoder.
    """
    import torch._inductor.config as inductor_config

    inductor_config.freezing = True
    return torch.compile(module, backend="inductor")


def quantize_int8(encoder: nn.Module, calibration: Sequence[torch.Tensor]) -> nn.Module:
    """The encoder quantized to int8 with PT2E (X86InductorQuantizer), calibrated on `calibration` batches.

    Each calibration batch is (B, 3, S, S), normalised like the model's input.
    The result is compiled with inductor: converted PT2E graphs only become
    int8 kernels there (eager they run as quantize/dequantize around fp32 ops).
    """
    if not calibration:
        raise PrecisionError("precision int8 needs calibration images; see README \"Configuration\"")
    try:
        import torchao.quantization.pt2e.quantizer.x86_inductor_quantizer as x86
        from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e
    except ImportError as error:
        raise PrecisionError(f"precision int8 needs torchao ({error}); `make install` installs it") from error
    quantizer = x86.X86InductorQuantizer()
    quantizer.set_global(x86.get_default_x86_inductor_quantization_config())
    example = calibration[0]
    batch = torch.export.Dim("batch", min=1, max=1024)
    # Exported with autograd on: under no_grad the exported graph's conv/add/relu partitions
    # are shaped differently and X86InductorQuantizer refuses them ("more than one output node").
    with torch.enable_grad():
        exported = torch.export.export(copy.deepcopy(encoder).eval(), (example,),
                                       dynamic_shapes=({0: batch},)).module()
    prepared = prepare_pt2e(exported, quantizer)
    with torch.no_grad():
        for images in calibration:
            prepared(images)
        converted = convert_pt2e(prepared)
    return compile_module(converted)


def batch_buckets(max_batch: int) -> list[int]:
    """The batch sizes a compiled encoder is built for: powers of two below `max_batch`, and `max_batch`.

    A compiled graph is specialised to its input's shape, and each shape costs
    seconds to compile; a batch is padded up to the next bucket instead, so a
    worker compiles a handful of graphs once, at start, not one per batch size
    in the middle of serving.
    """
    if max_batch < 1:
        raise ValueError(f"max_batch must be at least 1, got {max_batch}")
    buckets = [1]
    while buckets[-1] * 2 < max_batch:
        buckets.append(buckets[-1] * 2)
    return sorted(set(buckets) | {max_batch})


class EncoderWithDomain(nn.Module):
    """An `EncoderCNN` that also returns its domain features: the module compile and int8 build.

    The same pairing as `Captioner.encode_with_domain`, as a module of its own:
    torch.compile and PT2E export take a module, and the image encoder alone
    (not the decoder, whose projection may be a oneDNN module by then).
    """

    def __init__(self, encoder: nn.Module) -> None:
        super().__init__()
        self.encoder = encoder

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        features, domain = self.encoder.features_and_domain(images)  # (B, C) or (B, G*G, C); (B, D)
        return self.encoder.project(features), domain


Encoded = tuple[torch.Tensor, torch.Tensor]  # (B, E) or (B, G*G, E) embeddings, (B, D) domain features


class ImageEncoder:
    """Images -> (fp32 embeddings, fp32 domain features) under one precision.

    Call under `torch.inference_mode`. The domain features summarise the
    backbone's maps as the precision computed them (bf16 under autocast, int8
    kernels' dequantized output), cast to fp32 before they are averaged.

    A compiled encoder pads each batch up to its bucket (`batch_buckets`) and
    drops the padding rows from the result; a batch larger than the largest
    bucket runs in chunks of it.
    """

    def __init__(self, encoder: Callable[[torch.Tensor], Encoded], device: torch.device,
                 dtype: torch.dtype | None, buckets: Sequence[int] | None = None) -> None:
        self.encoder = encoder
        self.device = device
        self.dtype = dtype
        self.buckets = sorted(buckets) if buckets else None
        self.warmup_s = 0.0

    def __call__(self, images: torch.Tensor) -> Encoded:
        if self.buckets is None:
            return self._run(images)
        largest = self.buckets[-1]
        if images.shape[0] > largest:
            chunks = [self(chunk) for chunk in images.split(largest)]
            return torch.cat([e for e, _ in chunks]), torch.cat([p for _, p in chunks])
        rows = images.shape[0]
        bucket = next(b for b in self.buckets if b >= rows)
        if bucket > rows:
            padding = images[-1:].expand(bucket - rows, *images.shape[1:])  # (P, 3, S, S)
            images = torch.cat([images, padding]).contiguous(memory_format=_memory_format(images))
        embeddings, domain = self._run(images)
        return embeddings[:rows], domain[:rows]  # (rows, E), (rows, D)

    def _run(self, images: torch.Tensor) -> Encoded:
        with autocast_context(self.device, self.dtype):
            embeddings, domain = self.encoder(images)
        return embeddings.float(), domain.float()  # (B, E), (B, D)

    def warm_up(self, image_size: int, memory_format: torch.memory_format = torch.contiguous_format) -> float:
        """Run every bucket once (compiling each), so no request waits for a compilation; returns seconds."""
        import time

        started = time.perf_counter()
        for bucket in self.buckets or [1]:
            images = torch.zeros(bucket, 3, image_size, image_size, device=self.device)
            self(images.contiguous(memory_format=memory_format))
        self.warmup_s = time.perf_counter() - started
        return self.warmup_s


def _memory_format(images: torch.Tensor) -> torch.memory_format:
    return torch.channels_last if images.dim() == 4 and images.is_contiguous(memory_format=torch.channels_last) \
        and not images.is_contiguous() else torch.contiguous_format


def prepare_inference(model: nn.Module, precision: Precision, device: torch.device, *, compile: bool = False,
                      max_batch: int = 8, calibration: Sequence[torch.Tensor] = (),
                      projection: torch.dtype = torch.float32) -> ImageEncoder:
    """Apply `precision` to `model` (its decoder is changed in place) and return its image encoder.

    Args:
        model: a `Captioner` in eval mode (encoder, decoder with a `linear` projection).
        precision: from `choose_precision`.
        device: where the model is.
        compile: the encoder through `torch.compile` (int8 is always compiled).
        max_batch: the largest batch the encoder will see (TorchServe's batch size); compiled
            encoders are built for `batch_buckets(max_batch)`; call `warm_up` to compile them.
        calibration: int8 only: batches of normalised images to calibrate the quantizer on.
        projection: the dtype of the vocabulary projection's weights (`projection_dtype`).
    """
    reduce_projection(model.decoder, projection)
    if precision.quantized_encoder:
        return ImageEncoder(quantize_int8(EncoderWithDomain(model.encoder), calibration), device,
                            precision.encoder_dtype, batch_buckets(max_batch))
    if compile:
        return ImageEncoder(compile_module(EncoderWithDomain(model.encoder)), device, precision.encoder_dtype,
                            batch_buckets(max_batch))
    # Eager: the model's own encoding, so a video model's temporal step runs too.
    return ImageEncoder(model.encode_with_domain, device, precision.encoder_dtype)
