"""onnxruntime's mobile format on the shipped Fashion-MNIST generator: each format x k -> .onnx bytes, .ort bytes,
load time and p50 latency at batch 1 (1 thread) of the .onnx and the .ort file, and the operators of the reduced
build. Prints a markdown table and writes JSON.

    .venv/bin/python benchmarks/ort_format.py
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np


def timed(path: Path, level=None, runs: int = 200) -> tuple[float, float]:
    from ganq.onnx_io import session

    loads = []
    for _ in range(5):
        t0 = time.perf_counter()
        s = session(path, threads=1, optimization=level)
        loads.append((time.perf_counter() - t0) * 1e3)
    z = np.random.default_rng(0).standard_normal((1, 100)).astype(np.float32)
    for _ in range(20):
        s.run(None, {"z": z})
    lat = []
    for _ in range(runs):
        t0 = time.perf_counter()
        s.run(None, {"z": z})
        lat.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(loads), statistics.median(lat)


def main():
    from ganq.app.mobile import export_ort
    from ganq.quantize import QuantizeOptions, quantize_file
    from ganq.onnx_io import resolve_model

    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="zoo:fashion-mnist-cnn3")
    ap.add_argument("--out", default="benchmarks/results/ort_format.json")
    args = ap.parse_args()
    src = resolve_model(args.model)
    work = Path(tempfile.mkdtemp(prefix="ganq-ort-bench."))
    # (format, bits, granularity, weights): the three mobile trade-offs are int/packed coded (small, decoded per
    # run), decoded (fp32 weights at conversion) and nbits (MatMulNBits blocks)
    cases = [("fp32", 32, "tensor", "coded")] + [(f, k, "tensor", "coded") for f in ("fake", "int", "packed")
                                                  for k in (8, 4, 3)]
    cases += [("int", 4, "channel", w) for w in ("coded", "decoded")] + \
        [("packed", 3, "channel", w) for w in ("coded", "decoded")] + \
        [("nbits", 4, "group:32", w) for w in ("coded", "decoded")]
    rows = []
    for fmt, k, gran, weights in cases:
        name = f"{fmt}{k}-{gran.replace(':', '')}-{weights}"
        onnx_path = src if fmt == "fp32" else work / f"{name}.onnx"
        if fmt != "fp32":
            quantize_file(src, onnx_path, QuantizeOptions(bits=k, format=fmt, granularity=gran))
        r = export_ort(onnx_path, work / f"{name}.ort", weights=weights)
        load_onnx, p50_onnx = timed(onnx_path, r["optimization"])
        load_ort, p50_ort = timed(work / f"{name}.ort")
        rows.append({"format": fmt, "bits": k, "granularity": gran, "weights": weights,
                     "bytes_onnx": r["bytes_onnx"], "bytes_ort": r["bytes_ort"],
                     "optimization": r["optimization"], "load_ms_onnx": load_onnx, "load_ms_ort": load_ort,
                     "p50_ms_onnx": p50_onnx, "p50_ms_ort": p50_ort, "max_abs_diff": r["max_abs_diff"],
                     "operators": r["operators"], "notes": r["notes"]})
        print(f"{name}: done", flush=True)
    print("\n| format | k | granularity | weights | .onnx | .ort | level | load ms .onnx / .ort | p50 ms batch 1 .onnx / "
          ".ort | reduced build's operators |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['format']} | {'fp32' if r['bits'] == 32 else r['bits']} | {r['granularity']} | {r['weights']} "
              f"| {r['bytes_onnx'] / 1024:,.0f} KiB "
              f"| {r['bytes_ort'] / 1024:,.0f} KiB | {r['optimization']} | {r['load_ms_onnx']:.1f} / "
              f"{r['load_ms_ort']:.1f} | {r['p50_ms_onnx']:.3f} / {r['p50_ms_ort']:.3f} | "
              f"{', '.join(r['operators'])} |")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(rows, indent=1) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
