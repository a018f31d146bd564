"""Issue 23's zoo table from benchmarks/distill.py's JSON files: per generator and bits, the best layer-wise method
against distill (pixel, and pixel + classifier features), FID in both feature spaces (× fp32), precision, recall,
bytes, seconds. Prints markdown.

    .venv/bin/python benchmarks/distill_table.py benchmarks/results/distill_mnist-fc4.json ...
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

LABELS = {"distill-pixel": "distill, pixel loss", "distill-feature": "distill, pixel + classifier features"}


def main():
    print("| generator | bits | method | FID (classifier) | × fp32 | FID (judge) | × fp32 | precision | recall | "
          "bytes | seconds |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for f in sys.argv[1:]:
        d = json.loads(Path(f).read_text())
        rows = d["rows"]
        fp = next(r for r in rows if r["bits"] == 32)
        name = d["model"].removeprefix("zoo:")
        print(f"| {name} | fp32 | | {fp['fid_clf']:.2f} | 1 | {fp['fid_judge']:.2f} | 1 | {fp['precision_clf']:.3f} "
              f"| {fp['recall_clf']:.3f} | | |")
        for bits in sorted({r["bits"] for r in rows if r["bits"] != 32}, reverse=True):
            group = [r for r in rows if r["bits"] == bits]
            best = min(r["fid_clf"] for r in group)
            for r in group:
                label = LABELS.get(r["setting"], f"`{r['setting']}` (layer-wise)")
                fid = f"{r['fid_clf']:.2f}"
                fid = f"**{fid}**" if r["fid_clf"] == best else fid
                print(f"| | {bits} | {label} | {fid} | {r['fid_clf'] / fp['fid_clf']:.2f} | {r['fid_judge']:.2f} | "
                      f"{r['fid_judge'] / fp['fid_judge']:.2f} | {r['precision_clf']:.3f} | {r['recall_clf']:.3f} | "
                      f"{r['bytes']:,} | {r['seconds']:.0f} |")


if __name__ == "__main__":
    main()
