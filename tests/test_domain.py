"""The domain statistics (`model/domain.py`) on synthetic features, the pooled features of every kind of
model, and the statistics' trip through an export (`model/export_format.py`, `training/domain_calibration.py`)."""

from __future__ import annotations

import json
import math

import pytest
import torch
from safetensors.torch import load_file
from sklearn.covariance import ledoit_wolf

from model.domain import (
    DomainScorer, DomainStatistics, NoDomainScorer, calibrate_threshold, domain_score, domain_scorer,
    fit_domain_statistics, ledoit_wolf_shrinkage, mahalanobis_distances,
)
from model.export_format import (
    DOMAIN_FILE, ExportError, export_file_names, read_domain_statistics, write_domain_statistics,
)
from model.precision import PRECISIONS, prepare_inference
from tests.helpers import tiny_captioner, tiny_video_captioner, write_domain_export, write_tiny_export
from training.shapes_dataset import generate


def gaussian_features(count: int, size: int = 16, seed: int = 0) -> torch.Tensor:
    """(count, size) features from one anisotropic Gaussian (scales 0.1 to 3), away from the origin."""
    generator = torch.Generator().manual_seed(seed)
    scales = torch.linspace(0.1, 3.0, size)
    mixing, _ = torch.linalg.qr(torch.randn(size, size, generator=torch.Generator().manual_seed(99)))
    return 5 + (torch.randn(count, size, generator=generator) * scales) @ mixing.T


@pytest.fixture(scope="module")
def statistics() -> DomainStatistics:
    fitted = fit_domain_statistics(gaussian_features(2000))
    held_out = mahalanobis_distances(gaussian_features(500, seed=1), fitted.mean, fitted.precision)
    threshold, calibration = calibrate_threshold({"held out": held_out})
    return fitted.with_threshold(threshold, calibration)


def test_the_mean_scores_highest_and_far_points_are_out(statistics):
    scorer = DomainScorer(statistics)
    samples = gaussian_features(200, seed=2)
    at_mean, *others = scorer(torch.cat([statistics.mean[None], samples]))
    assert at_mean.score == pytest.approx(1.0) and at_mean.in_domain
    assert all(v.score < at_mean.score for v in others)
    assert sum(v.in_domain for v in others) >= 0.99 * len(others)  # new samples of the fitted Gaussian
    # Steps along the directions of least and most variance (0.1 and 3.0; shrinkage widens the least
    # to about 0.2), each far beyond any sample, and points elsewhere: the origin, minus the mean.
    _, vectors = torch.linalg.eigh(torch.linalg.inv(statistics.precision.double()))
    narrow, wide = vectors[:, 0].float(), vectors[:, -1].float()
    far = torch.stack([statistics.mean + 10 * narrow, statistics.mean + 60 * wide, torch.zeros(16), -statistics.mean])
    verdicts = scorer(far)
    assert [v.in_domain for v in verdicts] == [False] * 4
    assert all(v.score < 0.05 for v in verdicts), verdicts


def test_the_score_is_one_half_at_the_threshold_and_falls_with_distance(statistics):
    threshold = statistics.threshold
    assert domain_score(threshold, threshold) == 0.5
    assert domain_score(0.0, threshold) == 1.0
    scores = [domain_score(d, threshold) for d in (0.5 * threshold, threshold, 2 * threshold, 10 * threshold)]
    assert scores == sorted(scores, reverse=True) and scores[0] > 0.9 and scores[2] < 0.1
    scorer = DomainScorer(statistics)
    # A point exactly at the threshold's distance is in domain, just beyond it is not.
    direction = torch.zeros(16)
    direction[0] = 1
    unit = float(mahalanobis_distances(statistics.mean[None] + direction, statistics.mean, statistics.precision))
    near, beyond = scorer(torch.stack([statistics.mean + direction * threshold / unit * 0.999,
                                       statistics.mean + direction * threshold / unit * 1.001]))
    assert near.in_domain and near.score > 0.5 and not beyond.in_domain and beyond.score < 0.5


def test_the_threshold_leaves_99_percent_of_every_held_out_set_in_domain_with_margin():
    fitted = fit_domain_statistics(gaussian_features(1000))
    small = mahalanobis_distances(gaussian_features(40, seed=5) * 1.05, fitted.mean, fitted.precision)
    large = mahalanobis_distances(gaussian_features(800, seed=6), fitted.mean, fitted.precision)
    threshold, calibration = calibrate_threshold({"small": small, "large": large}, quantile=0.99, safety=1.25)
    assert threshold == pytest.approx(1.25 * max(torch.quantile(small, 0.99), torch.quantile(large, 0.99)))
    assert [s["name"] for s in calibration["held_out"]] == ["small", "large"]
    assert all(s["in_domain"] >= 0.99 for s in calibration["held_out"])
    with pytest.raises(ValueError, match="safety at least 1"):
        calibrate_threshold({"large": large}, safety=0.9)
    with pytest.raises(ValueError, match="held-out image"):
        calibrate_threshold({"empty": torch.zeros(0)})


def test_shrinkage_is_ledoit_wolfs_and_keeps_the_precision_well_conditioned():
    features = gaussian_features(300, size=24, seed=3)
    centred = features.double() - features.double().mean(dim=0)
    expected_covariance, expected_shrinkage = ledoit_wolf(features.double().numpy())
    assert ledoit_wolf_shrinkage(centred) == pytest.approx(expected_shrinkage, rel=1e-9)
    fitted = fit_domain_statistics(features)
    assert fitted.shrinkage == pytest.approx(expected_shrinkage, rel=1e-9)  # already conditioned: LW alone
    torch.testing.assert_close(torch.linalg.inv(fitted.precision.double()), torch.from_numpy(expected_covariance),
                               rtol=1e-4, atol=1e-5)
    # Fewer images than features, and dead channels (always 0, as after a ReLU): the sample covariance
    # is singular; the shrunk one still inverts, symmetric, positive, with a bounded condition number.
    degenerate = torch.cat([gaussian_features(10, size=24, seed=4), torch.zeros(10, 8)], dim=1)  # (10, 32)
    fitted = fit_domain_statistics(degenerate)
    eigenvalues = torch.linalg.eigvalsh(fitted.precision.double())
    assert torch.equal(fitted.precision, fitted.precision.T) and bool(torch.isfinite(fitted.precision).all())
    assert eigenvalues.min() > 0 and eigenvalues.max() / eigenvalues.min() <= 1e4 * 1.001
    with pytest.raises(ValueError, match="all the same"):
        fit_domain_statistics(torch.ones(5, 4))


def test_a_rows_score_does_not_depend_on_its_batch(statistics):
    scorer = DomainScorer(statistics)
    features = gaussian_features(8, seed=7)
    together = scorer(features)
    alone = [scorer(features[i:i + 1])[0] for i in range(8)]
    assert together == alone  # exactly: each row is its own vector-matrix product


def test_without_statistics_every_verdict_is_unknown():
    scorer = domain_scorer(None)
    assert isinstance(scorer, NoDomainScorer) and "no domain statistics" in scorer.describe()
    verdicts = scorer(torch.zeros(3, 16))
    assert [(v.score, v.in_domain) for v in verdicts] == [(None, None)] * 3


# --- pooled features: one place for every kind of model -----------------------------------------


@pytest.mark.parametrize("build, overrides, layout", [
    (tiny_captioner, {}, "pooled"),
    (tiny_captioner, {"decoder": "soft_attention"}, "grid"),
    (tiny_video_captioner, {}, "frames"),
], ids=["show_tell", "soft_attention", "video"])
def test_encode_with_pooled_gives_encodes_embeddings_and_the_mean_of_the_backbone_features(build, overrides, layout):
    model, _ = build(**overrides)
    size = model.config.image_size
    shape = (3, model.config.num_frames, 3, size, size) if layout == "frames" else (3, 3, size, size)
    images = torch.randn(*shape, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        embeddings, pooled = model.encode_with_pooled(images)
        features = model.encoder.backbone_features(images)  # (3, C), (3, G*G, C) or (3, N, C)
        torch.testing.assert_close(embeddings, model.encode(images), rtol=0, atol=0)
    assert pooled.shape == (3, model.encoder.feature_size) and pooled.dtype == torch.float32
    expected = features if features.dim() == 2 else features.mean(dim=1)  # over grid cells, or over frames
    torch.testing.assert_close(pooled, expected)
    if layout == "pooled":  # show_tell: the globally average-pooled last feature map itself
        trunk_map = model.encoder.backbone(images)  # (3, C, h, w)
        torch.testing.assert_close(pooled, trunk_map.mean(dim=(2, 3)))


def test_pooled_features_are_fp32_under_bf16_and_close_to_fp32s():
    model, _ = tiny_captioner()
    images = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    with torch.inference_mode():
        _, expected = model.encode_with_pooled(images)
        _, pooled = prepare_inference(model, PRECISIONS["bf16"], torch.device("cpu"))(images)
    assert pooled.dtype == torch.float32
    assert (pooled - expected).abs().max() <= 0.05 * expected.abs().max()


# --- the export file ------------------------------------------------------------------------------


def test_statistics_survive_export_and_rebuild_bit_for_bit(tmp_path):
    export, statistics = write_domain_export(tmp_path / "export")
    assert DOMAIN_FILE in export_file_names(export)
    rebuilt = read_domain_statistics(export, feature_size=statistics.feature_size)
    assert torch.equal(rebuilt.mean, statistics.mean) and rebuilt.mean.dtype == statistics.mean.dtype
    assert torch.equal(rebuilt.precision, statistics.precision)
    assert rebuilt.threshold == statistics.threshold and rebuilt.shrinkage == statistics.shrinkage
    assert rebuilt.fitted_on == statistics.fitted_on and rebuilt.calibration == statistics.calibration
    assert math.isfinite(rebuilt.threshold) and rebuilt.calibration["held_out"][0]["images"] > 0
    # Written again from what was read and read back, nothing moves either.
    again = read_domain_statistics(write_domain_statistics(rebuilt, tmp_path / "again").parent)
    assert torch.equal(again.precision, statistics.precision) and again.threshold == statistics.threshold
    # safetensors: tensors and string metadata, nothing to unpickle.
    assert set(load_file(str(export / DOMAIN_FILE))) == {"mean", "precision", "threshold", "shrinkage"}


def test_an_export_without_statistics_reads_none_and_a_wrong_one_is_an_error(tmp_path):
    export = write_tiny_export(tmp_path / "old", seed=1)
    assert read_domain_statistics(export) is None and DOMAIN_FILE not in export_file_names(export)
    _, statistics = write_domain_export(tmp_path / "new")
    write_domain_statistics(statistics, export)
    with pytest.raises(ExportError, match="statistics of 512 features, but the model's backbone pools 2048"):
        read_domain_statistics(export, feature_size=2048)
    (export / DOMAIN_FILE).write_bytes(b"not safetensors")
    with pytest.raises(ExportError, match="not valid domain statistics"):
        read_domain_statistics(export)


def test_calibration_record_is_plain_json(tmp_path):
    _, statistics = write_domain_export(tmp_path / "export")
    record = json.loads(json.dumps(statistics.calibration))
    assert record["quantile"] == 0.99 and record["safety"] >= 1
    assert {"name", "images", "quantile_distance", "max_distance", "in_domain"} <= set(record["held_out"][0])


# --- the command line's options and errors --------------------------------------------------------


def test_several_held_out_sets_each_calibrate_and_clear_errors_name_what_to_give(tmp_path, capsys):
    from training import domain_calibration, export

    export_dir, _ = write_domain_export(tmp_path / "export")
    data = tmp_path / "export-shapes"
    train, val, images = data / "annotations" / "captions_train.json", data / "annotations" / "captions_val.json", \
        data / "images"
    other = generate(tmp_path / "other", train=1, val=12, seed=9)  # a second held-out set with its own folder
    statistics = domain_calibration.main([
        "--export-dir", str(export_dir), "--quiet", "--fit-annotations", str(train), "--images", str(images),
        "--held-out", str(val), "--held-out", str(other / "annotations" / "captions_val.json"), str(other / "images"),
    ])
    sets = statistics.calibration["held_out"]
    assert [s["images"] for s in sets] == [24, 12] and all(s["in_domain"] >= 0.99 for s in sets)
    assert statistics.threshold == pytest.approx(1.25 * max(s["quantile_distance"] for s in sets))
    assert read_domain_statistics(export_dir).threshold == statistics.threshold
    capsys.readouterr()

    parser = export.get_args_parser()
    cases = [
        (["--fit-annotations", str(train), "--images", str(images)], "give --held-out ANNOTATIONS [IMAGES]"),
        (["--held-out", str(val), "--images", str(images)], "give the training captions too"),
        (["--fit-annotations", str(train), "--held-out", str(val)], "which folder holds its images? give --images"),
        (["--fit-annotations", str(tmp_path / "none.json"), "--held-out", str(val), "--images", str(images)],
         "no caption file at"),
        (["--fit-annotations", str(train), "--held-out", str(val), "a", "b", "--images", str(images)],
         "--held-out takes ANNOTATIONS and optionally IMAGES"),
        (["--fit-annotations", str(train), "--held-out", str(val), "--images", str(images), "--domain-safety", "0.5"],
         "--domain-safety at least 1"),
    ]
    for options, message in cases:
        with pytest.raises(SystemExit):
            export.domain_sources(parser.parse_args(["--checkpoint", "c.pt", "--out", "o", *options]), parser)
        assert message in capsys.readouterr().err, options
    assert export.domain_sources(parser.parse_args(["--checkpoint", "c.pt", "--out", "o"]), parser) is None
    with pytest.raises(ValueError, match="24 held-out images of .* are also fitting images"):
        domain_calibration.main(["--export-dir", str(export_dir), "--quiet", "--fit-annotations", str(val),
                                 "--held-out", str(val), "--images", str(images)])


def test_a_video_export_is_fitted_on_its_clips_and_its_replies_are_scored(tmp_path):
    """The clips' pooled features are the mean over their sampled frames; fitted and served like images'."""
    from handler.caption_handler import CaptionHandler
    from tests.helpers import TINY_VIDEO, torchserve_context
    from training import domain_calibration, video_data

    train, val = video_data.generate(tmp_path / "videos", train=6, val=3, seed=5, frame_size=32)
    export = write_tiny_export(tmp_path / "export", seed=1, **TINY_VIDEO)
    statistics = domain_calibration.main(["--export-dir", str(export), "--quiet", "--fit-annotations", str(train),
                                          "--held-out", str(val), "--images", str(tmp_path / "videos" / "clips")])
    assert statistics.fitted_on == 6 and statistics.calibration["held_out"][0]["images"] == 3
    context, _ = torchserve_context(export, 1, {"captioner": {"precision": "fp32"}})
    handler = CaptionHandler()
    handler.initialize(context)
    clip = (tmp_path / "videos" / "clips" / json.loads(val.read_text())["videos"][0]["file_name"]).read_bytes()
    reply = json.loads(handler.handle([{"body": bytearray(clip)}], context)[0])
    assert reply["frames_sampled"] and isinstance(reply["domain_score"], float)
    assert reply["in_domain"] is True, "a held-out clip the threshold was calibrated on"
