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
    """The first method's widths (and the float row), the same latents in every column."""
    plt = _plt()
    first = next((r["method"] for r in rows if r["method"] != "fp32"), "fp32")
    rows = [r for r in rows if r.get("kind", "uniform") == "uniform" and r["method"] in ("fp32", first)]
    models, per = _by_model(rows)
    bits = [r["bits"] for r in per[models[0]]]
    method_of = {(r["model"], r["bits"]): r["method"] for r in rows}
    fig, axes = plt.subplots(len(models), len(bits) + 1, figsize=(1.6 * (len(bits) + 1), 1.75 * len(models)),
                             squeeze=False)
    for i, m in enumerate(models):
        for j, b in enumerate(bits + ["real"]):
            ax = axes[i][j]
            imgs = reals[m] if b == "real" else samples[(m, method_of[(m, b)], b)]
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


def _uniform(rows, model, method):
    return sorted([r for r in rows if r["model"] == model and r["method"] == method
                   and r.get("kind", "uniform") == "uniform"], key=lambda r: -r["bits"])


def _methods(rows):
    return list(dict.fromkeys(r["method"] for r in rows if r["method"] != "fp32"))


def _sd(r, key):
    return (r.get("spread") or {}).get(key) or 0.0


def _panels(rows, series, title, ylabel, path: Path, ref_key=None) -> None:
    """A panel per model: x = bits; a colour per method, a line style per metric of `series`, the band = ± one std
    over the repeats; fp32 as a horizontal line with its band."""
    from ganq.report.analysis import within_noise

    plt = _plt()
    models, per = _by_model(rows)
    methods = _methods(rows)
    styles = ["-", "--", ":", "-."]
    fig, axes = plt.subplots(1, len(models), figsize=(4.4 * len(models), 3.6), squeeze=False)
    for ax, m in zip(axes[0], models):
        f = next((r for r in per[m] if r["bits"] == FLOAT_BITS), None)
        for j, (key, label) in enumerate(series):
            for n, meth in enumerate(methods):
                q = [r for r in _uniform(rows, m, meth) if r["bits"] != FLOAT_BITS and r[key] is not None]
                if not q:
                    continue
                xs = np.array([r["bits"] for r in q], float)
                ys = np.array([r[key] for r in q], float)
                sd = np.array([_sd(r, key) for r in q])
                name = label if len(methods) == 1 else f"{label}, {meth}"
                ax.plot(xs, ys, marker="o", markersize=3, linestyle=styles[j % 4], color=f"C{n}", label=name)
                quiet = [within_noise(r, f, key) is True for r in q] if f is not None else [False] * len(q)
                if any(quiet):  # a hollow ring: within noise of fp32
                    ax.plot(xs[quiet], ys[quiet], "o", markersize=7, markerfacecolor="white", color=f"C{n}",
                            linestyle="none")
                if sd.any():
                    ax.fill_between(xs, ys - sd, ys + sd, color=f"C{n}", alpha=0.18, linewidth=0)
            if f is not None and f[key] is not None:
                ax.axhline(f[key], color="black", linestyle=styles[j % 4], linewidth=0.9, label=f"{label} (fp32)")
                if _sd(f, key):
                    ax.axhspan(f[key] - _sd(f, key), f[key] + _sd(f, key), color="black", alpha=0.08)
        if ref_key and f is not None and f.get(ref_key) is not None:
            ax.axhline(f[ref_key], color="grey", linestyle=":", linewidth=1, label="real images")
        widths = sorted({r["bits"] for r in per[m] if r["bits"] != FLOAT_BITS and r.get("kind", "uniform") == "uniform"})
        ax.set_xticks(widths)
        ax.set_title(f"{m} ({per[m][0]['dataset']})", fontsize=10)
        ax.set_xlabel("weight bits")
        ax.set_ylabel(ylabel)
        ax.invert_xaxis()
        ax.grid(alpha=0.3)
        ax.legend(fontsize=6)
    reps = max(r.get("repeats", 1) for r in rows)
    fig.suptitle(title + (f" (bands: ± 1 std over {reps} seeds; rings: within noise of fp32)" if reps > 1 else ""),
                 fontsize=11)
    fig.tight_layout()
    _save(fig, path)


def fig_quality_vs_size(rows, path: Path) -> None:
    """Rows: FID, precision, recall; columns: models. Each method's widths as a line (x = file bytes), its
    mixed-precision row as a star, the float model as a square, the Pareto front over all of them as a grey step."""
    from ganq.evaluate.catalogue import METRICS
    from ganq.report.analysis import pareto_front

    plt = _plt()
    models, per = _by_model(rows)
    methods = _methods(rows)
    keys = _labels("fid", "precision", "recall")
    fig, axes = plt.subplots(len(keys), len(models), figsize=(4.4 * len(models), 3.2 * len(keys)), squeeze=False)
    for col, m in enumerate(models):
        for row_i, (key, label) in enumerate(keys):
            ax = axes[row_i][col]
            for n, meth in enumerate(methods):
                q = [r for r in _uniform(rows, m, meth) if r[key] is not None]
                if q:
                    ax.errorbar([r["bytes_file"] for r in q], [r[key] for r in q],
                                yerr=[_sd(r, key) for r in q], fmt="o-", markersize=3, capsize=2, color=f"C{n}",
                                label=meth)
                    for r in q:
                        ax.annotate(str(r["bits"]), (r["bytes_file"], r[key]), fontsize=6,
                                    textcoords="offset points", xytext=(2, 3))
                mx = [r for r in per[m] if r["method"] == meth and r.get("kind") == "mixed"]
                for r in mx:
                    ax.errorbar([r["bytes_file"]], [r[key]], yerr=[_sd(r, key)], fmt="*", markersize=11,
                                color=f"C{n}", markeredgecolor="black", label=f"{meth} mixed {r['bits']:.2f} b")
            f = [r for r in per[m] if r["bits"] == FLOAT_BITS]
            if f:
                ax.plot([f[0]["bytes_file"]], [f[0][key]], "ks", label="fp32")
            front = pareto_front(per[m], key, METRICS[key].higher_is_better)
            if len(front) > 1:
                ax.step([r["bytes_file"] for r in front], [r[key] for r in front], where="post", color="grey",
                        linewidth=2.5, alpha=0.45, label="Pareto front", zorder=0)
            ax.set_xscale("log")
            if key == "fid":
                ax.set_yscale("log")
            _kib_axis(ax)
            ax.set_xlabel("file size (log)")
            ax.set_ylabel(label)
            if row_i == 0:
                ax.set_title(f"{m} ({per[m][0]['dataset']})", fontsize=10)
            ax.grid(alpha=0.3, which="both")
            if row_i == 0:
                ax.legend(fontsize=6)
    fig.suptitle("Quality against file size: every method, mixed precision (stars), the Pareto front (grey)",
                 fontsize=11)
    fig.tight_layout()
    _save(fig, path)


def _kib_axis(ax) -> None:
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    ax.xaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))

    ax.xaxis.set_major_formatter(FuncFormatter(lambda x, _: f"{x / 1024:,.0f} KiB" if x < 2 ** 20
                                               else f"{x / 2 ** 20:,.1f} MiB"))
    ax.xaxis.set_minor_formatter(NullFormatter())


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
