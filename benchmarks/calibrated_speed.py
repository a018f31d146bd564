"""What the calibrated methods cost: each zoo generator quantized at 3 bits, per channel, packed, with 1,024
calibration latents, in a fresh process each (imports before the clock), best of --repeat: calibration (forward
passes, X X^T, BatchNorm moments) and solve apart, as `ganq.quant`'s report times them, against minmax. Run it on an
otherwise idle machine.

    .venv/bin/python benchmarks/calibrated_speed.py
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

MODELS = ("zoo:mnist-fc4", "zoo:mnist-cnn5", "zoo:fashion-mnist-cnn3", "zoo:cifar10-jpeg-cnn3")
CONFIGS = {"minmax": ("minmax", [], False), "gptq+bn": ("gptq", [], True),
           "gptq[mse;act_order]+bn": ("gptq", ["act_order=true", "grid=mse"], True),
           "adaround+bn": ("adaround", [], True)}

CHILD = r"""
import json, sys, tempfile, time
from pathlib import Path
from ganq.quantize import QuantizeOptions, quantize_file
from ganq.onnx_io import resolve_model
model, method, opts, bn = sys.argv[1], sys.argv[2], json.loads(sys.argv[3]), sys.argv[4] == "1"
o = QuantizeOptions(bits=3, method=method, method_opts=tuple(tuple(x.split("=", 1)) for x in opts),
                    granularity="channel", format="packed", recalibrate_bn=bn)
with tempfile.TemporaryDirectory() as d:
    t0 = time.perf_counter()
    r = quantize_file(resolve_model(model), Path(d) / "q.onnx", o)
    wall = time.perf_counter() - t0
print(json.dumps({"wall": wall, **r["seconds"], "passes": (r.get("calibration") or {}).get("forward_passes", 0)}))
"""


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--models", default=",".join(MODELS))
    ap.add_argument("--configs", default=",".join(CONFIGS))
    ap.add_argument("--repeat", type=int, default=1)
    ap.add_argument("--json", default="benchmarks/results/calibrated_speed.json")
    args = ap.parse_args()
    rows = []
    for model in args.models.split(","):
        for label in args.configs.split(","):
            method, opts, bn = CONFIGS[label]
            runs = []
            for _ in range(args.repeat):
                p = subprocess.run([sys.executable, "-c", CHILD, model, method, json.dumps(opts), "1" if bn else "0"],
                                   capture_output=True, text=True, check=True)
                runs.append(json.loads(p.stdout.strip().splitlines()[-1]))
            best = min(runs, key=lambda r: r["wall"])
            rows.append({"model": model, "config": label, **best, "runs": runs})
            print(f"{model} {label}: {best['wall']:.1f} s (calibrate {best['calibrate']:.1f} + solve "
                  f"{best['solve']:.1f}, {best['passes']} forward passes)", flush=True)
    print("\n| generator | " + " | ".join(args.configs.split(",")) + " |")
    print("|---|" + "---|" * len(args.configs.split(",")))
    for model in args.models.split(","):
        cells = []
        for label in args.configs.split(","):
            r = next(x for x in rows if x["model"] == model and x["config"] == label)
            cells.append(f"{r['wall']:.1f} s ({r['calibrate']:.1f} + {r['solve']:.1f})")
        print(f"| {model[4:]} | " + " | ".join(cells) + " |")
    out = Path(args.json)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"settings": vars(args), "cpus": os.cpu_count(), "load_before": os.getloadavg()[0],
                               "rows": rows}, indent=1) + "\n")
    print(f"wrote {out}  (cells: wall (calibrate + solve), 3 bits, per channel, packed, 1,024 latents)")


if __name__ == "__main__":
    main()
