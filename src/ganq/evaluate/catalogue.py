"""The one catalogue of metric names: label, direction (which way is better) and format, for the CLI tables,
the sweep's report and figures, and quality targets (`ganq quantize --target fid=1.10`)."""

from __future__ import annotations

from dataclasses import dataclass

from ganq.errors import GanqError


@dataclass(frozen=True)
class Metric:
    name: str
    label: str       # long label (CLI tables)
    short: str       # column label (reports)
    higher_is_better: bool
    fmt: str


METRICS: dict[str, Metric] = {m.name: m for m in (
    Metric("inception_score", "Inception Score", "IS", True, "{:.3f}"),
    Metric("fid", "FID", "FID", False, "{:.2f}"),
    Metric("kid", "KID", "KID", False, "{:.4f}"),
    Metric("precision", "precision", "precision", True, "{:.3f}"),
    Metric("recall", "recall", "recall", True, "{:.3f}"),
    Metric("realism_precision", "realism precision", "realism P", True, "{:.3f}"),
    Metric("realism_recall", "realism recall", "realism R", True, "{:.3f}"),
    Metric("density", "density", "density", True, "{:.3f}"),
    Metric("coverage", "coverage", "coverage", True, "{:.3f}"),
)}

TARGETS = ("fid", "kid", "precision", "recall", "density", "coverage")  # what --target may name


def metric(name: str) -> Metric:
    if name not in METRICS:
        raise GanqError(f"unknown metric {name!r}; known: {', '.join(METRICS)}")
    return METRICS[name]


__all__ = ["METRICS", "Metric", "TARGETS", "metric"]
