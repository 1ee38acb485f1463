"""How much an image looks like the training images: a Mahalanobis distance on pooled backbone features.

A model trained on generated scenes of coloured shapes still writes a fluent
caption for a holiday photo, and the caption is nonsense. Following Lee et al.
(2018, "A Simple Unified Framework for Detecting Out-of-Distribution Samples and
Adversarial Attacks"), the pooled backbone features of the training images are
summarised by one Gaussian, their mean vector and covariance, and an image is
scored by its Mahalanobis distance to that mean,

    d(x) = sqrt((x - mean)^T precision (x - mean)),   precision = inverse(shrunk covariance).

One Gaussian, not one per class as in the paper: captions have no classes.

The sample covariance of a few thousand 512-dimensional features is nearly
singular (dead ReLU channels have no variance at all), so it is shrunk towards a
multiple of the identity with the Ledoit-Wolf (2004) coefficient, and more if
needed for its condition number to stay at most `MAX_CONDITION`:

    shrunk = (1 - a) * sample + a * (trace(sample) / C) * I.

The threshold is the distance above which an image is called out of domain; it
is calibrated on held-out images (`calibrate_threshold`). The reply's score is

    domain_score = 1 / (1 + (d / threshold) ** 4),

1 at the training mean, 0.5 at the threshold, towards 0 far away; `in_domain` is
d <= threshold, the same as domain_score >= 0.5. The fourth power makes the score
fall quickly around the threshold: 0.94 at half the threshold, 0.06 at twice it.

Everything is computed in float64 on the CPU from fp32 features (the pooled
vector is cast to fp32 before it is averaged, whatever precision the encoder ran
in), row by row, so an image's score does not depend on the other images of its
batch. Pure PyTorch; `model/export_format.py` writes and reads the statistics.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import Any, Mapping

import torch

MAX_CONDITION = 1e4  # largest eigenvalue over smallest of the shrunk covariance
SCORE_POWER = 4  # domain_score = 1 / (1 + (d / threshold) ** SCORE_POWER)
DEFAULT_QUANTILE = 0.99  # of the held-out images' distances ...
DEFAULT_SAFETY = 1.25  # ... times this is the threshold (see `calibrate_threshold`)
FORMAT = "captioner-domain-v1"  # safetensors metadata of domain.safetensors


@dataclass(frozen=True, eq=False)
class DomainStatistics:
    """What serving needs to score an image, and where it came from.

    Args:
        mean: (C,) mean pooled feature of the fitting images, fp32.
        precision: (C, C) inverse of the shrunk covariance, symmetric, fp32.
        threshold: the distance at which `domain_score` is 0.5; above it an image is out of domain.
        shrinkage: the weight `a` of the identity in the shrunk covariance.
        fitted_on: how many images the mean and covariance were computed from.
        calibration: how the threshold was chosen (quantile, safety factor, the held-out sets and
            their distances), plain JSON values.
    """

    mean: torch.Tensor
    precision: torch.Tensor
    threshold: float
    shrinkage: float
    fitted_on: int
    calibration: Mapping[str, Any] = field(default_factory=dict)

    @property
    def feature_size(self) -> int:
        return int(self.mean.shape[0])

    def with_threshold(self, threshold: float, calibration: Mapping[str, Any]) -> "DomainStatistics":
        return DomainStatistics(self.mean, self.precision, float(threshold), self.shrinkage, self.fitted_on,
                                dict(calibration))

    def to_tensors(self) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
        """The safetensors content: tensors and string metadata (floats written so they read back exactly)."""
        tensors = {
            "mean": self.mean.detach().to("cpu", torch.float32).contiguous(),
            "precision": self.precision.detach().to("cpu", torch.float32).contiguous(),
            "threshold": torch.tensor([self.threshold], dtype=torch.float64),
            "shrinkage": torch.tensor([self.shrinkage], dtype=torch.float64),
        }
        metadata = {"format": FORMAT, "fitted_on": str(self.fitted_on), "calibration": json.dumps(self.calibration)}
        return tensors, metadata

    @classmethod
    def from_tensors(cls, tensors: Mapping[str, torch.Tensor], metadata: Mapping[str, str] | None) -> "DomainStatistics":
        """Rebuild from `to_tensors`' content; a missing or misshapen entry is a ValueError saying which."""
        metadata = metadata or {}
        if metadata.get("format") != FORMAT:
            raise ValueError(f"not domain statistics of format {FORMAT} (metadata format {metadata.get('format')!r})")
        missing = sorted({"mean", "precision", "threshold", "shrinkage"} - set(tensors))
        if missing:
            raise ValueError(f"lacks {', '.join(missing)}")
        mean, precision = tensors["mean"], tensors["precision"]
        size = mean.shape[0] if mean.dim() == 1 else -1
        if size < 1 or tuple(precision.shape) != (size, size):
            raise ValueError(f"mean {tuple(mean.shape)} and precision {tuple(precision.shape)} do not fit together")
        threshold = float(tensors["threshold"].reshape(-1)[0])
        if not math.isfinite(threshold) or threshold <= 0:
            raise ValueError(f"threshold must be a positive number, got {threshold}")
        return cls(mean, precision, threshold, float(tensors["shrinkage"].reshape(-1)[0]),
                   int(metadata.get("fitted_on", 0)), json.loads(metadata.get("calibration", "{}")))


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


def fit_domain_statistics(features: torch.Tensor, *, max_condition: float = MAX_CONDITION) -> DomainStatistics:
    """Mean and precision of (N, C) pooled features; the threshold is set later by `calibrate_threshold`.

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
        raise ValueError("the fitting images' features are all the same; fit on more (and different) images")
    largest = float(eigenvalues[-1])
    conditioned = largest / (largest + (max_condition - 1) * scale)
    shrinkage = min(1.0, max(ledoit_wolf_shrinkage(centred), conditioned))
    shrunk = (1 - shrinkage) * sample + shrinkage * scale * torch.eye(sample.shape[0], dtype=sample.dtype)
    values, vectors = torch.linalg.eigh(shrunk)
    precision = (vectors / values) @ vectors.T  # V diag(1/l) V^T
    precision = (precision + precision.T) / 2  # exactly symmetric
    return DomainStatistics(mean.float(), precision.float(), threshold=math.inf, shrinkage=shrinkage,
                            fitted_on=int(features.shape[0]))


def mahalanobis_distances(features: torch.Tensor, mean: torch.Tensor, precision: torch.Tensor) -> torch.Tensor:
    """(B, C) features -> (B,) float64 distances, each row computed on its own (batch-independent)."""
    rows = features.detach().to("cpu", torch.float64) - mean.to(torch.float64)  # (B, C)
    matrix = precision.to(torch.float64)
    squared = [row @ matrix @ row for row in rows]  # one vector-matrix product per row: no batch-shaped kernel
    return torch.stack(squared).clamp(min=0).sqrt() if squared else torch.zeros(0, dtype=torch.float64)


def domain_score(distance: float, threshold: float) -> float:
    """1 / (1 + (d / threshold) ** 4): 1 at the mean, 0.5 at the threshold, 0 far away."""
    return 1.0 / (1.0 + (distance / threshold) ** SCORE_POWER)


def calibrate_threshold(held_out: Mapping[str, torch.Tensor], *, quantile: float = DEFAULT_QUANTILE,
                        safety: float = DEFAULT_SAFETY) -> tuple[float, dict[str, Any]]:
    """The threshold: `safety` times the largest, over the held-out sets, of each set's `quantile` of distances.

    Each set's own quantile, not the quantile of all together, so that a small
    set (a second renderer, say) is not outvoted by a large one: at least
    `quantile` of every set is below its quantile, and the safety factor leaves
    room for new images that land a little further out than the held-out ones
    (on the default export the largest of 300 own held-out distances was 1.06 times
    their 99th percentile, and a fresh draw of 300 scenes stayed all inside;
    README "Domain score" has the figures).
    Returns the threshold and a record of the calibration for the export.
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


@dataclass(frozen=True)
class DomainVerdict:
    """One image's score and flag; both None when the export has no domain statistics."""

    score: float | None
    in_domain: bool | None
    distance: float | None = None


UNKNOWN = DomainVerdict(None, None)


class DomainScorer:
    """Scores pooled features against fitted statistics."""

    def __init__(self, statistics: DomainStatistics) -> None:
        self.statistics = statistics
        self.mean = statistics.mean.to(torch.float64)
        self.precision = statistics.precision.to(torch.float64)

    def distances(self, pooled: torch.Tensor) -> torch.Tensor:
        return mahalanobis_distances(pooled, self.mean, self.precision)

    def __call__(self, pooled: torch.Tensor) -> list[DomainVerdict]:
        """(B, C) pooled backbone features -> one verdict per row."""
        threshold = self.statistics.threshold
        return [DomainVerdict(domain_score(d, threshold), d <= threshold, d) for d in self.distances(pooled).tolist()]

    def describe(self) -> str:
        s = self.statistics
        return f"domain statistics loaded (fitted on {s.fitted_on} images, {s.feature_size} features, " \
               f"threshold {s.threshold:.3f})"


class NoDomainScorer:
    """An export without domain statistics: every verdict is unknown (the reply's fields are null)."""

    statistics = None

    def __call__(self, pooled: torch.Tensor) -> list[DomainVerdict]:
        return [UNKNOWN] * pooled.shape[0]

    def describe(self) -> str:
        return "no domain statistics (replies carry domain_score null)"


def domain_scorer(statistics: DomainStatistics | None) -> DomainScorer | NoDomainScorer:
    """The scorer for an export's statistics, or the one that answers unknown when it has none."""
    return NoDomainScorer() if statistics is None else DomainScorer(statistics)

