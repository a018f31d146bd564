"""Calibrated methods against the data-free ones, per channel, packed, at 4, 3 and 2 bits, on the zoo generators
(10,000 generated + 10,000 real images, each data set's zoo classifier): FID, precision, recall, file bytes, and the
seconds of calibration (forward passes, X X^T, BatchNorm moments) and of the solve, apart. Also, per generator, how
far the trained BatchNorm running statistics are from ones re-estimated on the fp32 graph from 1,024 calibration
latents, and the FID of the fp32 graph with re-estimated statistics (16 bits + --recalibrate-bn: 16-bit rounding
changes nothing measurable). One sweep folder per configuration (resumable); a markdown table on stdout; JSON.

    GANQ_DATA=../shared/data .venv/bin/python benchmarks/calibrated.py
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper

from ganq.evaluate import EvalOptions
from ganq.onnx_io import sample_latents
from ganq.quantize.calibrate import Calibrator
from ganq.study import SweepSettings, sweep
from ganq.onnx_io import resolve_model
from ganq.onnx_io import read_spec

MODELS = ("zoo:mnist-fc4@mnist", "zoo:mnist-cnn5@mnist", "zoo:fashion-mnist-cnn3@fashion-mnist",
          "zoo:cifar10-jpeg-cnn3@cifar10-jpeg")
# (label, method, method options, --recalibrate-bn, sweep folder: data-free ones share benchmarks/methods.py's)
CONFIGS = {
    "minmax": ("minmax", (), False, "runs/bench-methods/minmax"),
    "mse": ("mse", (), False, "runs/bench-methods/mse"),
    "gptq": ("gptq", (), False, "runs/bench-calibrated/gptq"),
    "gptq+bn": ("gptq", (), True, "runs/bench-calibrated/gptq-bn"),
    "gptq[mse;act_order]+bn": ("gptq", (("act_order", "true"), ("grid", "mse")), True,
                               "runs/bench-calibrated/gptq-mse-act-bn"),
    "adaround+bn": ("adaround", (), True, "runs/bench-calibrated/adaround-bn"),
    "adaround[mse]+bn": ("adaround", (("grid", "mse"),), True, "runs/bench-calibrated/adaround-mse-bn"),
}


def bn_drift(model_ref: str, n: int = 1024) -> dict:
    """Trained running statistics vs statistics re-estimated through the fp32 graph on n calibration latents."""
    model = onnx.load(str(resolve_model(model_ref)))
    spec = read_spec(model)
    inits = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    cal = Calibrator(model, spec.input_name, sample_latents(spec, n, 0, calibration=True))
    out = []
    for node in model.graph.node:
        if node.op_type != "BatchNormalization":
            continue
        mean, var = cal.channel_moments(node.input[0])
        rm, rv = inits[node.input[3]].astype(np.float64), inits[node.input[4]].astype(np.float64)
        z = np.abs(mean - rm) / np.sqrt(var + 1e-5)
        ratio = rv / np.maximum(var, 1e-12)
        out.append({"node": node.name, "channels": int(rm.size), "mean_shift_sd_median": float(np.median(z)),
                    "mean_shift_sd_max": float(z.max()), "var_ratio_median": float(np.median(ratio)),
                    "var_ratio_p5": float(np.percentile(ratio, 5)), "var_ratio_p95": float(np.percentile(ratio, 95))})
    return {"model": model_ref, "latents": n, "batchnorms": out}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--configs", default=",".join(CONFIGS))
    ap.add_argument("--models", default=",".join(MODELS))
    ap.add_argument("--bits", default="4,3,2")
    ap.add_argument("--n", type=int, default=10000)
    ap.add_argument("--json", default="benchmarks/results/calibrated.json")
    args = ap.parse_args()
    bits = tuple(int(b) for b in args.bits.split(","))
    models = args.models.split(",")
    labels = args.configs.split(",")
    rows = []
    for label in labels + ["fp32+bn"]:
        if label == "fp32+bn":
            method, opts, bn, folder, widths = "minmax", (), True, "runs/bench-calibrated/fp32-bn", (16,)
        else:
            method, opts, bn, folder = CONFIGS[label]
            widths = ((32,) if label == "minmax" else ()) + bits
        settings = SweepSettings(bits=widths, format="packed", granularity="channel", method=method,
                                 method_opts=opts, recalibrate_bn=bn, n=args.n, speed=False,
                                 eval=EvalOptions(n=args.n))
        t0 = time.perf_counter()
        r = sweep(models, settings, Path(folder))
        print(f"{label}: {time.perf_counter() - t0:.0f} s", flush=True)
        for x in r["rows"]:
            rows.append({"config": label, **{k: x.get(k) for k in ("model", "method", "bits", "fid", "precision",
                                                                   "recall", "bytes_file", "quantize_seconds")}})
    drift = [bn_drift(m.split("@")[0]) for m in models]
    fp32 = {x["model"]: x for x in rows if x["bits"] == 32}
    print("\n| model | bits | " + " | ".join(labels) + " |")
    print("|---|---|" + "---|" * len(labels))
    for model in dict.fromkeys(x["model"] for x in rows):
        f = fp32.get(model)
        fbn = next((x for x in rows if x["model"] == model and x["config"] == "fp32+bn"), None)
        if f:
            extra = f"; with re-estimated BN: FID {fbn['fid']:.1f}" if fbn else ""
            print(f"| {model} | fp32 | FID {f['fid']:.1f}, P {f['precision']:.3f}, R {f['recall']:.3f}, "
                  f"{f['bytes_file'] / 1024:,.0f} KiB{extra} |" + " |" * (len(labels) - 1))
        for b in bits:
            cells = []
            for label in labels:
                x = next((x for x in rows if x["model"] == model and x["config"] == label and x["bits"] == b), None)
                cells.append("-" if x is None else f"{x['fid']:.1f} / {x['precision']:.2f} / {x['recall']:.2f} / "
                                                   f"{x['bytes_file'] / 1024:,.0f}K")
            print(f"| {model} | {b} | " + " | ".join(cells) + " |")
    print("\nquantize seconds at 3 bits (calibrate + solve; cached cells keep the time of the run that made them):")
    for model in dict.fromkeys(x["model"] for x in rows):
        parts = []
        for label in labels:
            x = next((x for x in rows if x["model"] == model and x["config"] == label and x["bits"] == 3), None)
            sec = (x or {}).get("quantize_seconds") or {}
            if sec:
                parts.append(f"{label} {sec['calibrate']:.1f} + {sec['solve']:.1f}")
        print(f"  {model}: " + ", ".join(parts))
    print("\nBatchNorm running statistics vs re-estimated on the fp32 graph (1,024 latents):")
    for d in drift:
        for b in d["batchnorms"]:
            print(f"  {d['model']} {b['node']} ({b['channels']} ch): |mean shift| median {b['mean_shift_sd_median']:.3f}"
                  f" sd (max {b['mean_shift_sd_max']:.2f}), running/re-estimated var median {b['var_ratio_median']:.3f}"
                  f" (5-95%: {b['var_ratio_p5']:.2f}-{b['var_ratio_p95']:.2f})")
    out = Path(args.json)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"settings": vars(args), "rows": rows, "bn_drift": drift}, indent=1) + "\n")
    print(f"wrote {out}  (cells: FID / precision / recall / packed file)")


if __name__ == "__main__":
    main()
