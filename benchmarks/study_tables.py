"""The README's study tables from a sweep's results.json: per model and method, each metric at each width as
mean ± std over the repeats, "≈" where the difference to fp32 is within noise; then the smallest file within 10% of
the fp32 FID and the claims (the same functions as the sweep's report).

    .venv/bin/python benchmarks/study_tables.py docs/study/results.json > /tmp/tables.md
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from ganq.evaluate.catalogue import METRICS
from ganq.report import analysis
from ganq.report.pages import _claim_rows, _smallest_rows, stat


def main(path: str) -> None:
    d = json.loads(Path(path).read_text())
    rows = d["rows"]
    archs = {m["name"]: m.get("arch", "") for m in d["models"]}
    widths = sorted({r["bits"] for r in rows if r.get("kind") == "uniform" and r["bits"] != 32}, reverse=True)
    print("| model | method | metric | fp32 | " + " | ".join(map(str, widths)) + " | mixed |")
    print("|---|---|---|---|" + "---|" * len(widths) + "---|")
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
                print(f"| {model} | {m} | {METRICS[k].short} | {stat(f, k)} | " + " | ".join(cells) + f" | {mix} |")
            kib = [f"{by[b]['bytes_file'] / 1024:,.0f}" if b in by else "-" for b in widths]
            mix = f"{mixed['bytes_file'] / 1024:,.0f}" if mixed else "-"
            print(f"| {model} | {m} | file KiB | {f['bytes_file'] / 1024:,.0f} | " + " | ".join(kib) + f" | {mix} |")
    for header, body in (_smallest_rows(rows), _claim_rows(rows, archs, "minmax")):
        print()
        print("| " + " | ".join(header) + " |")
        print("|" + "---|" * len(header))
        for line in body:
            print("| " + " | ".join(str(c).replace("|", "\\|") for c in line) + " |")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "docs/study/results.json")
