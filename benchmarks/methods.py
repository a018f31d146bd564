"""Every quantization method at 4, 3 and 2 bits, per channel, packed, on the four zoo generators (10,000 generated +
10,000 real images, each data set's zoo classifier): FID, precision, recall and file bytes. One sweep folder per
method under --out (resumable: each cell is cached there), a markdown table on stdout, JSON in --json.

    GANQ_DATA=../shared/data .venv/bin/python benchmarks/methods.py
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from ganq.evaluate import EvalOptions
from ganq.quantize.methods import METHODS
from ganq.study import SweepSettings, sweep

MODELS = ("zoo:mnist-fc4@mnist", "zoo:mnist-cnn5@mnist", "zoo:fashion-mnist-cnn3@fashion-mnist",
          "zoo:cifar10-jpeg-cnn3@cifar10-jpeg")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--methods", default=",".join(METHODS.names()))
    ap.add_argument("--models", default=",".join(MODELS), help="MODEL@DATASET,... (default: the four zoo generators)")
    ap.add_argument("--bits", default="4,3,2")
    ap.add_argument("--n", type=int, default=10000)
    ap.add_argument("--granularity", default="channel")
    ap.add_argument("--out", default="runs/bench-methods")
    ap.add_argument("--json", default="benchmarks/results/methods.json")
    args = ap.parse_args()
    bits = tuple(int(b) for b in args.bits.split(","))
    rows = []
    for method in args.methods.split(","):
        cls = METHODS.get(method)
        widths = tuple(b for b in bits if cls.min_bits <= b <= cls.max_bits)
        settings = SweepSettings(bits=((32,) if method == "minmax" else ()) + widths, format="packed",
                                 granularity=args.granularity, method=method, n=args.n, speed=False,
                                 eval=EvalOptions(n=args.n))
        t0 = time.perf_counter()
        r = sweep(args.models.split(","), settings, Path(args.out) / method)
        print(f"{method}: {time.perf_counter() - t0:.0f} s", flush=True)
        rows += [{k: x[k] for k in ("model", "method", "bits", "fid", "precision", "recall", "bytes_file",
                                    "bytes_ideal")} for x in r["rows"]]
    fp32 = {x["model"]: x for x in rows if x["bits"] == 32}
    print("\n| model | bits | " + " | ".join(args.methods.split(",")) + " |")
    print("|---|---|" + "---|" * len(args.methods.split(",")))
    for model in dict.fromkeys(x["model"] for x in rows):
        if model in fp32:
            f = fp32[model]
            print(f"| {model} | fp32 | FID {f['fid']:.1f}, P {f['precision']:.3f}, R {f['recall']:.3f}, "
                  f"{f['bytes_file'] / 1024:,.0f} KiB |" + " |" * (len(args.methods.split(",")) - 1))
        for b in bits:
            cells = []
            for method in args.methods.split(","):
                x = next((x for x in rows if x["model"] == model and x["method"] == method and x["bits"] == b), None)
                cells.append("-" if x is None else f"{x['fid']:.1f} / {x['precision']:.2f} / {x['recall']:.2f} / "
                                                   f"{x['bytes_file'] / 1024:,.0f}K")
            print(f"| {model} | {b} | " + " | ".join(cells) + " |")
    out = Path(args.json)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"settings": vars(args), "rows": rows}, indent=1) + "\n")
    print(f"wrote {out}  (cells: FID / precision / recall / packed file)")


if __name__ == "__main__":
    main()
