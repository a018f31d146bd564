"""What the sweep's rows say: noise-aware comparisons with the float row, the Pareto front of size against quality,
the smallest file within a quality tolerance, and the study's claims checked one by one.

Noise. Every row is measured at the same evaluation seeds (latents and real subset), so a row and the float row are
compared seed by seed: the difference d_r = row_r - fp32_r has mean D and standard deviation s over R seeds, and D is
*within noise* when |D| <= t(0.975, R-1) * s / sqrt(R) (a paired t-test at 5%). With one repeat nothing is within
noise (there is no estimate of it) and verdicts say "no repeats".
"""

from __future__ import annotations

import math

import numpy as np

FLOAT_BITS = 32


def _t975(df: int) -> float:
    from scipy.stats import t
    return float(t.ppf(0.975, df))


def diff(row: dict, ref: dict, key: str) -> tuple[float, float | None]:
    """(mean of row - ref over paired seeds, its half-width at 95%; None without repeats)."""
    a = [p[key] for p in row.get("per_seed", [])]
    b = [p[key] for p in ref.get("per_seed", [])]
    if not a or len(a) != len(b) or any(v is None for v in a + b) or row.get("seeds") != ref.get("seeds"):
        if row.get(key) is None or ref.get(key) is None:
            return float("nan"), None
        return float(row[key] - ref[key]), None
    d = np.asarray(a, float) - np.asarray(b, float)
    if len(d) < 2:
        return float(d.mean()), None
    return float(d.mean()), _t975(len(d) - 1) * float(d.std(ddof=1)) / math.sqrt(len(d))


def within_noise(row: dict, ref: dict, key: str) -> bool | None:
    """True when row's `key` differs from ref's by less than the noise; None when there are no repeats."""
    d, half = diff(row, ref, key)
    if half is None or math.isnan(d):
        return None
    return abs(d) <= half


def float_row(rows: list[dict], model: str) -> dict | None:
    return next((r for r in rows if r["model"] == model and r["bits"] == FLOAT_BITS), None)


def pareto_front(rows: list[dict], key: str = "fid", higher_is_better: bool = False) -> list[dict]:
    """The rows no other row beats in both file bytes and `key` (by mean), by size ascending."""
    sign = -1 if higher_is_better else 1
    pts = sorted((r for r in rows if r.get(key) is not None), key=lambda r: (r["bytes_file"], sign * r[key]))
    front, best = [], math.inf
    for r in pts:
        if sign * r[key] < best:
            front.append(r)
            best = sign * r[key]
    return front


def smallest_within(rows: list[dict], model: str, tolerance: float = 1.10, method: str | None = None) -> dict | None:
    """The smallest file of `model` (of one method, or any) whose mean FID is at most tolerance x the float row's."""
    f = float_row(rows, model)
    if f is None:
        return None
    cand = [r for r in rows if r["model"] == model and r["bits"] != FLOAT_BITS
            and (method is None or r["method"] == method) and r["fid"] <= tolerance * f["fid"]]
    return min(cand, key=lambda r: (r["bytes_file"], r["fid"])) if cand else None


def smallest_table(rows: list[dict], tolerance: float = 1.10) -> list[dict]:
    """Per model and method: the smallest uniform file and the mixed one within tolerance x fp32 FID."""
    out = []
    for model in dict.fromkeys(r["model"] for r in rows):
        methods = list(dict.fromkeys(r["method"] for r in rows if r["model"] == model and r["method"] != "fp32"))
        for m in methods:
            for kind in ("uniform", "mixed"):
                rs = [r for r in rows if r["model"] == model and (r["bits"] == FLOAT_BITS or
                                                                  (r["method"] == m and r.get("kind") == kind))]
                if kind == "mixed" and not any(r.get("kind") == "mixed" for r in rs):
                    continue
                best = smallest_within(rs, model, tolerance)
                out.append({"model": model, "method": m, "kind": kind, "row": best})
        best = smallest_within(rows, model, tolerance)
        out.append({"model": model, "method": "any", "kind": "any", "row": best})
    return out


# --- the study's claims ------------------------------------------------------------------------------------------

def _rows_of(rows, model, method):
    return {r["bits"]: r for r in rows if r["model"] == model and r.get("kind", "uniform") == "uniform"
            and (r["method"] == method or r["bits"] == FLOAT_BITS)}


def _fmt_d(d, half):
    return f"{d:+.3f}" + (f" ± {half:.3f}" if half is not None else "")


def _claim_is(model, by_bits, tol=0.05):
    f = by_bits.get(FLOAT_BITS)
    widths = sorted((b for b in by_bits if b != FLOAT_BITS and b >= 5), reverse=True)
    if f is None or not widths or f.get("inception_score") is None:
        return None
    parts, held, noise = [], True, 0
    for b in widths:
        d, half = diff(by_bits[b], f, "inception_score")
        rel = d / f["inception_score"]
        parts.append(f"{b}-bit {by_bits[b]['inception_score']:.3f} ({rel:+.1%})")
        if half is not None and abs(d) <= half:
            noise += 1
        elif rel < -tol:
            held = False
    verdict = "confirmed" if held else "refuted"
    if held and noise == len(widths):
        verdict = "confirmed (within noise)"
    return {"claim": "IS holds to 5 bits", "model": model, "verdict": verdict,
            "evidence": f"fp32 {f['inception_score']:.3f}; " + ", ".join(parts) + f"; holds = within {tol:.0%} "
                        "or within noise"}


def _onset(by_bits, key, drop):
    """The widest width whose `key` is below fp32 by at least `drop` and beyond noise; None if none."""
    f = by_bits[FLOAT_BITS]
    for b in sorted((b for b in by_bits if b != FLOAT_BITS), reverse=True):
        d, half = diff(by_bits[b], f, key)
        if -d >= drop and (half is None or abs(d) > half):
            return b
    return None


def _claim_precision_sharp(model, by_bits, drop=0.05):
    f = by_bits.get(FLOAT_BITS)
    if f is None or 5 not in by_bits:
        return None
    ev = []
    for b in (8, 6, 5):
        if b in by_bits:
            d, half = diff(by_bits[b], f, "precision")
            ev.append(f"{b}-bit {by_bits[b]['precision']:.3f} ({_fmt_d(d, half)})")
    d5, half5 = diff(by_bits[5], f, "precision")
    if half5 is not None and abs(d5) <= half5:
        verdict = "within noise"
    elif -d5 >= drop:
        verdict = "confirmed"
    else:
        verdict = "refuted"
    onset = _onset(by_bits, "precision", drop)
    return {"claim": "precision falls sharply at 6–5 bits", "model": model, "verdict": verdict,
            "evidence": f"fp32 {f['precision']:.3f}; " + ", ".join(ev) + f"; first fall of ≥ {drop} beyond noise: "
                        + (f"{onset} bits" if onset else "none")}


def _claim_together(model, by_bits, drop=0.05):
    if FLOAT_BITS not in by_bits:
        return None
    p, r = _onset(by_bits, "precision", drop), _onset(by_bits, "recall", drop)
    if p is None and r is None:
        verdict = "within noise"
    elif p == r:
        verdict = "confirmed"
    else:
        verdict = "refuted"
    lab = lambda b: f"{b} bits" if b else "never"  # noqa: E731
    return {"claim": "precision and recall fall together", "model": model, "verdict": verdict,
            "evidence": f"first width where each falls by ≥ {drop} beyond noise: precision {lab(p)}, recall "
                        f"{lab(r)}"}


def _ratio(row, ref, key="fid"):
    """Per-seed row/ref ratios of key: (mean, std over seeds or None without repeats, number of seeds)."""
    a = [p[key] for p in row.get("per_seed", [])]
    b = [p[key] for p in ref.get("per_seed", [])]
    if a and len(a) == len(b) and row.get("seeds") == ref.get("seeds"):
        q = np.asarray(a, float) / np.asarray(b, float)
        return float(q.mean()), (float(q.std(ddof=1)) if len(q) > 1 else None), len(q)
    return row[key] / ref[key], None, 1


def _claim_fc(rows, method, archs, bits=4):
    """FC against CNN at 4 bits, per data set with both: FID's ratio to fp32 and precision's drop."""
    out = []
    for ds in dict.fromkeys(r["dataset"] for r in rows):
        models = list(dict.fromkeys(r["model"] for r in rows if r["dataset"] == ds))
        fc = [m for m in models if archs.get(m, "").startswith("fc")]
        cnn = [m for m in models if archs.get(m, "").startswith("cnn")]
        for a in fc:
            for c in cnn:
                ba, bc = _rows_of(rows, a, method), _rows_of(rows, c, method)
                if bits not in ba or bits not in bc or FLOAT_BITS not in ba or FLOAT_BITS not in bc:
                    continue
                (ra, sa, na), (rc, sc, nc) = _ratio(ba[bits], ba[FLOAT_BITS]), _ratio(bc[bits], bc[FLOAT_BITS])
                if sa is None or sc is None:
                    verdict = ("confirmed" if ra < rc else "refuted") + " (no repeats)"
                else:
                    half = _t975(max(1, min(na, nc) - 1)) * math.sqrt(sa ** 2 / na + sc ** 2 / nc)
                    verdict = "within noise" if abs(ra - rc) <= half else ("confirmed" if ra < rc else "refuted")
                da, ha = diff(ba[bits], ba[FLOAT_BITS], "precision")
                dc, hc = diff(bc[bits], bc[FLOAT_BITS], "precision")
                out.append({"claim": "FC more robust than CNN at 4 bits", "model": f"{a} vs {c}", "verdict": verdict,
                            "evidence": f"FID at 4 bits / fp32: {a} {ra:.3f}" + (f" ± {sa:.3f}" if sa else "")
                                        + f", {c} {rc:.3f}" + (f" ± {sc:.3f}" if sc else "")
                                        + f"; precision change: {a} {_fmt_d(da, ha)}, {c} {_fmt_d(dc, hc)}"})
    return out


def claims(rows: list[dict], archs: dict[str, str], method: str = "minmax") -> list[dict]:
    """The study's four claims, checked on `method`'s rows (the study's own method is minmax): a row per claim and
    model (for the last, per FC/CNN pair on one data set) with a verdict and its numbers."""
    out = []
    models = list(dict.fromkeys(r["model"] for r in rows))
    for check in (_claim_is, _claim_precision_sharp, _claim_together):
        for m in models:
            c = check(m, _rows_of(rows, m, method))
            if c:
                out.append(c)
    out += _claim_fc(rows, method, archs)
    return out


__all__ = ["diff", "within_noise", "pareto_front", "smallest_within", "smallest_table", "claims", "float_row"]
