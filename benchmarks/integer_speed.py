"""Issue 25's speed table: an integer generator (W8A8) on onnxruntime's CPU provider against fp32 and the
weight-only file, at batch 1 and 64, one and two threads, in one run; each row its own process (ganq bench's
BenchJob). qdq keep: onnxruntime's QDQ fusions on, so the file runs integer kernels (QLinearConv, QGemm) where it
has them; fold: session.disable_quant_qdq, the QDQ pairs run as float fake quantization (what the reference
computes). onnxruntime's own quantize_static file (MinMax) is the anchor. Prints a table, writes JSON.

    .venv/bin/python benchmarks/integer_speed.py zoo:fashion-mnist-cnn3
"""

from __future__ import annotations

import argparse
import json
import logging
import tempfile
from pathlib import Path

from integer import SYM8, ort_static

from ganq.onnx_io import resolve_model
from ganq.quantize import QuantizeOptions, quantize_file
from ganq.runtime.bench import BenchJob, machine, run_isolated


def main():
    logging.getLogger().setLevel(logging.ERROR)
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("model", nargs="?", default="zoo:fashion-mnist-cnn3")
    ap.add_argument("--batch", default="1,64")
    ap.add_argument("--threads", default="1,2")
    ap.add_argument("--repeat", type=int, default=50)
    ap.add_argument("--out", default="benchmarks/results/integer_speed.json")
    a = ap.parse_args()
    batches = [int(b) for b in a.batch.split(",")]
    threads = [int(t) for t in a.threads.split(",")]
    src = resolve_model(a.model)
    rows = []
    before = machine()
    with tempfile.TemporaryDirectory() as tmp:
        w8 = Path(tmp) / "w8.onnx"
        quantize_file(src, w8, QuantizeOptions(**SYM8))
        a8 = Path(tmp) / "w8a8.onnx"
        quantize_file(src, a8, QuantizeOptions(**SYM8, activations=8, act_calibration="entropy",
                                               keep_float=("last",)))
        a8all = Path(tmp) / "w8a8all.onnx"
        quantize_file(src, a8all, QuantizeOptions(**SYM8, activations=8))
        ort = ort_static(src, Path(tmp) / "ort.onnx", "MinMax")
        variants = [("fp32", src, ("keep",)), ("W8 weights only", w8, ("fold",)),
                    ("ganq W8A8 (all layers)", a8all, ("keep", "fold")),
                    ("ganq W8A8 (last layer float)", a8, ("keep", "fold")),
                    ("onnxruntime quantize_static", ort, ("keep", "fold"))]
        for name, path, modes in variants:
            for qdq in modes:
                for t in threads:
                    for b in batches:
                        r = run_isolated(BenchJob(str(path), b, t, 10, a.repeat, "cpu", qdq))
                        rows.append({"file": name, **r})
    after = machine()
    base = {(r["batch"], r["threads"]): r["images_per_s"] for r in rows if r["file"] == "fp32"}
    print(f"{'file':30} {'qdq':>4} {'batch':>5} {'thr':>3} {'p50 ms':>9} {'img/s':>9} {'x fp32':>7} {'MB':>5} "
          f"{'KiB':>7}")
    for r in rows:
        r["vs_fp32"] = r["images_per_s"] / base[(r["batch"], r["threads"])]
        print(f"{r['file']:30} {r['qdq']:>4} {r['batch']:>5} {r['threads']:>3} {r['p50_ms']:>9.3f} "
              f"{r['images_per_s']:>9.0f} {r['vs_fp32']:>7.2f} {r['peak_rss_mb']:>5.0f} {r['file_bytes'] / 1024:>7.0f}")
    print(f"load average before {before['load1']:.2f}, after {after['load1']:.2f} on {before['cpus']} cores")
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"model": str(src), "machine_before": before, "machine_after": after, "rows": rows},
                              indent=1) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
