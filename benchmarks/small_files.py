"""Issue 24's size table: for each zoo generator at 4, 3 and 2 bits (minmax, per channel, packed), the file as
today, with --bn-into-decoder, and with --bn-into-decoder --float-bits 16; beside them the ideal size (k bits a
weight, nothing else), the entropy bound of the codes (their empirical entropy, bits a weight) and what xz -9e makes
of the smallest file. With --fid, FID of each file (10,000 + 10,000, seeds 0 and 1) to show what the float
overhead's removal costs against seed noise. Prints a table, writes JSON.

    .venv/bin/python benchmarks/small_files.py --fid zoo:fashion-mnist-cnn3
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

ZOO = ("zoo:mnist-fc4", "zoo:mnist-cnn5", "zoo:fashion-mnist-cnn3", "zoo:cifar10-jpeg-cnn3")
VARIANTS = {"today": {}, "bn": {"bn_into_decoder": True}, "bn+f16": {"bn_into_decoder": True, "float_bits": 16}}


def main():
    from ganq.evaluate import EvalOptions, evaluate
    from ganq.onnx_io import resolve_model
    from ganq.quantize import QuantizeOptions, quantize_file

    ap = argparse.ArgumentParser()
    ap.add_argument("models", nargs="*", default=list(ZOO))
    ap.add_argument("--bits", default="4,3,2")
    ap.add_argument("--fid", action="store_true", help="also FID at seeds 0 and 1 (10,000 + 10,000)")
    ap.add_argument("--n", type=int, default=10000)
    ap.add_argument("--out", default="benchmarks/results/small_files.json")
    a = ap.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for model in a.models:
            for bits in (int(b) for b in a.bits.split(",")):
                row = {"model": model, "bits": bits}
                for name, kw in VARIANTS.items():
                    out = Path(tmp) / f"{name}.onnx"
                    rep = quantize_file(resolve_model(model), out, QuantizeOptions(bits=bits, granularity="channel",
                                                                    format="packed", **kw), sizes=True)
                    row[name] = {"bytes": rep["bytes_file"], "xz": rep["bytes_xz"],
                                 "float16_rms": (rep.get("float16") or {}).get("rms")}
                    if name == "today":
                        weights = sum(r["params"] for r in rep["tensors"])
                        row["ideal"] = -(-weights * bits // 8)
                        row["entropy"] = rep["bytes_entropy_codes"]
                        row["entropy_bits"] = 8 * rep["bytes_entropy_codes"] / weights
                    if a.fid:
                        row[name]["fid"] = [evaluate(out, opts=EvalOptions(n=a.n, seed=s))["fid"] for s in (0, 1)]
                rows.append(row)
                print(_line(row), flush=True)
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(rows, indent=1) + "\n")
    print(f"wrote {a.out}")


def _line(r) -> str:
    def fid(v):
        return "" if "fid" not in v else " FID " + "/".join(f"{x:.2f}" for x in v["fid"])
    return (f"{r['model']:<24} {r['bits']} bits: ideal {r['ideal']:>9,}  entropy {r['entropy']:>9,} "
            f"({r['entropy_bits']:.2f} b/w)  " + "  ".join(f"{k} {v['bytes']:>9,}{fid(v)}" for k, v in r.items()
                                                         if isinstance(v, dict))
            + f"  xz(bn+f16) {r['bn+f16']['xz']:,}")


if __name__ == "__main__":
    main()
