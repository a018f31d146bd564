"""The study's tables from a sweep's results.json: per model and method, each metric at each width as mean ± std
over the repeats, "≈" where the difference to fp32 is within noise; the smallest file within 10% of the fp32 FID
and the claims (the same functions as the sweep's report); and the README's one table (per generator: the best
uniform file and the best overall within 10%).

    .venv/bin/python benchmarks/study_tables.py docs/study/results.json            # print them all
    .venv/bin/python benchmarks/study_tables.py docs/study/results.json --write docs/study.md README.md

--write replaces, in each file, every block between `<!-- study_tables:NAME -->` and `<!-- /study_tables:NAME -->`
(NAME: grid, smallest, claims, front) with the table made now, so the pages never hold hand-copied numbers.
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

from ganq.evaluate.catalogue import METRICS
from ganq.report import analysis
from ganq.report.pages import _claim_rows, _smallest_rows, bits_label, stat


def _md(header, body) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c).replace("|", "\\|") for c in line) + " |" for line in body]
    return "\n".join(lines)


def grid(rows) -> str:
    widths = sorted({r["bits"] for r in rows if r.get("kind") == "uniform" and r["bits"] != 32}, reverse=True)
    out = ["| model | method | metric | fp32 | " + " | ".join(map(str, widths)) + " | mixed |",
           "|---|---|---|---|" + "---|" * len(widths) + "---|"]
    for model in dict.fromkeys(r["model"] for r in rows):
        f = analysis.float_row(rows, model)
        methods = list(dict.fromkeys(r["method"] for r in rows if r["model"] == model and r["method"] != "fp32"))
        for m in methods:
            by = {r["bits"]: r for r in rows if r["model"] == model and r["method"] == m and r.get("kind") == "uniform"}
            mixed = next((r for r in rows if r["model"] == model and r["method"] == m and r.get("kind") == "mixed"),
                         None)
            keys = ["inception_score", "fid", "precision", "recall"] if m == "minmax" else ["fid", "recall"]
            for k in keys:
                cells = [stat(by[b], k, f) if b in by else "-" for b in widths]
                mix = f"{stat(mixed, k, f)} ({mixed['bits']:.2f} b)" if mixed else "-"
                out.append(f"| {model} | {m} | {METRICS[k].short} | {stat(f, k)} | " + " | ".join(cells) + f" | {mix} |")
            kib = [f"{by[b]['bytes_file'] / 1024:,.0f}" if b in by else "-" for b in widths]
            mix = f"{mixed['bytes_file'] / 1024:,.0f}" if mixed else "-"
            out.append(f"| {model} | {m} | file KiB | {f['bytes_file'] / 1024:,.0f} | " + " | ".join(kib) + f" | {mix} |")
    return "\n".join(out)


def front(rows) -> str:
    """Per generator: fp32 FID, the smallest uniform file within 10% (any method), the smallest overall."""
    header = ["generator", "fp32 FID", "best uniform", "best overall", "file bytes", "of fp32", "FID"]
    body = []
    entries = analysis.smallest_table(rows, 1.10)
    for model in dict.fromkeys(e["model"] for e in entries):
        mine = [e for e in entries if e["model"] == model and e["row"] is not None]
        uni = [e["row"] for e in mine if e["kind"] == "uniform" and e["method"] != "any"]
        best_u = min(uni, key=lambda r: r["bytes_file"]) if uni else None
        best = next((e["row"] for e in mine if e["method"] == "any"), None)
        if best is None:
            body.append([model, stat(analysis.float_row(rows, model), "fid"), "none within 10%", "-", "-", "-", "-"])
            continue
        body.append([model, stat(analysis.float_row(rows, model), "fid"),
                     f"{best_u['method']} {bits_label(best_u)} bits, {best_u['bytes_file']:,} B" if best_u else "-",
                     f"{best['method']} {bits_label(best)}", f"{best['bytes_file']:,}",
                     f"{best['bytes_file'] / best['bytes_fp32']:.3f}", stat(best, "fid")])
    return _md(header, body)


def tables(path: str) -> dict[str, str]:
    d = json.loads(Path(path).read_text())
    rows = d["rows"]
    archs = {m["name"]: m.get("arch", "") for m in d["models"]}
    return {"grid": grid(rows), "smallest": _md(*_smallest_rows(rows)),
            "claims": _md(*_claim_rows(rows, archs, "minmax")), "front": front(rows)}


def write(files: list[str], made: dict[str, str]) -> None:
    for f in files:
        text = Path(f).read_text()
        for name, table in made.items():
            text = re.sub(rf"(<!-- study_tables:{name} -->\n).*?(\n<!-- /study_tables:{name} -->)",
                          lambda m: m.group(1) + table + m.group(2), text, flags=re.S)
        Path(f).write_text(text)


if __name__ == "__main__":
    args = sys.argv[1:]
    src = args[0] if args and not args[0].startswith("--") else "docs/study/results.json"
    made = tables(src)
    if "--write" in args:
        write(args[args.index("--write") + 1:], made)
    else:
        print("\n\n".join(made.values()))
