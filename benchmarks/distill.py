"""Issue 23's figures: method distill against the best layer-wise method, per channel, packed, FID in two feature
spaces (the zoo classifier, which the feature loss may use, and an independent judge trained by
`ganq train-classifier --arch resnet`, never a loss), precision, recall, bytes, seconds; each distill setting at
several training seeds (mean and std). With --curve, FID against the time budget (minutes=M) instead.

    .venv/bin/python benchmarks/distill.py zoo:fashion-mnist-cnn3 --bits 3,2 --seeds 0,1,2 \
        --judge zoo:fashion-mnist-judge --out benchmarks/results/distill_fashion.json
    .venv/bin/python benchmarks/distill.py zoo:fashion-mnist-cnn3 --bits 3 --curve 1,2,5,10 ...

Prints a table, writes JSON (rewritten after every row, so a long run that is stopped keeps what it measured).
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path


def evaluate_both(path, dataset, judge, n):
    from ganq.evaluate import EvalOptions, evaluate

    out = {}
    for tag, feats in (("clf", "classifier"), ("judge", judge)):
        if feats is None:
            continue
        e = evaluate(path, dataset, feats, EvalOptions(n=n, seed=0))
        out.update({f"fid_{tag}": e["fid"], f"precision_{tag}": e["precision"], f"recall_{tag}": e["recall"]})
    return out


def main():
    from ganq.onnx_io import read_spec, load_model, resolve_model
    from ganq.quantize import QuantizeOptions, quantize_file

    ap = argparse.ArgumentParser()
    ap.add_argument("model")
    ap.add_argument("--bits", default="3,2")
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--losses", default="pixel,feature", help="pixel: output MSE; feature: + 1 x classifier features")
    ap.add_argument("--layerwise", default="adaround[grid=mse]+bn",
                    help="the layer-wise row: METHOD[k=v;...] with +bn for --recalibrate-bn; '' for none")
    ap.add_argument("--steps", type=int, default=0, help="distill steps (0: the method's default)")
    ap.add_argument("--curve", default="", help="minutes budgets, e.g. 1,2,5,10 (steps then unlimited)")
    ap.add_argument("--judge", default=None, help="the independent feature network")
    ap.add_argument("--n", type=int, default=10000)
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--out", required=True)
    a = ap.parse_args()
    src = resolve_model(a.model)
    dataset = read_spec(load_model(src, external_data=False)).dataset
    rows = []

    def save():
        Path(a.out).parent.mkdir(parents=True, exist_ok=True)
        Path(a.out).write_text(json.dumps({"model": a.model, "n": a.n, "judge": a.judge, "rows": rows}, indent=1)
                               + "\n")

    def one(bits, method, opts, label, seed=None, recal=False):
        with tempfile.TemporaryDirectory() as tmp:
            out = Path(tmp) / "q.onnx"
            t0 = time.perf_counter()
            rep = quantize_file(src, out, QuantizeOptions(bits=bits, method=method, method_opts=tuple(opts.items()),
                                                          granularity="channel", format="packed",
                                                          recalibrate_bn=recal))
            seconds = time.perf_counter() - t0
            row = {"bits": bits, "setting": label, "seed": seed, "bytes": rep["bytes_file"],
                   "seconds": round(seconds, 1), **evaluate_both(out, dataset, a.judge, a.n)}
            if "distill" in rep:
                row.update({k: rep["distill"][k] for k in ("steps_run", "best_step", "heldout_init",
                                                           "heldout_best")})
                # bn=auto's choice: re-estimated or kept, with both held-out losses
                row.update({k: rep["distill"][k] for k in ("batchnorm", "heldout_kept", "heldout_reestimated")
                            if k in rep["distill"]})
        rows.append(row)
        save()
        print(json.dumps(row), flush=True)

    th = {"threads": str(a.threads)} if a.threads else {}
    fp32 = {"bits": 32, "setting": "fp32", **evaluate_both(src, dataset, a.judge, a.n)}
    rows.append(fp32)
    save()
    for bits in (int(b) for b in a.bits.split(",")):
        if a.layerwise and not a.curve:
            from ganq.study import parse_method_spec

            spec, recal = (a.layerwise[:-3], True) if a.layerwise.endswith("+bn") else (a.layerwise, False)
            m, mopts = parse_method_spec(spec)
            one(bits, m, dict(mopts), a.layerwise, recal=recal)
        for loss in a.losses.split(","):
            opts = dict(th)
            if loss == "feature":
                opts.update({"lam": "1", "features": f"zoo:{dataset}-classifier"})
            if a.steps:
                opts["steps"] = str(a.steps)
            if a.curve:
                for minutes in a.curve.split(","):
                    one(bits, "distill", {**opts, "minutes": minutes, "steps": "1000000"},
                        f"distill-{loss}-{minutes}min", seed=0)
                continue
            for seed in (int(s) for s in a.seeds.split(",")):
                one(bits, "distill", {**opts, "seed": str(seed)}, f"distill-{loss}", seed=seed)
    # the table: one line per setting, seeds pooled
    print(f"\n{a.model}: fp32 FID {fp32['fid_clf']:.2f}" + (f" (judge {fp32['fid_judge']:.2f})" if a.judge else ""))
    keys = sorted({(r["bits"], r["setting"]) for r in rows if r["bits"] != 32}, key=lambda k: (-k[0], k[1]))
    print("| bits | setting | FID (classifier) | FID (judge) | precision | recall | bytes | seconds |")
    print("|---|---|---|---|---|---|---|---|")
    for bits, setting in keys:
        rs = [r for r in rows if (r["bits"], r["setting"]) == (bits, setting)]

        def ms(k):
            v = [r[k] for r in rs if k in r]
            if not v:
                return "-"
            return f"{statistics.mean(v):.2f}" + (f" ± {statistics.stdev(v):.2f}" if len(v) > 1 else "")
        print(f"| {bits} | {setting} | {ms('fid_clf')} | {ms('fid_judge')} | {ms('precision_clf')} | "
              f"{ms('recall_clf')} | {rs[0]['bytes']:,} | {ms('seconds')} |")


if __name__ == "__main__":
    main()
