"""The domain statistics (`model/domain.py`) on synthetic features, the domain features of every kind of
model (`model/domain_features.py`), and the statistics' trip through an export (`model/export_format.py`,
`training/domain_calibration.py`)."""

from __future__ import annotations

import json
import math

import pytest
import torch
from safetensors.torch import load_file, save_file
from sklearn.covariance import ledoit_wolf

from model.domain import (
    FORMAT_V1,
    DomainScorer,
    DomainStatistics,
    NoDomainScorer,
    calibrate,
    calibrate_threshold,
    domain_score,
    domain_scorer,
    fit_domain_statistics,
    fit_gaussian,
    ledoit_wolf_shrinkage,
    mahalanobis_distances,
)
from model.export_format import (
    DOMAIN_FILE,
    ExportError,
    export_file_names,
    read_domain_statistics,
    write_domain_statistics,
)
from model.precision import PRECISIONS, prepare_inference
from tests.helpers import tiny_captioner, tiny_video_captioner, write_domain_export, write_tiny_export
from training.coco_data import SharedImages
from training.shapes_dataset import generate


def gaussian_features(count: int, size: int = 16, seed: int = 0) -> torch.Tensor:
    """(count, size) features from one anisotropic Gaussian (scales 0.1 to 3), away from the origin."""
    generator = torch.Generator().manual_seed(seed)
    scales = torch.linspace(0.1, 3.0, size)
    mixing, _ = torch.linalg.qr(torch.randn(size, size, generator=torch.Generator().manual_seed(99)))
    return 5 + (torch.randn(count, size, generator=generator) * scales) @ mixing.T


ONE_BLOCK = {"layer4_mean": 16}


@pytest.fixture(scope="module")
def statistics() -> DomainStatistics:
    fitted = fit_domain_statistics(gaussian_features(2000), ONE_BLOCK)
    return calibrate(fitted, {"held out": gaussian_features(500, seed=1)})


def test_the_mean_scores_highest_and_far_points_are_out(statistics):
    scorer = DomainScorer(statistics)
    samples = gaussian_features(200, seed=2)
    gaussian = statistics.gaussians[0]
    at_mean, *others = scorer(torch.cat([gaussian.mean[None], samples]))
    assert at_mean.score == pytest.approx(1.0) and at_mean.in_domain
    assert all(v.score < at_mean.score for v in others)
    assert sum(v.in_domain for v in others) >= 0.99 * len(others)  # new samples of the fitted Gaussian
    # Steps along the directions of least and most variance (0.1 and 3.0; shrinkage widens the least
    # to about 0.2), each far beyond any sample, and points elsewhere: the origin, minus the mean.
    _, vectors = torch.linalg.eigh(torch.linalg.inv(gaussian.precision.double()))
    narrow, wide = vectors[:, 0].float(), vectors[:, -1].float()
    far = torch.stack([gaussian.mean + 10 * narrow, gaussian.mean + 60 * wide, torch.zeros(16), -gaussian.mean])
    verdicts = scorer(far)
    assert [v.in_domain for v in verdicts] == [False] * 4
    assert all(v.score < 0.05 for v in verdicts), verdicts


def test_the_score_is_one_half_at_the_threshold_and_falls_with_distance(statistics):
    gaussian = statistics.gaussians[0]
    threshold = gaussian.threshold
    assert domain_score(threshold, threshold) == 0.5 and domain_score(1.0) == 0.5
    assert domain_score(0.0, threshold) == 1.0
    scores = [domain_score(d, threshold) for d in (0.5 * threshold, threshold, 2 * threshold, 10 * threshold)]
    assert scores == sorted(scores, reverse=True) and scores[0] > 0.9 and scores[2] < 0.1
    scorer = DomainScorer(statistics)
    # A point exactly at the threshold's distance is in domain, just beyond it is not.
    direction = torch.zeros(16)
    direction[0] = 1
    unit = float(gaussian.distances(gaussian.mean[None] + direction))
    near, beyond = scorer(torch.stack([gaussian.mean + direction * threshold / unit * 0.999,
                                       gaussian.mean + direction * threshold / unit * 1.001]))
    assert near.in_domain and near.score > 0.5 and not beyond.in_domain and beyond.score < 0.5


def test_the_threshold_leaves_99_percent_of_every_held_out_set_in_domain_with_margin():
    fitted = fit_gaussian(gaussian_features(1000))
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
    fitted = fit_gaussian(features)
    assert fitted.shrinkage == pytest.approx(expected_shrinkage, rel=1e-9)  # already conditioned: LW alone
    torch.testing.assert_close(torch.linalg.inv(fitted.precision.double()), torch.from_numpy(expected_covariance),
                               rtol=1e-4, atol=1e-5)
    # Fewer images than features, and dead channels (always 0, as after a ReLU): the sample covariance
    # is singular; the shrunk one still inverts, symmetric, positive, with a bounded condition number.
    degenerate = torch.cat([gaussian_features(10, size=24, seed=4), torch.zeros(10, 8)], dim=1)  # (10, 32)
    fitted = fit_gaussian(degenerate)
    eigenvalues = torch.linalg.eigvalsh(fitted.precision.double())
    assert torch.equal(fitted.precision, fitted.precision.T) and bool(torch.isfinite(fitted.precision).all())
    assert eigenvalues.min() > 0 and eigenvalues.max() / eigenvalues.min() <= 1e4 * 1.001
    with pytest.raises(ValueError, match="all the same"):
        fit_gaussian(torch.ones(5, 4))


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


TWO_BLOCKS = {"layer4_mean": 16, "layer3_mean_std": 8}


def two_block_features(count: int, seed: int) -> torch.Tensor:
    """(count, 24): the 16-feature Gaussian, then an independent 8-feature one (scales 0.1 to 3 as well)."""
    return torch.cat([gaussian_features(count, seed=seed), gaussian_features(count, size=8, seed=seed + 100)], dim=1)


def test_an_image_is_as_far_out_as_the_block_that_finds_it_furthest():
    fitted = fit_domain_statistics(two_block_features(2000, seed=0), TWO_BLOCKS)
    statistics = calibrate(fitted, {"a": two_block_features(400, seed=1), "b": two_block_features(300, seed=2)})
    assert [g.block for g in statistics.gaussians] == ["layer4_mean", "layer3_mean_std"]
    assert all(s["in_domain"] >= 0.99 for s in statistics.calibration["held_out"])
    assert max(s["quantile_ratio"] for s in statistics.calibration["held_out"]) == pytest.approx(1 / 1.25)
    first, second = statistics.gaussians
    typical = two_block_features(1, seed=3)
    # Out in the second block only: the first block alone would call it in domain.
    odd = typical.clone()
    odd[0, 16:] = second.mean + 40
    scorer = DomainScorer(statistics)
    inside, outside = scorer(torch.cat([typical, odd]))
    assert inside.in_domain and not outside.in_domain and outside.score < 0.05
    assert float(first.distances(odd[:, :16])[0]) <= first.threshold
    expected = max(float(first.distances(odd[:, :16])[0]) / first.threshold,
                   float(second.distances(odd[:, 16:])[0]) / second.threshold)
    assert outside.ratio == pytest.approx(expected, rel=1e-12)
    assert outside.score == pytest.approx(domain_score(expected))
    # Longer vectors score on their leading blocks; a vector that does not match the blocks is refused.
    with pytest.raises(ValueError, match="do not match the blocks"):
        fit_domain_statistics(two_block_features(10, seed=4), ONE_BLOCK)


def test_one_block_calibrates_exactly_as_one_threshold_does():
    fitted = fit_domain_statistics(gaussian_features(1000), ONE_BLOCK)
    small, large = gaussian_features(40, seed=5) * 1.05, gaussian_features(800, seed=6)
    statistics = calibrate(fitted, {"small": small, "large": large})
    gaussian = fitted.gaussians[0]
    threshold, _ = calibrate_threshold({"small": gaussian.distances(small), "large": gaussian.distances(large)})
    assert statistics.gaussians[0].threshold == pytest.approx(threshold, rel=1e-12)


def test_statistics_of_the_one_block_format_still_load_and_score_as_before(tmp_path):
    """Exports made before the blocks: one unprefixed Gaussian of the last map's mean, format v1."""
    fitted = fit_gaussian(gaussian_features(500))
    threshold = 7.5
    save_file({"mean": fitted.mean, "precision": fitted.precision, "threshold": torch.tensor([threshold]).double(),
               "shrinkage": torch.tensor([fitted.shrinkage]).double()}, str(tmp_path / DOMAIN_FILE),
              metadata={"format": FORMAT_V1, "fitted_on": "500", "calibration": "{}"})
    statistics = read_domain_statistics(tmp_path, {"layer4_mean": 16, "layer3_mean_std": 8})
    assert [g.block for g in statistics.gaussians] == ["layer4_mean"] and statistics.fitted_on == 500
    features = two_block_features(6, seed=8) * 1.5  # the model gives both blocks; v1 reads the first
    verdicts = DomainScorer(statistics)(features)
    distances = mahalanobis_distances(features[:, :16], fitted.mean, fitted.precision)
    assert [v.score for v in verdicts] == pytest.approx([domain_score(float(d), threshold) for d in distances],
                                                        rel=1e-12)
    assert [v.in_domain for v in verdicts] == [float(d) <= threshold for d in distances]


# --- domain features: one place for every kind of model -----------------------------------------


@pytest.mark.parametrize("build, overrides, layout", [
    (tiny_captioner, {}, "pooled"),
    (tiny_captioner, {"decoder": "soft_attention"}, "grid"),
    (tiny_video_captioner, {}, "frames"),
], ids=["show_tell", "soft_attention", "video"])
def test_encode_with_domain_gives_encodes_embeddings_and_the_summaries_of_the_maps(build, overrides, layout):
    model, _ = build(**overrides)
    size = 64  # a 2 x 2 last map, so its positions differ and the contrast means something
    shape = (3, model.config.num_frames, 3, size, size) if layout == "frames" else (3, 3, size, size)
    images = torch.randn(*shape, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        embeddings, domain = model.encode_with_domain(images)
        features = model.encoder.backbone_features(images)  # (3, C), (3, G*G, C) or (3, N, C)
        torch.testing.assert_close(embeddings, model.encode(images), rtol=0, atol=0)
        pictures = images.reshape(-1, 3, size, size)  # a clip's frames one after the other
        middle = model.encoder.backbone[:-1](pictures)  # layer3's (P, C3, h, w)
    layout = model.encoder.domain_layout
    assert list(layout) == ["layer4_mean", "layer3_mean_std", "layer4_contrast"]
    assert layout["layer3_mean_std"] == 2 * middle.shape[1] and layout["layer4_contrast"] == 1
    assert domain.shape == (3, sum(layout.values())) and domain.dtype == torch.float32
    last = features if features.dim() == 2 else features.mean(dim=1)  # over grid cells, or over frames
    frames = images.shape[1] if images.dim() == 5 else 1
    spread = torch.cat([middle.mean(dim=(2, 3)), middle.std(dim=(2, 3), correction=0)], dim=1)  # (P, 2*C3)
    torch.testing.assert_close(domain[:, :model.encoder.feature_size], last)
    torch.testing.assert_close(domain[:, model.encoder.feature_size:-1], spread.reshape(3, frames, -1).mean(dim=1))
    # The contrast: log of the most distinct position's distance from the map's mean, over the mean's norm.
    with torch.inference_mode():
        positions = model.encoder.backbone(pictures).flatten(2).transpose(1, 2)  # (P, h*w, C)
    centre = positions.mean(dim=1)  # (P, C)
    furthest = torch.stack([(positions[:, p] - centre).norm(dim=1) for p in range(positions.shape[1])]).amax(0)
    expected = (furthest / centre.norm(dim=1) + 1e-6).log().reshape(3, frames).mean(dim=1)
    torch.testing.assert_close(domain[:, -1], expected, rtol=1e-4, atol=1e-5)
    if layout == "pooled":  # show_tell: the globally average-pooled last feature map itself
        torch.testing.assert_close(domain[:, :model.encoder.feature_size], model.encoder.backbone(images).mean((2, 3)))


def test_domain_features_are_fp32_under_bf16_and_close_to_fp32s():
    model, _ = tiny_captioner()
    images = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    with torch.inference_mode():
        _, expected = model.encode_with_domain(images)
        _, domain = prepare_inference(model, PRECISIONS["bf16"], torch.device("cpu"))(images)
    assert domain.dtype == torch.float32
    assert (domain - expected).abs().max() <= 0.05 * expected.abs().max()


# --- the export file ------------------------------------------------------------------------------


def test_statistics_survive_export_and_rebuild_bit_for_bit(tmp_path):
    export, statistics = write_domain_export(tmp_path / "export", image_size=64)  # a 2 x 2 last map
    assert DOMAIN_FILE in export_file_names(export)
    rebuilt = read_domain_statistics(export, statistics.blocks)
    assert rebuilt.blocks == statistics.blocks
    assert list(rebuilt.blocks) == ["layer4_mean", "layer3_mean_std", "layer4_contrast"]
    for got, expected in zip(rebuilt.gaussians, statistics.gaussians):
        assert torch.equal(got.mean, expected.mean) and got.mean.dtype == expected.mean.dtype
        assert torch.equal(got.precision, expected.precision)
        assert got.threshold == expected.threshold and got.shrinkage == expected.shrinkage
        assert math.isfinite(got.threshold)
    assert rebuilt.fitted_on == statistics.fitted_on and rebuilt.calibration == statistics.calibration
    assert rebuilt.calibration["held_out"][0]["images"] > 0
    # Written again from what was read and read back, nothing moves either.
    again = read_domain_statistics(write_domain_statistics(rebuilt, tmp_path / "again").parent)
    assert [g.threshold for g in again.gaussians] == [g.threshold for g in statistics.gaussians]
    assert torch.equal(again.gaussians[1].precision, statistics.gaussians[1].precision)
    # safetensors: tensors and string metadata, nothing to unpickle.
    assert set(load_file(str(export / DOMAIN_FILE))) == {
        f"{block}.{name}" for block in ("layer4_mean", "layer3_mean_std", "layer4_contrast")
        for name in ("mean", "precision", "threshold", "shrinkage")}


def test_an_export_without_statistics_reads_none_and_a_wrong_one_is_an_error(tmp_path):
    export = write_tiny_export(tmp_path / "old", seed=1)
    assert read_domain_statistics(export) is None and DOMAIN_FILE not in export_file_names(export)
    _, statistics = write_domain_export(tmp_path / "new")
    write_domain_statistics(statistics, export)
    with pytest.raises(ExportError, match="does not fit this model: its block layer4_mean has 512 features, but "
                                          "the model's has 2048"):
        read_domain_statistics(export, {"layer4_mean": 2048, "layer3_mean_std": 2048, "layer4_contrast": 1})
    (export / DOMAIN_FILE).write_bytes(b"not safetensors")
    with pytest.raises(ExportError, match="not valid domain statistics"):
        read_domain_statistics(export)


def test_a_one_position_map_has_no_contrast_and_its_block_is_left_out(tmp_path):
    """32 px into a ResNet: a 1 x 1 last map, the same contrast for every picture; the other blocks are fitted."""
    export, statistics = write_domain_export(tmp_path / "export", image_size=32)
    assert list(statistics.blocks) == ["layer4_mean", "layer3_mean_std"]
    assert list(read_domain_statistics(export, write_and_read_layout(export)).blocks) == list(statistics.blocks)


def write_and_read_layout(export) -> dict[str, int]:
    from model.export_format import load_exported_captioner

    model, _ = load_exported_captioner(export, "cpu")
    return model.encoder.domain_layout


def test_calibration_record_is_plain_json(tmp_path):
    _, statistics = write_domain_export(tmp_path / "export", image_size=64)
    record = json.loads(json.dumps(statistics.calibration))
    assert record["quantile"] == 0.99 and record["safety"] >= 1
    assert {"name", "images", "quantile_ratio", "max_ratio", "in_domain"} <= set(record["held_out"][0])
    assert [b["block"] for b in record["blocks"]] == ["layer4_mean", "layer3_mean_std", "layer4_contrast"]


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
    assert max(s["quantile_ratio"] for s in sets) == pytest.approx(1 / 1.25)
    assert [g.threshold for g in read_domain_statistics(export_dir).gaussians] == \
        [g.threshold for g in statistics.gaussians]
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
    """The clips' domain features are the mean over their sampled frames; fitted and served like images'."""
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


def test_an_export_over_an_earlier_one_drops_that_models_statistics(tmp_path):
    export, _ = write_domain_export(tmp_path / "export")
    assert DOMAIN_FILE in export_file_names(export)
    write_tiny_export(export, seed=7)  # another model, exported into the same folder
    assert read_domain_statistics(export) is None and DOMAIN_FILE not in export_file_names(export)


def test_an_export_whose_domain_fit_fails_writes_nothing(tmp_path):
    from training import export, train

    data = generate(tmp_path / "shapes", train=12, val=4, seed=3, canvas=64)
    annotations, images = data / "annotations" / "captions_train.json", data / "images"
    checkpoint = train.main(train.get_args_parser().parse_args([
        "--annotations", str(annotations), "--images", str(images), "--output-dir", str(tmp_path / "run"),
        "--encoder-weights", "none", "--embed-size", "16", "--hidden-size", "32", "--image-size", "32",
        "--batch-size", "8", "--min-word-count", "1", "--epochs", "1", "--quiet",
    ]))
    parser = export.get_args_parser()
    args = parser.parse_args(["--checkpoint", str(checkpoint), "--out", str(tmp_path / "export"), "--quiet",
                              "--fit-annotations", str(annotations), "--held-out", str(annotations),
                              "--images", str(images)])
    with pytest.raises(SharedImages, match="are also fitting images"):  # one `error:` line from the CLIs
        export.export_checkpoint(args.checkpoint, args.out, export.domain_sources(args, parser))
    assert not (tmp_path / "export").exists(), "no export without the statistics asked for"
