"""Summaries of timing samples: latency percentiles and medians over repeated runs."""

from __future__ import annotations

import statistics
from dataclasses import dataclass, field
from typing import Any, Sequence

from ops.load import latency_ms


def latency_summary(seconds: Sequence[float]) -> dict[str, float]:
    """p50/p90/p99 and mean of `seconds`, in milliseconds, computed as for the soak and the drill."""
    return latency_ms(seconds)


@dataclass
class Run:
    """One timed run: `images` captioned in `wall_s`, with one latency sample per request or batch."""

    images: int
    wall_s: float
    latencies_s: list[float]
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def images_per_s(self) -> float:
        return self.images / self.wall_s if self.wall_s > 0 else float("nan")

    def summary(self) -> dict[str, Any]:
        return {
            "images": self.images,
            "wall_s": round(self.wall_s, 4),
            "images_per_s": round(self.images_per_s, 3),
            "latency_ms": latency_summary(self.latencies_s),
            **self.extra,
        }


def median_of_runs(runs: Sequence[Run]) -> dict[str, Any]:
    """Medians over repeated runs of throughput, of each latency percentile and of numeric extras.

    Each figure is the median of that figure over the runs (so p99 is the
    median run's p99, not the p99 of pooled samples).
    """
    summaries = [run.summary() for run in runs]
    result: dict[str, Any] = {
        "images_per_s": round(statistics.median(s["images_per_s"] for s in summaries), 3),
        "latency_ms": {
            key: round(statistics.median(s["latency_ms"][key] for s in summaries), 2)
            for key in summaries[0]["latency_ms"]
        },
    }
    for key, value in summaries[0].items():
        if key == "errors":
            result[key] = sum(s[key] for s in summaries)  # every failure counts, not the median run's
        elif key not in result and key not in ("images", "wall_s") and isinstance(value, (int, float)):
            result[key] = round(statistics.median(s[key] for s in summaries), 4)
    result["runs"] = summaries
    return result
