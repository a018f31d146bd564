"""For trained generators: every format at k = 8..3, the file size against fp32 and the ideal k-bit size, and the
largest output difference to the fp32 model on 256 latents (and between formats, which hold identical weights).

    .venv/bin/python benchmarks/format_sizes.py zoo:mnist-fc4 zoo:fashion-mnist-cnn3
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import numpy as np

from ganq.quantize import QuantizeOptions, quantize_file
from ganq.runtime import Generator, resolve_model


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("models", nargs="+")
    ap.add_argument("--bits", default="8,7,6,5,4,3")
    ap.add_argument("--granularity", default="tensor")
    ap.add_argument("--out", default="benchmarks/results/format_sizes.json")
    args = ap.parse_args()
    rows = []
    print(f"{'model':22} {'k':>2} {'format':7} {'file bytes':>11} {'/ fp32':>7} {'/ ideal':>7} {'max|y-y32|':>11} "
          f"{'max|y-fake|':>11}")
    with tempfile.TemporaryDirectory() as tmp:
        for m in args.models:
            src = resolve_model(m)
            g32 = Generator(src)
            z = g32.latents(256, 0)
            y32 = g32.run(z)
            for k in (int(b) for b in args.bits.split(",")):
                outs = {}
                for fmt in ("fake", "int", "packed"):
                    path = Path(tmp) / f"{src.stem}-{k}-{fmt}.onnx"
                    rep = quantize_file(src, path, QuantizeOptions(bits=k, format=fmt, granularity=args.granularity))
                    outs[fmt] = Generator(path).run(z)
                    row = {"model": src.stem, "bits": k, "format": fmt, "bytes_file": rep["bytes_file"],
                           "bytes_fp32": rep["bytes_fp32"], "bytes_ideal": rep["bytes_ideal"],
                           "max_abs_diff_fp32": float(np.abs(outs[fmt] - y32).max()),
                           "max_abs_diff_fake": float(np.abs(outs[fmt] - outs["fake"]).max())}
                    rows.append(row)
                    print(f"{src.stem:22} {k:>2} {fmt:7} {row['bytes_file']:>11,} "
                          f"{row['bytes_file'] / row['bytes_fp32']:>7.3f} {row['bytes_file'] / row['bytes_ideal']:>7.3f} "
                          f"{row['max_abs_diff_fp32']:>11.4f} {row['max_abs_diff_fake']:>11.2e}", flush=True)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(rows, indent=1))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
