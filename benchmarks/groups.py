"""Issue 24's granularity table: group:32 against channel at 4, 3 and 2 bits (equal methods), FID and bytes; and
ganq against onnxruntime's own MatMulNBits quantizer (its default round-to-nearest, asymmetric and symmetric, and
HQQ; block 32) on the same files, the MatMul / Gemm weights alone quantized (what onnxruntime's quantizer touches),
the rest fp32, so that the bytes are equal. Prints a table, writes JSON (rewritten after every row).

    .venv/bin/python benchmarks/groups.py zoo:fashion-mnist-cnn3 --out benchmarks/results/groups_fashion.json
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import onnx

from ganq.evaluate import EvalOptions, evaluate
from ganq.onnx_io import copy_metadata, load_model, read_spec, resolve_model
from ganq.quantize import QuantizeOptions, quantize_file
from ganq.quantize.methods import make_method
from ganq.quantize.plan import make_plan


def ort_nbits(src: Path, out: Path, algo: str, bits: int, block: int) -> Path:
    """onnxruntime's MatMulNBitsQuantizer (default: round to nearest, asym or sym; hqq), ganq's metadata kept."""
    from onnxruntime.quantization.matmul_nbits_quantizer import (DefaultWeightOnlyQuantConfig,
                                                                  HQQWeightOnlyQuantConfig, MatMulNBitsQuantizer)

    model = onnx.load(str(src))
    if algo == "hqq":
        cfg = HQQWeightOnlyQuantConfig(block_size=block, bits=bits)
    else:
        cfg = DefaultWeightOnlyQuantConfig(block_size=block, is_symmetric=algo == "rtn-sym", bits=bits)
    q = MatMulNBitsQuantizer(model, bits=bits, block_size=block, is_symmetric=algo == "rtn-sym", algo_config=cfg)
    q.process()
    m = q.model.model
    copy_metadata(load_model(src, external_data=False), m)
    onnx.save(m, str(out))
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("model")
    ap.add_argument("--bits", default="4,3,2")
    ap.add_argument("--methods", default="mse", help="ganq methods for the granularity rows")
    ap.add_argument("--group", type=int, default=32)
    ap.add_argument("--n", type=int, default=10000)
    ap.add_argument("--ort-bits", default="4", help="bits of the onnxruntime-quantizer comparison ('' for none)")
    ap.add_argument("--out", required=True)
    a = ap.parse_args()
    src = resolve_model(a.model)
    model = load_model(src, external_data=False)
    dataset = read_spec(model).dataset
    rows = []

    def save():
        Path(a.out).parent.mkdir(parents=True, exist_ok=True)
        Path(a.out).write_text(json.dumps({"model": a.model, "n": a.n, "rows": rows}, indent=1) + "\n")

    def add(path, **row):
        t0 = time.perf_counter()
        e = evaluate(path, dataset, "classifier", EvalOptions(n=a.n, seed=0))
        row.update({"bytes": Path(path).stat().st_size, "fid": e["fid"], "precision": e["precision"],
                    "recall": e["recall"], "eval_s": round(time.perf_counter() - t0, 1)})
        rows.append(row)
        save()
        print(json.dumps(row), flush=True)

    add(src, part="fp32", setting="fp32", bits=32)
    g = f"group:{a.group}"
    plan = make_plan(model, 4, make_method("minmax"), "channel")
    others = tuple((t.target.name, 32) for t in plan.tensors if t.target.op_type not in ("MatMul", "Gemm"))
    with tempfile.TemporaryDirectory() as tmp:
        for bits in (int(b) for b in a.bits.split(",")):
            for method in a.methods.split(","):
                for gran in ("channel", g):
                    out = Path(tmp) / "q.onnx"
                    quantize_file(src, out, QuantizeOptions(bits=bits, method=method, granularity=gran,
                                                            format="packed", bn_into_decoder=True))
                    add(out, part="granularity", setting=f"{method} {gran} packed", bits=bits, method=method,
                        granularity=gran)
            if str(bits) not in a.ort_bits.split(","):
                continue
            # the MatMul / Gemm weights alone, block / group 32, MatMulNBits files on both sides
            for method, mopts in (("minmax", ()), ("minmax", (("zero_point", "integer"),)), ("symmetric", ()),
                                  ("gptq", (("grid", "symmetric"),)), ("mse", ())):
                out = Path(tmp) / "n.onnx"
                try:
                    quantize_file(src, out, QuantizeOptions(bits=bits, method=method, method_opts=mopts,
                                                            granularity=g, format="nbits", tensor_bits=others))
                except Exception as e:  # noqa: BLE001 - a row that cannot be made is said, not fatal
                    print(f"ganq {method} {bits}: {e}")
                    continue
                label = method + "".join(f"[{k}={v}]" for k, v in mopts)
                add(out, part="vs-onnxruntime", setting=f"ganq {label} {g} nbits", bits=bits)
            for algo in ("rtn-asym", "rtn-sym", "hqq"):
                out = Path(tmp) / "o.onnx"
                try:
                    ort_nbits(src, out, algo, bits, a.group)
                except Exception as e:  # noqa: BLE001
                    rows.append({"part": "vs-onnxruntime", "setting": f"onnxruntime {algo}", "bits": bits,
                                 "error": str(e).splitlines()[0][:200]})
                    save()
                    print(f"onnxruntime {algo} {bits}: {e}")
                    continue
                n = sum(1 for node in onnx.load(str(out)).graph.node if node.op_type == "MatMulNBits")
                add(out, part="vs-onnxruntime", setting=f"onnxruntime {algo} block {a.group}", bits=bits,
                    matmulnbits_nodes=n)
    fp32 = rows[0]["fid"]
    print(f"\n{a.model}: fp32 FID {fp32:.2f}")
    print("| part | bits | setting | FID | x fp32 | precision | recall | bytes |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows[1:]:
        if "fid" in r:
            print(f"| {r['part']} | {r['bits']} | {r['setting']} | {r['fid']:.2f} | {r['fid'] / fp32:.2f} | "
                  f"{r['precision']:.3f} | {r['recall']:.3f} | {r['bytes']:,} |")
        else:
            print(f"| {r['part']} | {r['bits']} | {r['setting']} | - ({r['error']}) | | | | |")


if __name__ == "__main__":
    main()
