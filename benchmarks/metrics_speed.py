"""k-NN metric speed and memory: ganq (precision, recall, realism both ways, density, coverage in one pass) against
prdc (precision, recall, density, coverage) and torch-fidelity (precision, recall), on the same features, each in
its own process (peak memory is per process), with the matrix-product floor (the three N x N x D products alone)
measured in the same run. Prints a table and writes JSON.

    .venv/bin/python benchmarks/metrics_speed.py --n 10000 --dims 64,512,2048
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import time
from pathlib import Path

import numpy as np


def _hwm_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024.0
    return float("nan")


def _features(n, d, seed):
    rng = np.random.default_rng(seed)
    return rng.standard_normal((n, d)).astype(np.float32), (rng.standard_normal((n, d)) + 0.1).astype(np.float32)


def _worker(method, n, d, q):
    fake, real = _features(n, d, d)
    base = _hwm_mb()
    t0 = time.perf_counter()
    if method == "ganq":
        from ganq.evaluate.metrics import manifold_metrics
        out = manifold_metrics(fake, real, k=3)
    elif method == "ganq-strict":
        from ganq.evaluate.metrics import manifold_metrics
        out = manifold_metrics(fake, real, k=3, strict=True)
    elif method == "prdc":
        import contextlib, io
        from prdc import compute_prdc
        with contextlib.redirect_stdout(io.StringIO()):
            out = {k: float(v) for k, v in compute_prdc(real_features=real, fake_features=fake, nearest_k=3).items()}
    elif method == "torch-fidelity":
        import torch
        from torch_fidelity.metric_prc import calculate_precision_recall_part
        torch.set_num_threads(os.cpu_count())
        p, r = calculate_precision_recall_part(torch.from_numpy(fake), torch.from_numpy(real), 3, 10000)
        out = {"precision": p, "recall": r}
    elif method == "matmul-floor":
        for a, b in ((real, real), (fake, fake), (fake, real)):
            for i in range(0, n, 2048):
                a[i:i + 2048].astype(np.float64) @ b.astype(np.float64).T
        out = {}
    seconds = time.perf_counter() - t0
    q.put({"method": method, "n": n, "d": d, "seconds": seconds, "peak_mb": _hwm_mb() - base, **out})


def run(method, n, d):
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    p = ctx.Process(target=_worker, args=(method, n, d, q))
    p.start()
    res = q.get()
    p.join()
    return res


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=10000)
    ap.add_argument("--dims", default="64,512,2048")
    ap.add_argument("--methods", default="ganq,prdc,torch-fidelity,matmul-floor")
    ap.add_argument("--out", default="benchmarks/results/metrics_speed.json")
    args = ap.parse_args()
    load = os.getloadavg()[0]
    rows = []
    print(f"{'D':>5} {'method':15} {'seconds':>8} {'peak MB':>8} {'precision':>9} {'recall':>7}")
    for d in (int(x) for x in args.dims.split(",")):
        for m in args.methods.split(","):
            r = run(m, args.n, d)
            rows.append(r)
            print(f"{d:>5} {m:15} {r['seconds']:>8.2f} {r['peak_mb']:>8.0f} {r.get('precision', float('nan')):>9.4f} "
                  f"{r.get('recall', float('nan')):>7.4f}", flush=True)
    print(f"N = {args.n} + {args.n}; load average at start {load:.2f} on {os.cpu_count()} cores")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"n": args.n, "load1": load, "rows": rows}, indent=1))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
