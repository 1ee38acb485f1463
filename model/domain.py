"""How much an image looks like the training images: Mahalanobis distances on backbone feature summaries.

A model trained on generated scenes of coloured shapes still writes a fluent
caption for a holiday photo, and the caption is nonsense. Following Lee et al.
(2018, "A Simple Unified Framework for Detecting Out-of-Distribution Samples and
Adversarial Attacks"), summaries of the backbone's feature maps on the training
images are each modelled by one Gaussian, a mean vector and a covariance, and an
image is scored by its Mahalanobis distance to each mean,

    d_b(x) = sqrt((x_b - mean_b)^T precision_b (x_b - mean_b)),   precision_b = inverse(shrunk covariance_b),

for every block b of the domain features (`model/domain_features.py`: the
last map's mean, layer3's mean and spread, the last map's contrast). One
Gaussian per block, not one per class as in the paper: captions have no classes.
Each block has its own threshold t_b, and an image is as far out as the block
that finds it furthest out:

    r(x) = max_b d_b(x) / t_b,   domain_score = 1 / (1 + r ** 4),   in_domain = r <= 1.

So the score is 1 at the training means, 0.5 at the threshold, towards 0 far
away; the fourth power makes it fall quickly around the threshold: 0.94 at half
of it, 0.06 at twice it. With a single block this is exactly the older
one-Gaussian score (statistics files of format v1 still load, as that block).

The sample covariance of a few thousand 512-dimensional features is nearly
singular (dead ReLU channels have no variance at all), so it is shrunk towards a
multiple of the identity with the Ledoit-Wolf (2004) coefficient, and more if
needed for its condition number to stay at most `MAX_CONDITION`:

    shrunk = (1 - a) * sample + a * (trace(sample) / C) * I.

The thresholds are calibrated on held-out images (`calibrate`) so that at least
a quantile (99%) of every held-out set is in domain, with a safety factor.

Everything is computed in float64 on the CPU from fp32 features, row by row, so
an image's score does not depend on the other images of its batch. Pure
PyTorch; `model/export_format.py` writes and reads the statistics.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any, Mapping

import torch

from model.domain_features import DOMAIN_BLOCKS

MAX_CONDITION = 1e4  # largest eigenvalue over smallest of the shrunk covariance
SCORE_POWER = 4  # domain_score = 1 / (1 + r ** SCORE_POWER)
DEFAULT_QUANTILE = 0.99  # of the held-out images' distances ...
DEFAULT_SAFETY = 1.25  # ... times this is the threshold (see `calibrate`)
FORMAT = "captioner-domain-v2"  # safetensors metadata of domain.safetensors: one Gaussian per block
FORMAT_V1 = "captioner-domain-v1"  # older exports: one Gaussian of the last map's mean, read as that block
_GAUSSIAN_TENSORS = ("mean", "precision", "threshold", "shrinkage")


@dataclass(frozen=True, eq=False)
class FeatureGaussian:
    """One block's Gaussian: what its distance is measured from, and how far is too far.

    Args:
        block: the block of the domain features it models (a name in `DOMAIN_BLOCKS`).
        mean: (C,) mean of the block's features over the fitting images, fp32.
        precision: (C, C) inverse of the shrunk covariance, symmetric, fp32.
        threshold: the distance at which this block calls an image out of domain (inf until calibrated).
        shrinkage: the weight `a` of the identity in the shrunk covariance.
    """

    block: str
    mean: torch.Tensor
    precision: torch.Tensor
    threshold: float
    shrinkage: float

    @property
    def size(self) -> int:
        return int(self.mean.shape[0])

    @cached_property
    def _float64(self) -> tuple[torch.Tensor, torch.Tensor]:
        return self.mean.to(torch.float64), self.precision.to(torch.float64)  # converted once, not per request

    def distances(self, features: torch.Tensor) -> torch.Tensor:
        """(B, C) features of this block -> (B,) float64 distances, row by row."""
        return mahalanobis_distances(features, *self._float64)

    def with_threshold(self, threshold: float) -> "FeatureGaussian":
        return FeatureGaussian(self.block, self.mean, self.precision, float(threshold), self.shrinkage)


@dataclass(frozen=True, eq=False)
class DomainStatistics:
    """What serving needs to score an image, and where it came from.

    Args:
        gaussians: one per block, in the order of `DOMAIN_BLOCKS` (a leading run of it).
        fitted_on: how many images the means and covariances were computed from.
        calibration: how the thresholds were chosen (quantile, safety factor, the held-out
            sets and their distances), plain JSON values.
    """

    gaussians: tuple[FeatureGaussian, ...]
    fitted_on: int
    calibration: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        blocks = tuple(g.block for g in self.gaussians)
        if not blocks or blocks != DOMAIN_BLOCKS[:len(blocks)]:
            raise ValueError(f"blocks {list(blocks)} are not a leading run of {list(DOMAIN_BLOCKS)}")

    @property
    def blocks(self) -> dict[str, int]:
        """Each block's size, in order."""
        return {g.block: g.size for g in self.gaussians}

    @property
    def feature_size(self) -> int:
        """How many of the domain features' leading numbers the statistics read."""
        return sum(g.size for g in self.gaussians)

    def block_features(self, features: torch.Tensor) -> list[tuple[FeatureGaussian, torch.Tensor]]:
        """(B, D) domain features -> each Gaussian with its block's (B, C_b) slice (D may be longer)."""
        pairs, start = [], 0
        for gaussian in self.gaussians:
            pairs.append((gaussian, features[:, start:start + gaussian.size]))
            start += gaussian.size
        return pairs

    def ratios(self, features: torch.Tensor) -> torch.Tensor:
        """(B, D) domain features -> (B,) float64 r = max over blocks of distance / threshold (1: the threshold)."""
        per_block = [g.distances(block) / g.threshold for g, block in self.block_features(features)]
        return torch.stack(per_block).amax(dim=0)

    def to_tensors(self) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
        """The safetensors content: tensors and string metadata (floats written so they read back exactly)."""
        tensors = {}
        for g in self.gaussians:
            tensors.update({
                f"{g.block}.mean": g.mean.detach().to("cpu", torch.float32).contiguous(),
                f"{g.block}.precision": g.precision.detach().to("cpu", torch.float32).contiguous(),
                f"{g.block}.threshold": torch.tensor([g.threshold], dtype=torch.float64),
                f"{g.block}.shrinkage": torch.tensor([g.shrinkage], dtype=torch.float64),
            })
        metadata = {"format": FORMAT, "blocks": json.dumps([g.block for g in self.gaussians]),
                    "fitted_on": str(self.fitted_on), "calibration": json.dumps(self.calibration)}
        return tensors, metadata

    @classmethod
    def from_tensors(cls, tensors: Mapping[str, torch.Tensor],
                     metadata: Mapping[str, str] | None) -> "DomainStatistics":
        """Rebuild from `to_tensors`' content (or a v1 file's); a missing or misshapen entry is a ValueError."""
        metadata = metadata or {}
        if metadata.get("format") == FORMAT_V1:  # one Gaussian, unprefixed: the last map's mean
            names = {"layer4_mean": {name: name for name in _GAUSSIAN_TENSORS}}
        elif metadata.get("format") == FORMAT:
            names = {block: {name: f"{block}.{name}" for name in _GAUSSIAN_TENSORS}
                     for block in json.loads(metadata.get("blocks", "[]"))}
        else:
            raise ValueError(f"not domain statistics of format {FORMAT} (metadata format {metadata.get('format')!r})")
        gaussians = []
        for block, keys in names.items():
            missing = sorted(key for key in keys.values() if key not in tensors)
            if missing:
                raise ValueError(f"lacks {', '.join(missing)}")
            mean, precision = tensors[keys["mean"]], tensors[keys["precision"]]
            size = mean.shape[0] if mean.dim() == 1 else -1
            if size < 1 or tuple(precision.shape) != (size, size):
                raise ValueError(f"{block}: mean {tuple(mean.shape)} and precision {tuple(precision.shape)} do not "
                                 "fit together")
            threshold = float(tensors[keys["threshold"]].reshape(-1)[0])
            if not math.isfinite(threshold) or threshold <= 0:
                raise ValueError(f"{block}: threshold must be a positive number, got {threshold}")
            gaussians.append(FeatureGaussian(block, mean, precision, threshold,
                                             float(tensors[keys["shrinkage"]].reshape(-1)[0])))
        return cls(tuple(gaussians), int(metadata.get("fitted_on", 0)), json.loads(metadata.get("calibration", "{}")))


def ledoit_wolf_shrinkage(centred: torch.Tensor) -> float:
    """The Ledoit-Wolf (2004) weight of the scaled identity, from (N, C) centred features.

    Minimises the expected squared Frobenius error of the shrunk covariance; the
    same estimate as scikit-learn's `ledoit_wolf_shrinkage` (which the tests check).
    """
    n, size = centred.shape
    centred = centred.double()
    sample = centred.T @ centred / n  # (C, C)
    scale = torch.trace(sample) / size
    spread = ((sample - scale * torch.eye(size, dtype=sample.dtype)) ** 2).sum()  # ||S - scale I||^2
    if spread <= 0:
        return 1.0  # the features are already isotropic
    noise = ((centred ** 2).sum(dim=1) ** 2).sum() / n - (sample ** 2).sum()  # n * the estimate of E||xx^T - S||^2
    return float(min(noise / n, spread) / spread)


def fit_gaussian(features: torch.Tensor, block: str = DOMAIN_BLOCKS[0], *,
                 max_condition: float = MAX_CONDITION) -> FeatureGaussian:
    """Mean and precision of (N, C) features; the threshold is set later by `calibrate`.

    The shrinkage is Ledoit-Wolf's, raised where needed so that the shrunk
    covariance's condition number is at most `max_condition`: with eigenvalues
    l_i of the sample covariance and m its mean eigenvalue, the shrunk ones are
    (1 - a) l_i + a m, and a >= l_max / (l_max + (max_condition - 1) m) bounds
    their ratio. Fitted in float64, stored in fp32.
    """
    if features.dim() != 2 or features.shape[0] < 2:
        raise ValueError(f"fitting needs (N, C) features of at least 2 images, got {tuple(features.shape)}")
    features = features.double()
    mean = features.mean(dim=0)  # (C,)
    centred = features - mean
    sample = centred.T @ centred / features.shape[0]  # (C, C)
    eigenvalues = torch.linalg.eigvalsh(sample).clamp(min=0)
    scale = float(eigenvalues.mean())
    if scale <= 0:
        raise ValueError(f"{block}: the fitting images' features are all the same; fit on more (and different) "
                         "images")
    largest = float(eigenvalues[-1])
    conditioned = largest / (largest + (max_condition - 1) * scale)
    shrinkage = min(1.0, max(ledoit_wolf_shrinkage(centred), conditioned))
    shrunk = (1 - shrinkage) * sample + shrinkage * scale * torch.eye(sample.shape[0], dtype=sample.dtype)
    values, vectors = torch.linalg.eigh(shrunk)
    precision = (vectors / values) @ vectors.T  # V diag(1/l) V^T
    precision = (precision + precision.T) / 2  # exactly symmetric
    return FeatureGaussian(block, mean.float(), precision.float(), threshold=math.inf, shrinkage=shrinkage)


def fit_domain_statistics(features: torch.Tensor, layout: Mapping[str, int], *,
                          max_condition: float = MAX_CONDITION) -> DomainStatistics:
    """One Gaussian per block of `layout` (block -> size, in order) from (N, D) domain features; not calibrated.

    A block after the first whose features do not vary at all over the fitting
    images carries no information (the contrast of a one-position map, from a
    small input): it is left out, with the blocks after it, so the statistics'
    blocks stay a leading run of the layout.
    """
    if features.dim() != 2 or features.shape[1] != sum(layout.values()):
        raise ValueError(f"domain features of shape {tuple(features.shape)} do not match the blocks {dict(layout)}")
    gaussians, start = [], 0
    for block, size in layout.items():
        part = features[:, start:start + size]
        if gaussians and bool((part == part[:1]).all()):
            break
        gaussians.append(fit_gaussian(part, block, max_condition=max_condition))
        start += size
    return DomainStatistics(tuple(gaussians), fitted_on=int(features.shape[0]))


def mahalanobis_distances(features: torch.Tensor, mean: torch.Tensor, precision: torch.Tensor) -> torch.Tensor:
    """(B, C) features -> (B,) float64 distances, each row computed on its own (batch-independent)."""
    rows = features.detach().to("cpu", torch.float64) - mean.to(torch.float64)  # (B, C)
    matrix = precision.to(torch.float64)
    squared = [row @ matrix @ row for row in rows]  # one vector-matrix product per row: no batch-shaped kernel
    return torch.stack(squared).clamp(min=0).sqrt() if squared else torch.zeros(0, dtype=torch.float64)


def domain_score(distance: float, threshold: float = 1.0) -> float:
    """1 / (1 + (d / threshold) ** 4): 1 at the mean, 0.5 at the threshold, 0 far away."""
    return 1.0 / (1.0 + (distance / threshold) ** SCORE_POWER)


def calibrate_threshold(held_out: Mapping[str, torch.Tensor], *, quantile: float = DEFAULT_QUANTILE,
                        safety: float = DEFAULT_SAFETY) -> tuple[float, dict[str, Any]]:
    """One distance's threshold: `safety` times the largest, over the held-out sets, of each set's `quantile`.

    Each set's own quantile, not the quantile of all together, so that a small
    set (a second renderer, say) is not outvoted by a large one: at least
    `quantile` of every set is below its quantile, and the safety factor leaves
    room for new images that land a little further out than the held-out ones
    (README "Domain score" has the figures).
    Returns the threshold and a record of the calibration.
    """
    if not held_out or any(len(d) == 0 for d in held_out.values()):
        raise ValueError("calibrating the threshold needs at least one held-out image in every held-out set")
    if not 0 < quantile <= 1 or safety < 1:
        raise ValueError(f"quantile must be in (0, 1] and safety at least 1, got {quantile} and {safety}")
    per_set = {name: float(torch.quantile(d.double(), quantile)) for name, d in held_out.items()}
    threshold = safety * max(per_set.values())
    sets = [
        {"name": name, "images": len(d), "quantile_distance": per_set[name], "max_distance": float(d.max()),
         "in_domain": float((d <= threshold).double().mean())}
        for name, d in held_out.items()
    ]
    return threshold, {"quantile": quantile, "safety": safety, "held_out": sets}


def calibrate(statistics: DomainStatistics, held_out: Mapping[str, torch.Tensor], *,
              quantile: float = DEFAULT_QUANTILE, safety: float = DEFAULT_SAFETY) -> DomainStatistics:
    """Every block's threshold, from held-out sets' (name -> (N, D) domain features).

    Each block's distances are first put on a common scale, divided by the
    largest of the sets' `quantile`s of that block (q_b); an image's combined
    distance is the largest of its scaled ones, and `calibrate_threshold` sets
    the combined threshold T on those. Block b's threshold is then q_b * T, so at
    least `quantile` of every set is in domain by every block at once, with the
    safety factor's room. With one block this is `calibrate_threshold` itself.
    The record says, per set, the share in domain and the quantile and largest of
    its distances in units of the threshold (r), and each block's threshold.
    """
    if not held_out or any(len(f) == 0 for f in held_out.values()):
        raise ValueError("calibrating the threshold needs at least one held-out image in every held-out set")
    distances = {name: [g.distances(block) for g, block in statistics.block_features(f)]
                 for name, f in held_out.items()}  # set -> per block (N,)
    scales = [max(float(torch.quantile(per_block[b].double(), quantile)) for per_block in distances.values())
              for b in range(len(statistics.gaussians))]
    scales = [scale if scale > 0 else 1.0 for scale in scales]
    combined = {name: torch.stack([d / scale for d, scale in zip(per_block, scales)]).amax(dim=0)
                for name, per_block in distances.items()}
    threshold, record = calibrate_threshold(combined, quantile=quantile, safety=safety)
    gaussians = tuple(g.with_threshold(scale * threshold) for g, scale in zip(statistics.gaussians, scales))
    record["held_out"] = [
        {"name": s["name"], "images": s["images"], "in_domain": s["in_domain"],
         "quantile_ratio": s["quantile_distance"] / threshold, "max_ratio": s["max_distance"] / threshold}
        for s in record["held_out"]
    ]
    record["blocks"] = [{"block": g.block, "size": g.size, "threshold": g.threshold} for g in gaussians]
    return DomainStatistics(gaussians, statistics.fitted_on, record)


@dataclass(frozen=True)
class DomainVerdict:
    """One image's score and flag; both None when the export has no domain statistics."""

    score: float | None
    in_domain: bool | None
    ratio: float | None = None  # r: the largest of the blocks' distance / threshold


UNKNOWN = DomainVerdict(None, None)


class DomainScorer:
    """Scores domain features against fitted statistics."""

    def __init__(self, statistics: DomainStatistics) -> None:
        self.statistics = statistics

    def ratios(self, features: torch.Tensor) -> torch.Tensor:
        """(B, D) domain features -> (B,) r, each row on its own (1 at the threshold)."""
        return self.statistics.ratios(features)

    def __call__(self, features: torch.Tensor) -> list[DomainVerdict]:
        """(B, D) domain features -> one verdict per row."""
        return [DomainVerdict(domain_score(r), r <= 1.0, r) for r in self.ratios(features).tolist()]

    def describe(self) -> str:
        s = self.statistics
        blocks = ", ".join(f"{g.block} {g.size} threshold {g.threshold:.3f}" for g in s.gaussians)
        return f"domain statistics loaded (fitted on {s.fitted_on} images; {blocks})"


class NoDomainScorer:
    """An export without domain statistics: every verdict is unknown (the reply's fields are null)."""

    statistics = None

    def __call__(self, features: torch.Tensor) -> list[DomainVerdict]:
        return [UNKNOWN] * features.shape[0]

    def describe(self) -> str:
        return "no domain statistics (replies carry domain_score null)"


def domain_scorer(statistics: DomainStatistics | None) -> DomainScorer | NoDomainScorer:
    """The scorer for an export's statistics, or the one that answers unknown when it has none."""
    return NoDomainScorer() if statistics is None else DomainScorer(statistics)


def layout_mismatch(statistics: DomainStatistics, layout: Mapping[str, int]) -> str | None:
    """Why `statistics` cannot score a model whose domain features have `layout` (block -> size), or None."""
    for block, size in statistics.blocks.items():
        if layout.get(block) != size:
            return (f"its block {block} has {size} features, but the model's has {layout.get(block, 'none')} "
                    f"(blocks {dict(layout)})")
    return None

