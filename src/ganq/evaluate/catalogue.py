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

# the metrics of particular generators, reported beside the distribution metrics above (not columns of the study's
# tables): fidelity of a quantized generator to its fp32 reference on the same inputs, and conditional quality
EXTRA_METRICS: dict[str, Metric] = {m.name: m for m in (
    Metric("psnr_fp32", "PSNR to fp32 (dB)", "PSNR", True, "{:.2f}"),
    Metric("ssim_fp32", "SSIM to fp32", "SSIM", True, "{:.4f}"),
    Metric("intra_fid", "intra-class FID (mean over classes)", "intra-FID", False, "{:.2f}"),
    Metric("psnr_gt", "PSNR to the ground truth (dB)", "PSNR gt", True, "{:.2f}"),
    Metric("ssim_gt", "SSIM to the ground truth", "SSIM gt", True, "{:.4f}"),
    Metric("bicubic_psnr_gt", "bicubic upsampling: PSNR to the ground truth (dB)", "bicubic PSNR", True, "{:.2f}"),
    Metric("bicubic_ssim_gt", "bicubic upsampling: SSIM to the ground truth", "bicubic SSIM", True, "{:.4f}"),
    Metric("bicubic_fid", "bicubic upsampling: FID", "bicubic FID", False, "{:.2f}"),
)}

TARGETS = ("fid", "kid", "precision", "recall", "density", "coverage")  # what --target may name


def metric(name: str) -> Metric:
    if name in EXTRA_METRICS:
        return EXTRA_METRICS[name]
    if name not in METRICS:
        raise GanqError(f"unknown metric {name!r}; known: {', '.join(METRICS)}")
    return METRICS[name]


__all__ = ["METRICS", "EXTRA_METRICS", "Metric", "TARGETS", "metric"]
