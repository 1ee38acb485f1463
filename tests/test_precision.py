"""The `precision` setting: what `auto` picks from the CPU's flags, each precision's captions against fp32's,
and a bad value stopping the worker.

Tolerance (README "Configuration"): on the tiny random model, whose logits are
close to ties far more often than a trained model's, at least 12 of 16 greedy
captions must be word for word fp32's, and where they are, their scores within
0.05 of fp32's. The trained model's agreement is measured by `make bench`
(BENCHMARKS.md, "Caption agreement").
"""

import json
import logging

import pytest
import torch

from handler.caption_handler import CaptionHandler
from model.precision import (
    PRECISIONS,
    EncoderWithDomain,
    ImageEncoder,
    PrecisionError,
    ReducedPrecisionLinear,
    batch_buckets,
    choose_precision,
    parse_cpu_flags,
    prepare_inference,
    projection_dtype,
)
from tests.helpers import shape_image_bytes, tiny_captioner, torchserve_context, write_tiny_export

# /proc/cpuinfo lines as the kernel writes them (abridged), for three kinds of x86 CPU.
XEON_AMX = """processor\t: 0
vendor_id\t: GenuineIntel
model name\t: Intel(R) Xeon(R) Platinum 8481C CPU @ 2.70GHz
flags\t\t: fpu vme sse sse2 avx avx2 avx512f avx512_bf16 avx512_vnni amx_bf16 amx_tile amx_int8
"""
EPYC_ZEN4 = """processor\t: 0
vendor_id\t: AuthenticAMD
model name\t: AMD EPYC 9B14
flags\t\t: fpu vme sse sse2 avx avx2 avx512f avx512_bf16 avx512_vnni
"""
OLD_XEON = """processor\t: 0
model name\t: Intel(R) Xeon(R) CPU E5-2680 v4 @ 2.40GHz
flags\t\t: fpu vme sse sse2 avx avx2 fma
"""
IMAGES = 16
MIN_IDENTICAL = 12
SCORE_TOLERANCE = 0.05


@pytest.mark.parametrize("cpuinfo, expected", [(XEON_AMX, "bf16"), (EPYC_ZEN4, "bf16"), (OLD_XEON, "fp32")])
def test_auto_picks_what_the_cpu_flags_say(cpuinfo, expected):
    flags = parse_cpu_flags(cpuinfo)
    assert choose_precision("auto", device_type="cpu", cpu_flags=flags).name == expected
    assert choose_precision(None, device_type="cpu", cpu_flags=flags).name == expected


def test_flags_are_read_from_the_flags_line_only():
    flags = parse_cpu_flags(XEON_AMX)
    assert {"amx_bf16", "amx_int8", "avx512_bf16"} <= flags
    assert "Intel(R)" not in flags and "GenuineIntel" not in flags
    assert parse_cpu_flags("") == frozenset()


def test_explicit_settings_and_cuda():
    no_flags = parse_cpu_flags(OLD_XEON)
    assert choose_precision("bf16", device_type="cpu", cpu_flags=no_flags).name == "bf16"  # asked for: given
    assert choose_precision(" INT8 ", device_type="cpu", cpu_flags=no_flags).name == "int8"
    assert choose_precision("fp32", device_type="cpu", cpu_flags=parse_cpu_flags(XEON_AMX)).name == "fp32"
    assert choose_precision("auto", device_type="cuda", cpu_flags=no_flags, cuda_bf16=True).name == "bf16"
    assert choose_precision("auto", device_type="cuda", cpu_flags=no_flags, cuda_bf16=False).name == "fp32"
    with pytest.raises(PrecisionError, match="CPU workers only"):
        choose_precision("int8", device_type="cuda", cpu_flags=no_flags)


@pytest.mark.parametrize("value", ["fp16", "", "bfloat16", 16])
def test_unknown_precision_names_the_known_ones(value):
    with pytest.raises(PrecisionError, match="auto, fp32, bf16, int8") as error:
        choose_precision(value, device_type="cpu", cpu_flags=frozenset())
    assert "model-config.yaml" in str(error.value)


def test_vocabulary_projection_setting():
    assert projection_dtype(None) == torch.float32 and projection_dtype("BF16") == torch.bfloat16
    with pytest.raises(PrecisionError, match="vocabulary_projection must be one of fp32, bf16"):
        projection_dtype("int8")


def test_batch_buckets():
    assert batch_buckets(1) == [1]
    assert batch_buckets(8) == [1, 2, 4, 8]
    assert batch_buckets(6) == [1, 2, 4, 6]
    with pytest.raises(ValueError):
        batch_buckets(0)


@pytest.mark.parametrize("rows", [1, 3, 4, 6])
def test_bucketed_encoder_pads_and_chunks_without_changing_rows(rows):
    """A compiled encoder's batches are padded up to a bucket or split into the largest one; each
    image's embedding must be the one it gets alone (eager here: the padding logic is the same)."""
    model, _ = tiny_captioner()
    model.eval()
    images = torch.randn(rows, 3, model.config.image_size, model.config.image_size)
    encode = ImageEncoder(EncoderWithDomain(model.encoder), torch.device("cpu"), None, buckets=[1, 2, 4])
    with torch.inference_mode():
        (got, domain), (expected, expected_domain) = encode(images), model.encode_with_domain(images)
    size = sum(model.encoder.domain_layout.values())
    assert got.shape == expected.shape and domain.shape == expected_domain.shape == (rows, size)
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(domain, expected_domain, rtol=1e-4, atol=1e-5)


def test_bf16_projection_returns_fp32_logits_close_to_fp32():
    model, _ = tiny_captioner()
    model.eval()
    linear = model.decoder.linear
    hidden = torch.randn(5, linear.in_features)
    reduced = ReducedPrecisionLinear(linear, torch.bfloat16)
    with torch.inference_mode():
        expected, got = linear(hidden), reduced(hidden)  # (5, V) each
    assert reduced.weight.dtype == torch.bfloat16 and got.dtype == torch.float32
    assert (got - expected).abs().max() <= 0.02 * expected.abs().max()


def test_prepare_inference_embeds_in_fp32_whatever_the_precision():
    model, _ = tiny_captioner()
    model.eval()
    images = torch.randn(3, 3, model.config.image_size, model.config.image_size)
    with torch.inference_mode():
        expected, expected_domain = model.encode_with_domain(images)
        encode = prepare_inference(model, PRECISIONS["bf16"], torch.device("cpu"), projection=torch.bfloat16)
        got, domain = encode(images)
    assert got.dtype == torch.float32 and got.shape == expected.shape
    assert domain.dtype == torch.float32 and domain.shape == expected_domain.shape
    assert (domain - expected_domain).abs().max() <= 0.05 * expected_domain.abs().max()
    assert isinstance(model.decoder.linear, ReducedPrecisionLinear)
    assert (got - expected).abs().max() <= 0.05 * expected.abs().max()


@pytest.fixture(scope="module")
def export_dir(tmp_path_factory):
    export = write_tiny_export(tmp_path_factory.mktemp("export"), seed=1)
    calibration = export / "calibration"  # int8's calibration images, as packed in the archive
    calibration.mkdir()
    for i in range(8):
        (calibration / f"{i}.jpg").write_bytes(shape_image_bytes(100 + i)[0])
    return export


def caption_all(export_dir, settings, batch_size=2):
    """Greedy captions of the same images, through `initialize` and `handle` with a real Context."""
    context, _ = torchserve_context(export_dir, batch_size, {"captioner": settings})
    handler = CaptionHandler()
    handler.initialize(context)
    jpegs = [shape_image_bytes(i)[0] for i in range(IMAGES)]
    bodies = []
    for start in range(0, IMAGES, batch_size):
        rows = [{"body": bytearray(j)} for j in jpegs[start:start + batch_size]]
        bodies += [json.loads(out) for out in handler.handle(rows, context)]
    return handler, bodies


@pytest.fixture(scope="module")
def fp32_captions(export_dir):
    handler, bodies = caption_all(export_dir, {"precision": "fp32"})
    assert handler.precision.name == "fp32"
    return bodies


@pytest.mark.parametrize("settings", [{"precision": "bf16"}, {"precision": "bf16", "vocabulary_projection": "bf16"},
                                      {"precision": "int8"}],
                         ids=["bf16", "bf16 with a bf16 projection", "int8 (compiled)"])
def test_each_precision_captions_like_fp32(export_dir, fp32_captions, settings):
    handler, bodies = caption_all(export_dir, settings)
    assert handler.precision.name == settings["precision"]
    identical = [(a, b) for a, b in zip(bodies, fp32_captions) if a["tokens"] == b["tokens"]]
    assert len(identical) >= MIN_IDENTICAL, [(a["caption"], b["caption"]) for a, b in zip(bodies, fp32_captions)]
    assert max(abs(a["score"] - b["score"]) for a, b in identical) <= SCORE_TOLERANCE


def test_auto_logs_the_chosen_precision(export_dir, caplog):
    with caplog.at_level(logging.INFO, logger="handler.caption_handler"):
        handler, _ = caption_all(export_dir, {})
    assert handler.precision.name in ("fp32", "bf16")
    assert f"captioner precision {handler.precision.name} (setting 'auto'" in caplog.text


def test_bad_precision_stops_the_worker_with_a_clear_log_line(export_dir, caplog):
    context, _ = torchserve_context(export_dir, 1, {"captioner": {"precision": "fp16"}})
    with caplog.at_level(logging.ERROR, logger="handler.caption_handler"), pytest.raises(PrecisionError):
        CaptionHandler().initialize(context)
    assert "captioner worker not started: precision must be one of auto, fp32, bf16, int8, got 'fp16'" in caplog.text


def test_int8_without_calibration_images_stops_the_worker(tmp_path, caplog):
    export = write_tiny_export(tmp_path / "export", seed=1)
    context, _ = torchserve_context(export, 1, {"captioner": {"precision": "int8"}})
    with caplog.at_level(logging.ERROR, logger="handler.caption_handler"), pytest.raises(PrecisionError):
        CaptionHandler().initialize(context)
    assert "needs calibration images" in caplog.text and "calibration/" in caplog.text
