"""Issue 24's speed table: fp32, int 4-bit, packed 3-bit, nbits 4-bit (MatMulNBits, group:32) and int 4-bit group:32,
each at batch 1 and 64, one thread and two, decoded once (ganq's default) and per call, in one run, in onnxruntime
(`ganq bench`'s isolated processes: p50 latency, images/s, peak memory), in interleaved rounds (the median of each
figure over them). Prints a table, writes JSON.

    .venv/bin/python benchmarks/small_fast.py zoo:fashion-mnist-cnn3 --out benchmarks/results/small_fast.json
"""

from __future__ import annotations

import argparse
import json
import tempfile

import numpy as np
from pathlib import Path

from ganq.onnx_io import resolve_model
from ganq.quantize import QuantizeOptions, quantize_file
from ganq.runtime.bench import BenchJob, decodes_per_call, machine, run_isolated

VARIANTS = [  # (label, bits, options)
    ("fp32", 32, None),
    ("int", 4, dict(format="int", granularity="channel", method="minmax")),
    ("packed", 3, dict(format="packed", granularity="channel", method="minmax")),
    ("nbits", 4, dict(format="nbits", granularity="group:32", method="minmax")),
    ("int group:32", 4, dict(format="int", granularity="group:32", method="minmax")),
]


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("model", nargs="?", default="zoo:fashion-mnist-cnn3")
    ap.add_argument("--batch", default="1,64")
    ap.add_argument("--threads", default="1,2")
    ap.add_argument("--repeat", type=int, default=100)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--out", default="benchmarks/results/small_fast.json")
    a = ap.parse_args()
    batches = [int(b) for b in a.batch.split(",")]
    threads = [int(t) for t in a.threads.split(",")]
    src = resolve_model(a.model)
    rows = []
    before = machine()
    with tempfile.TemporaryDirectory() as tmp:
        jobs = []  # (label, bits, decode, BenchJob): every file made first, then timed in interleaved rounds
        for label, bits, opts in VARIANTS:
            path = src
            if opts:
                path = Path(tmp) / f"{label.replace(':', '').replace(' ', '_')}{bits}.onnx"
                quantize_file(src, path, QuantizeOptions(bits=bits, bn_into_decoder=True, **opts))
            for mode in (("fold", "keep") if decodes_per_call(str(path)) else ("fold",)):
                for t in threads:
                    for b in batches:
                        jobs.append((label, bits, "once" if mode == "fold" else "per-call",
                                     BenchJob(str(path), b, t, 10, a.repeat, "cpu", mode)))
        # each round times every job once (its own process), so that drift of a shared machine spreads over all of
        # them; a row keeps the median over the rounds of each figure
        results = [[] for _ in jobs]
        for k in range(a.rounds):
            for i, (label, bits, decode, job) in enumerate(jobs):
                results[i].append(run_isolated(job))
            print(f"round {k + 1} of {a.rounds}: done", flush=True)
        for (label, bits, decode, job), rs in zip(jobs, results):
            med = {key: float(np.median([r[key] for r in rs])) for key in ("p50_ms", "p95_ms", "mean_ms",
                                                                          "images_per_s", "peak_rss_mb")}
            rows.append({"variant": label, "bits": bits, "decode": decode, **rs[0], **med,
                         "rounds": [{key: r[key] for key in ("p50_ms", "mean_ms")} for r in rs]})
    after = machine()
    # the ratio from the median latency (batch / p50): on a shared 2-core machine the mean carries the outliers
    for r in rows:
        r["images_per_s_p50"] = r["batch"] / (r["p50_ms"] / 1e3)
    base = {(r["batch"], r["threads"]): r["images_per_s_p50"] for r in rows if r["variant"] == "fp32"}
    print(f"\n{'variant':14} {'bits':>4} {'decode':>8} {'batch':>5} {'thr':>3} {'p50 ms':>8} {'img/s p50':>9} "
          f"{'x fp32':>7} {'img/s mean':>10} {'MB':>5} {'file KiB':>9}")
    for r in rows:
        r["vs_fp32"] = r["images_per_s_p50"] / base[(r["batch"], r["threads"])]
        print(f"{r['variant']:14} {r['bits']:>4} {r['decode']:>8} {r['batch']:>5} {r['threads']:>3} "
              f"{r['p50_ms']:>8.3f} {r['images_per_s_p50']:>9.0f} {r['vs_fp32']:>7.2f} {r['images_per_s']:>10.0f} "
              f"{r['peak_rss_mb']:>5.0f} {r['file_bytes'] / 1024:>9.1f}")
    print(f"load average before {before['load1']:.2f}, after {after['load1']:.2f} on {before['cpus']} cores")
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"model": str(src), "machine_before": before, "machine_after": after, "rows": rows},
                              indent=1) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
