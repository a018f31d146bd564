"""What training length does to a generator and to its quantization, from a run folder's kept checkpoints
(`ganq train --keep-every N`, optionally `--ema`): for each chosen epoch, export it (raw and EMA weights), score fp32
and each (method, bits) (10,000 + 10,000, the data set's zoo classifier), record each weight's range (max - min).

    GANQ_DATA=../shared/data .venv/bin/python benchmarks/training_length.py runs/mnist-fc4-200 \
        --epochs 10,25,50,100,200 --quantize minmax:tensor:4,minmax:tensor:3,mse:channel:3 --ema
    .venv/bin/python benchmarks/training_length.py runs/mnist-fc4-200 --history   # fp32 only, every kept epoch

Writes JSON (--json) and a figure (--figure); results are cached per (epoch, weights, method) in --work.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import time
from pathlib import Path

import numpy as np


def weight_ranges(path: Path) -> dict:
    import onnx
    from onnx import numpy_helper

    from ganq.quantize.ops import find_targets

    m = onnx.load(str(path))
    inits = {i.name: i for i in m.graph.initializer}
    out = {}
    for t in find_targets(m):
        w = numpy_helper.to_array(inits[t.name])
        out[t.name] = {"range": float(w.max() - w.min()), "absmax": float(np.abs(w).max()), "std": float(w.std())}
    return out


def score(model: Path, n: int, cache: Path) -> dict:
    from ganq.evaluate import EvalOptions, evaluate

    key = cache / (hashlib.sha256(model.read_bytes()).hexdigest()[:16] + f"-{n}.json")
    if key.exists():
        return json.loads(key.read_text())
    r = evaluate(model, None, None, EvalOptions(n=n))
    keep = {k: r[k] for k in ("fid", "precision", "recall", "inception_score", "kid", "density", "coverage")}
    key.write_text(json.dumps(keep))
    return keep


def main():
    from ganq.export import export
    from ganq.quantize import QuantizeOptions, quantize_file

    ap = argparse.ArgumentParser()
    ap.add_argument("run")
    ap.add_argument("--epochs", default="")
    ap.add_argument("--history", action="store_true", help="fp32 (raw and EMA) at every kept checkpoint")
    ap.add_argument("--quantize", default="minmax:tensor:4,minmax:tensor:3", help="METHOD:GRANULARITY:BITS,...")
    ap.add_argument("--ema", action="store_true", help="also the EMA weights")
    ap.add_argument("--n", type=int, default=10000)
    ap.add_argument("--work", default=None)
    ap.add_argument("--json", default=None)
    ap.add_argument("--figure", default=None)
    args = ap.parse_args()
    run = Path(args.run)
    work = Path(args.work or run / "length")
    (work / "cache").mkdir(parents=True, exist_ok=True)
    kept = {int(p.stem.split("-")[1]): p for p in sorted((run / "checkpoints").glob("epoch-*.pt"))}
    epochs = sorted(kept) if args.history else [int(e) for e in args.epochs.split(",") if e]
    missing = [e for e in epochs if e not in kept]
    if missing:
        raise SystemExit(f"no kept checkpoint for epochs {missing} in {run}/checkpoints (kept: {sorted(kept)})")
    jobs = [] if args.history else [tuple(q.split(":")) for q in args.quantize.split(",") if q]
    rows = []
    for e in epochs:
        for weights in (("raw", "ema") if args.ema or args.history else ("raw",)):
            t0 = time.perf_counter()
            fp32 = work / f"epoch-{e:03d}-{weights}.onnx"
            if not fp32.exists():
                try:
                    export(kept[e], fp32, ema=weights == "ema")
                except Exception as ex:  # no EMA in this run
                    print(f"epoch {e} {weights}: {ex}")
                    continue
            base = score(fp32, args.n, work / "cache")
            row = {"epoch": e, "weights": weights, "fp32": base, "ranges": weight_ranges(fp32), "quantized": []}
            for method, gran, bits in jobs:
                q = work / f"epoch-{e:03d}-{weights}-{method}-{gran}-{bits}.onnx"
                if not q.exists():
                    quantize_file(fp32, q, QuantizeOptions(bits=int(bits), method=method, granularity=gran,
                                                           format="packed"))
                s = score(q, args.n, work / "cache")
                row["quantized"].append({"method": method, "granularity": gran, "bits": int(bits), **s,
                                         "fid_ratio": s["fid"] / base["fid"]})
            rows.append(row)
            qs = ", ".join(f"{x['method']}/{x['granularity'][0]}/{x['bits']}: FID {x['fid']:.1f} "
                           f"(x{x['fid_ratio']:.2f})" for x in row["quantized"])
            print(f"epoch {e:3d} {weights}: FID {base['fid']:.2f} P {base['precision']:.3f} R {base['recall']:.3f}"
                  f"{'; ' + qs if qs else ''}  [{time.perf_counter() - t0:.0f} s]", flush=True)
    out = Path(args.json or work / ("history.json" if args.history else "length.json"))
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"run": str(run), "n": args.n, "rows": rows}, indent=1) + "\n")
    print(f"wrote {out}")
    if args.figure:
        figure(rows, Path(args.figure), args.history)
        print(f"wrote {args.figure}")


def figure(rows, path: Path, history: bool):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if history:
        fig, axes = plt.subplots(1, 3, figsize=(13, 3.6))
        for weights, style in (("raw", "-o"), ("ema", "--s")):
            rs = [r for r in rows if r["weights"] == weights]
            if not rs:
                continue
            ep = [r["epoch"] for r in rs]
            for ax, key in zip(axes, ("fid", "precision", "recall")):
                ax.plot(ep, [r["fp32"][key] for r in rs], style, ms=3, label=weights)
                ax.set_title(key.upper() if key == "fid" else key)
                ax.set_xlabel("epoch")
        axes[0].legend()
    else:
        fig, axes = plt.subplots(1, 2, figsize=(11, 3.8))
        rs = [r for r in rows if r["weights"] == "raw"]
        ep = [r["epoch"] for r in rs]
        for i, q in enumerate(rs[0]["quantized"] if rs else []):
            label = f"{q['method']} per {q['granularity']}, {q['bits']} bits"
            axes[0].plot(ep, [r["quantized"][i]["fid_ratio"] for r in rs], "-o", ms=4, label=label)
        axes[0].axhline(1, color="grey", lw=0.8)
        axes[0].set_xscale("log")
        axes[0].set_xlabel("epoch")
        axes[0].set_ylabel("FID quantized / FID fp32 (same checkpoint)")
        axes[0].legend(fontsize=8)
        names = list(rs[0]["ranges"]) if rs else []
        for name in names:
            axes[1].plot(ep, [r["ranges"][name]["range"] for r in rs], "-o", ms=4, label=name)
        axes[1].set_xscale("log")
        axes[1].set_xlabel("epoch")
        axes[1].set_ylabel("weight range (max - min)")
        axes[1].legend(fontsize=7)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)


if __name__ == "__main__":
    main()
