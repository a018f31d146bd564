"""report.md and a self-contained index.html (figures embedded as data URIs): per model a table of every row
(mean ± std over the repeats, "≈" where a difference to fp32 is within noise), the smallest file within 10% of the
float FID per method, uniform and mixed, and the study's claims checked."""

from __future__ import annotations

import base64
import html
from pathlib import Path

from ganq._io import write_text_atomic
from ganq.evaluate.catalogue import METRICS
from ganq.report import analysis

SIZE_COLUMNS = [("bytes_file", "file bytes", "{:,}"), ("bytes_ideal", "ideal bytes", "{:,}"),
                ("images_per_s", "img/s (b64)", "{:,.0f}")]
TOLERANCE = 1.10


def stat(r: dict, key: str, ref: dict | None = None) -> str:
    """'6.854 ± 0.052' (std over repeats), '≈' appended when ref is given and the difference is within noise."""
    v = r.get(key)
    if v is None:
        return "-"
    from ganq.evaluate.catalogue import metric

    from ganq.evaluate.catalogue import EXTRA_METRICS

    fmt = metric(key).fmt if key in METRICS or key in EXTRA_METRICS else "{}"
    sd = (r.get("spread") or {}).get(key)
    text = fmt.format(v) + (f" ± {fmt.format(sd)}" if sd is not None else "")
    if ref is not None and ref is not r and analysis.within_noise(r, ref, key):
        text += " ≈"
    return text


def bits_label(r: dict) -> str:
    if r.get("kind") == "mixed":
        return f"mixed {r['bits']:.2f}"
    return "fp32" if r["bits"] == 32 else str(r["bits"])


def _groups(rows):
    models = list(dict.fromkeys(r["model"] for r in rows))
    return [(m, [r for r in rows if r["model"] == m]) for m in models]


def _header():
    return ["method", "bits"] + [m.short for m in METRICS.values()] + [c[1] for c in SIZE_COLUMNS]


def _cells(r, ref):
    return ([r["method"], bits_label(r)] + [stat(r, k, ref) for k in METRICS]
            + ["-" if r.get(k) is None else f.format(r[k]) for k, _, f in SIZE_COLUMNS])


def _smallest_rows(rows):
    out = []
    for e in analysis.smallest_table(rows, TOLERANCE):
        r = e["row"]
        what = "overall" if e["method"] == "any" else f"{e['method']} ({e['kind']})"
        if r is None:
            out.append([e["model"], what, "none within 10%", "-", "-", "-", "-", "-"])
            continue
        out.append([e["model"], what, f"{bits_label(r)} ({r['method']})" if e["method"] == "any" else bits_label(r),
                    f"{r['bytes_file']:,}", f"{r['bytes_file'] / r['bytes_fp32']:.3f}", stat(r, "fid"),
                    stat(r, "precision"), stat(r, "recall")])
    return ["model", "method", "bits", "file bytes", "of fp32", "FID", "precision", "recall"], out


def _claim_rows(rows, archs, method):
    return ["claim", "model", "verdict", "numbers"], [[c["claim"], c["model"], c["verdict"], c["evidence"]]
                                                     for c in analysis.claims(rows, archs, method)]


def _intro(settings: dict) -> str:
    methods = ", ".join(settings.get("methods") or [settings["method"]])
    reps = settings.get("repeats", 1)
    mixed = f"; mixed-precision rows for target {settings['mixed']}" if settings.get("mixed") else ""
    return (f"Format `{settings['format']}`, {settings['granularity']} granularity, methods {methods}"
            f"{', BatchNorm re-estimated' if settings.get('recalibrate_bn') else ''}"
            f"{', BatchNorm folded' if settings['fold_bn'] else ''}{mixed}; {settings['n']:,} generated and "
            f"{settings['n']:,} real images per row, "
            + (f"{reps} evaluation seeds ({settings['seed']}..{settings['seed'] + reps - 1}: latents and real "
               "subset), mean ± std; ≈ marks a difference to fp32 within noise (paired t-test over the seeds, 5%)."
               if reps > 1 else f"latent seed {settings['seed']}, one repeat (no noise estimate)."))


def _claims_method(settings: dict) -> str:
    labels = settings.get("methods") or [settings["method"]]
    return "minmax" if "minmax" in labels else labels[0]


def _failed_lines(failed) -> list[str]:
    return [f"{f['model']} ({f['method']}): {f['error']}" for f in failed or ()]


def markdown(rows, settings: dict, figures: list[str], archs: dict | None = None, failed=()) -> str:
    def table(header, body):
        return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)] + [
            "| " + " | ".join(str(c).replace("|", "\\|") for c in line) + " |" for line in body]

    lines = ["# ganq sweep", "", _intro(settings), ""]
    for m, rs in _groups(rows):
        ref = analysis.float_row(rows, m)
        lines += [f"## {m} ({rs[0]['dataset']})", ""] + table(_header(), [_cells(r, ref) for r in rs]) + [""]
    if failed:
        lines += ["## Mixed-precision rows out of reach", ""] + [f"- {x}" for x in _failed_lines(failed)] + [""]
    lines += ["## Smallest file within 10% of the fp32 FID", ""] + table(*_smallest_rows(rows)) + [""]
    method = _claims_method(settings)
    lines += [f"## The study's claims, checked ({method} rows)", ""] + table(*_claim_rows(rows, archs or {}, method))
    lines += [""] + [f"![{f}]({f})" for f in figures]
    return "\n".join(lines) + "\n"


def index_html(out: Path, rows, settings: dict, figures: list[str], archs: dict | None = None, failed=()) -> str:
    def table(header, body):
        return ("<table><tr>" + "".join(f"<th>{html.escape(h)}</th>" for h in header) + "</tr>"
                + "".join("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in line) + "</tr>"
                          for line in body) + "</table>")

    parts = ["<!doctype html><html><head><meta charset='utf-8'><title>ganq sweep</title><style>",
             "body{font-family:sans-serif;margin:2em;max-width:1600px}table{border-collapse:collapse;margin:1em 0}"
             "td,th{border:1px solid #ccc;padding:3px 8px;text-align:right}td:first-child{text-align:left}"
             "img{max-width:100%;display:block;margin:1em 0}h2{margin-top:1.5em}",
             "</style></head><body><h1>ganq sweep</h1>", f"<p>{html.escape(_intro(settings))}</p>"]
    for m, rs in _groups(rows):
        ref = analysis.float_row(rows, m)
        parts.append(f"<h2>{html.escape(m)} ({html.escape(rs[0]['dataset'])})</h2>"
                     + table(_header(), [_cells(r, ref) for r in rs]))
    if failed:
        parts.append("<h2>Mixed-precision rows out of reach</h2><ul>"
                     + "".join(f"<li>{html.escape(x)}</li>" for x in _failed_lines(failed)) + "</ul>")
    parts.append("<h2>Smallest file within 10% of the fp32 FID</h2>" + table(*_smallest_rows(rows)))
    method = _claims_method(settings)
    parts.append(f"<h2>The study's claims, checked ({html.escape(method)} rows)</h2>"
                 + table(*_claim_rows(rows, archs or {}, method)))
    for f in figures:
        data = base64.b64encode((out / f).read_bytes()).decode()
        parts.append(f"<h2>{html.escape(f)}</h2><img alt='{html.escape(f)}' src='data:image/png;base64,{data}'>")
    parts.append("</body></html>")
    return "\n".join(parts)


def write_pages(out: Path, rows, settings: dict, figures: list[str], archs: dict | None = None, failed=()) -> None:
    write_text_atomic(out / "report.md", markdown(rows, settings, figures, archs, failed))
    write_text_atomic(out / "index.html", index_html(out, rows, settings, figures, archs, failed))
