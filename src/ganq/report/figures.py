"""The study's figures (matplotlib, Agg): samples per bit width, IS, precision/recall and realism against bits,
and quality against size."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ganq._io import atomic_path

FLOAT_BITS = 32


def _plt():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def _save(fig, path: Path) -> None:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110, bbox_inches="tight")
    _plt().close(fig)


def _by_model(rows):
    models = list(dict.fromkeys(r["model"] for r in rows))
    return models, {m: sorted([r for r in rows if r["model"] == m], key=lambda r: -r["bits"]) for m in models}


def _tile(images: np.ndarray, cols: int = 4) -> np.ndarray:
    """uint8 [n, H, W, C] -> one uint8 [rows*H, cols*W, C] image with 1-pixel gaps."""
    n, h, w, c = images.shape
    rows = int(np.ceil(n / cols))
    out = np.full((rows * (h + 1) - 1, cols * (w + 1) - 1, c), 255, np.uint8)
    for i, im in enumerate(images):
        r, q = divmod(i, cols)
        out[r * (h + 1):r * (h + 1) + h, q * (w + 1):q * (w + 1) + w] = im
    return out


def _bits_label(b):
    return "fp32" if b == FLOAT_BITS else f"{b}-bit"


def fig_samples(rows, samples, reals, path: Path) -> None:
    plt = _plt()
    models, per = _by_model(rows)
    bits = [r["bits"] for r in per[models[0]]]
    fig, axes = plt.subplots(len(models), len(bits) + 1, figsize=(1.6 * (len(bits) + 1), 1.75 * len(models)),
                             squeeze=False)
    for i, m in enumerate(models):
        for j, b in enumerate(bits + ["real"]):
            ax = axes[i][j]
            imgs = reals[m] if b == "real" else samples[(m, b)]
            tile = _tile(imgs)
            ax.imshow(tile[..., 0] if tile.shape[-1] == 1 else tile, cmap="gray", vmin=0, vmax=255)
            ax.set_xticks([])
            ax.set_yticks([])
            if i == 0:
                ax.set_title("real" if b == "real" else _bits_label(b), fontsize=9)
            if j == 0:
                ax.set_ylabel(m, fontsize=8)
    fig.suptitle("Samples per bit width (same latents in every column)", fontsize=11)
    _save(fig, path)


def _panels(rows, series, title, ylabel, path: Path, ref_key=None) -> None:
    """A panel per model: x = bits (float excluded), each (key, label) of series as a line, fp32 dashed."""
    plt = _plt()
    models, per = _by_model(rows)
    fig, axes = plt.subplots(1, len(models), figsize=(4.2 * len(models), 3.4), squeeze=False)
    for ax, m in zip(axes[0], models):
        q = [r for r in per[m] if r["bits"] != FLOAT_BITS]
        f = [r for r in per[m] if r["bits"] == FLOAT_BITS]
        for n, (key, label) in enumerate(series):
            color = f"C{n}"
            xs = [r["bits"] for r in q]
            ys = [np.nan if r[key] is None else r[key] for r in q]
            err = [r.get(f"{key}_std") or 0 for r in q]
            ax.errorbar(xs, ys, yerr=err if any(err) else None, marker="o", color=color, label=label, capsize=3)
            if f and f[0][key] is not None:
                ax.axhline(f[0][key], color=color, linestyle="--", linewidth=1, label=f"{label} (fp32)")
        if ref_key and per[m] and per[m][0][ref_key] is not None:
            ax.axhline(per[m][0][ref_key], color="grey", linestyle=":", linewidth=1, label="real images")
        ax.set_title(f"{m} ({per[m][0]['dataset']})", fontsize=10)
        ax.set_xlabel("weight bits")
        ax.set_ylabel(ylabel)
        ax.invert_xaxis()
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle(title, fontsize=11)
    fig.tight_layout()
    _save(fig, path)


def fig_quality_vs_size(rows, path: Path) -> None:
    plt = _plt()
    models, per = _by_model(rows)
    fig, axes = plt.subplots(1, 3, figsize=(14, 3.8))
    for ax, (key, label) in zip(axes, _labels("precision", "recall", "fid")):
        for n, m in enumerate(models):
            rs = per[m]
            ax.plot([r["bytes_file"] for r in rs], [r[key] for r in rs], "o-", color=f"C{n}", label=f"{m}: file")
            ax.plot([r["bytes_ideal"] for r in rs], [r[key] for r in rs], "s--", color=f"C{n}", alpha=0.6,
                    label=f"{m}: ideal")
            for r in rs:
                ax.annotate(_bits_label(r["bits"]).replace("-bit", ""), (r["bytes_file"], r[key]), fontsize=6,
                            textcoords="offset points", xytext=(2, 3))
        ax.set_xscale("log")
        ax.set_xlabel("model size (bytes, log)")
        ax.set_ylabel(label)
        ax.set_title(f"{label} against size")
        ax.grid(alpha=0.3, which="both")
    axes[0].legend(fontsize=7)
    fig.suptitle("Quality against size (file = bytes on disk; ideal = k bits a weight)", fontsize=11)
    fig.tight_layout()
    _save(fig, path)


def _labels(*names: str) -> list[tuple[str, str]]:
    """(key, label) pairs from the metric catalogue."""
    from ganq.evaluate.catalogue import METRICS

    return [(n, METRICS[n].label) for n in names]


def write_figures(out: Path, rows, samples, reals) -> list[str]:
    fig_samples(rows, samples, reals, out / "fig-samples.png")
    _panels(rows, _labels("inception_score"), "Inception Score against weight bits", "Inception Score",
            out / "fig-inception.png", ref_key="inception_score_real")
    _panels(rows, _labels("precision", "recall"), "k-NN precision and recall against weight bits",
            "precision / recall", out / "fig-precision-recall.png")
    _panels(rows, _labels("realism_precision", "realism_recall"),
            "Realism score against weight bits", "mean realism score", out / "fig-realism.png")
    fig_quality_vs_size(rows, out / "fig-quality-vs-size.png")
    return ["fig-samples.png", "fig-inception.png", "fig-precision-recall.png", "fig-realism.png",
            "fig-quality-vs-size.png"]
