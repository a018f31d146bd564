"""report.md and a self-contained index.html (figures embedded as data URIs)."""

from __future__ import annotations

import base64
import html
from pathlib import Path

from ganq._io import write_text_atomic

from ganq.evaluate.catalogue import METRICS

COLUMNS = ([("bits", "bits", "{}")] + [(m.name, m.short, m.fmt) for m in METRICS.values()]
           + [("bytes_file", "file bytes", "{:,}"), ("bytes_ideal", "ideal bytes", "{:,}"),
              ("images_per_s", "img/s (b64)", "{:,.0f}")])


def _cell(r, key, fmt):
    v = r.get(key)
    if v is None:
        return "-"
    if key == "bits" and v == 32:
        return "fp32"
    return fmt.format(v)


def _groups(rows):
    models = list(dict.fromkeys(r["model"] for r in rows))
    return [(m, [r for r in rows if r["model"] == m]) for m in models]


def markdown(rows, settings: dict, figures: list[str]) -> str:
    lines = ["# ganq sweep", "",
             f"Format `{settings['format']}`, {settings['granularity']} granularity, method `{settings['method']}`"
             f"{', BatchNorm folded' if settings['fold_bn'] else ''}; {settings['n']:,} generated and "
             f"{settings['n']:,} real images per row, latent seed {settings['seed']}.", ""]
    for m, rs in _groups(rows):
        lines += [f"## {m} ({rs[0]['dataset']})", "",
                  "| " + " | ".join(c[1] for c in COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
        lines += ["| " + " | ".join(_cell(r, k, f) for k, _, f in COLUMNS) + " |" for r in rs]
        lines.append("")
    lines += [f"![{f}]({f})" for f in figures]
    return "\n".join(lines) + "\n"


def index_html(out: Path, rows, settings: dict, figures: list[str]) -> str:
    parts = ["<!doctype html><html><head><meta charset='utf-8'><title>ganq sweep</title><style>",
             "body{font-family:sans-serif;margin:2em;max-width:1400px}table{border-collapse:collapse;margin:1em 0}"
             "td,th{border:1px solid #ccc;padding:3px 8px;text-align:right}img{max-width:100%;display:block;"
             "margin:1em 0}h2{margin-top:1.5em}", "</style></head><body><h1>ganq sweep</h1>",
             f"<p>Format <code>{html.escape(settings['format'])}</code>, {html.escape(settings['granularity'])} "
             f"granularity{', BatchNorm folded' if settings['fold_bn'] else ''}; {settings['n']:,} generated and "
             f"{settings['n']:,} real images per row.</p>"]
    for m, rs in _groups(rows):
        parts.append(f"<h2>{html.escape(m)} ({html.escape(rs[0]['dataset'])})</h2><table><tr>"
                     + "".join(f"<th>{html.escape(c[1])}</th>" for c in COLUMNS) + "</tr>")
        parts += ["<tr>" + "".join(f"<td>{_cell(r, k, f)}</td>" for k, _, f in COLUMNS) + "</tr>" for r in rs]
        parts.append("</table>")
    for f in figures:
        data = base64.b64encode((out / f).read_bytes()).decode()
        parts.append(f"<h2>{html.escape(f)}</h2><img alt='{html.escape(f)}' src='data:image/png;base64,{data}'>")
    parts.append("</body></html>")
    return "\n".join(parts)


def write_pages(out: Path, rows, settings: dict, figures: list[str]) -> None:
    write_text_atomic(out / "report.md", markdown(rows, settings, figures))
    write_text_atomic(out / "index.html", index_html(out, rows, settings, figures))
