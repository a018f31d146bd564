"""Does mixed precision's proxy rank plans like the full metric? For one generator: the uniform plans at each width
and the plans a `--target` run verified (from its JSON), each scored with the proxy (FID on --proxy-n images) and
the full metric (10,000 + 10,000); Spearman's rank correlation between the two, printed and written as JSON.

    .venv/bin/python benchmarks/mixed_proxy.py --model zoo:fashion-mnist-cnn3 --run benchmarks/results/mixed_fashion.json
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

from scipy.stats import spearmanr

from ganq.evaluate import EvalOptions, evaluate
from ganq.quantize import QuantizeOptions, load_model, make_plan, quantize_file
from ganq.quantize.plan import Plan, TensorPlan
from ganq.onnx_io import resolve_model


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="zoo:fashion-mnist-cnn3")
    ap.add_argument("--run", default="benchmarks/results/mixed_fashion.json")
    ap.add_argument("--proxy-n", type=int, default=2000)
    ap.add_argument("--n", type=int, default=10000)
    ap.add_argument("--json", default="benchmarks/results/mixed_proxy.json")
    args = ap.parse_args()
    run = json.loads(Path(args.run).read_text())
    src = resolve_model(args.model)
    opts = QuantizeOptions(bits=2, method=run["method"], granularity=run["granularity"], format=run["format"])
    base = make_plan(load_model(src), 2, opts.method_config, opts.granularity)
    names = [t.target.name for t in base.tensors]
    plans = [(f"uniform {b}", {n: b for n in names}) for b in run["bits_choices"]]
    plans += [(f"round {i + 1}: " + "/".join(str(r["bits"][n]) for n in names), r["bits"])
              for i, r in enumerate(run["rounds"])]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for label, bits in plans:
            plan = Plan(tuple(TensorPlan(t.target, bits[t.target.name], t.method, t.granularity) for t in base.tensors))
            path = Path(tmp) / "p.onnx"
            path.unlink(missing_ok=True)
            rep = quantize_file(src, path, opts, plan)
            proxy = evaluate(path, None, None, EvalOptions(n=args.proxy_n))["fid"]
            full = evaluate(path, None, None, EvalOptions(n=args.n))["fid"]
            rows.append({"plan": label, "bytes_file": rep["bytes_file"], "proxy_fid": proxy, "fid": full})
            print(f"{label:24s} {rep['bytes_file'] / 1024:8.1f} KiB  proxy FID {proxy:8.2f}  full FID {full:8.2f}",
                  flush=True)
    rho = spearmanr([r["proxy_fid"] for r in rows], [r["fid"] for r in rows]).statistic
    near = [r for r in rows if r["fid"] < 3 * min(x["fid"] for x in rows)]
    rho_near = spearmanr([r["proxy_fid"] for r in near], [r["fid"] for r in near]).statistic if len(near) > 2 else None
    print(f"Spearman rank correlation, proxy ({args.proxy_n:,}) vs full ({args.n:,}): {rho:.3f} over {len(rows)} plans"
          + (f"; {rho_near:.3f} over the {len(near)} plans within 3x of the best FID" if rho_near is not None else ""))
    Path(args.json).write_text(json.dumps({"settings": vars(args), "rows": rows, "spearman": rho,
                                           "spearman_near": rho_near}, indent=1) + "\n")
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
