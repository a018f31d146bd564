"""Issue 23's engine choice: ganq.train.onnx_torch against onnx2torch (pip install onnx2torch; not a dependency of
ganq) on the zoo generators and the bring-your-own families of tests/fixtures/families.py (TorchScript exporter,
opsets 13 and 17, and the dynamo exporter): does it rebuild the graph, how far is it from onnxruntime, and can the
quantized forward pass address each weight initializer by its ONNX name. Prints a table, writes JSON.

    .venv/bin/python benchmarks/onnx_torch_coverage.py --out benchmarks/results/onnx_torch_coverage.json
"""

from __future__ import annotations

import argparse
import glob
import json
import sys
import tempfile
import warnings
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))


def models(tmp: Path):
    from fixtures.families import FAMILIES, export

    from ganq.onnx_io import describe
    from ganq.spec import parse_input_option

    for p in sorted(glob.glob(str(ROOT / "zoo" / "*.onnx"))):
        yield Path(p).stem, Path(p)
    for name in FAMILIES:
        for tag, kw in (("o17", {}), ("o13", {"opset": 13}), ("dynamo", {"dynamo": True})):
            p = tmp / f"{name}-{tag}.onnx"
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    export(name, p, fixed_batch=1 if name == "stylegan2" else None, **kw)
            except Exception:  # noqa: BLE001  the exporter itself refuses (fused StyleGAN2 at opset 13)
                continue
            describe(p, p, inputs=dict(parse_input_option(a) for a in FAMILIES[name][2][1::2]))
            yield f"{name} ({tag})", p


def feed_of(model):
    from ganq.onnx_io import fixed_batch, probe_inputs, read_spec

    if any(p.key == "ganq.spec" for p in model.metadata_props):
        spec = read_spec(model)
        return probe_inputs(spec, fixed_batch(model, spec) or 4)
    dims = [d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim[1:]]
    return {model.graph.input[0].name: np.random.default_rng(0).uniform(-1, 1, (4, *dims)).astype(np.float32)}


def ganq_engine(model, feed):
    import torch

    from ganq.train.onnx_torch import OnnxTorch

    net = OnnxTorch(model)
    with torch.no_grad():
        out = net(feed)[0].numpy()
    return out, True  # every initializer is net.tensors[name]


def onnx2torch_engine(model, feed):
    import torch
    from onnx2torch import convert

    net = convert(model).eval()
    with torch.no_grad():
        out = net(*[torch.from_numpy(v) for v in feed.values()])
    out = out[0] if isinstance(out, (tuple, list)) else out
    # can a weight be swapped by its ONNX name? onnx2torch keeps initializers under module attributes
    names = {i.name for i in model.graph.initializer}
    state = set(net.state_dict())
    addressable = all(any(n.replace(".", "_") in k or n in k for k in state) for n in names if n)
    return out.numpy(), addressable


def main():
    from ganq.onnx_io import load_model, session

    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="benchmarks/results/onnx_torch_coverage.json")
    a = ap.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name, path in models(Path(tmp)):
            m = load_model(path)
            feed = feed_of(m)
            want = session(m).run(None, feed)[0]
            row = {"model": name}
            for eng, fn in (("ganq", ganq_engine), ("onnx2torch", onnx2torch_engine)):
                try:
                    with warnings.catch_warnings():
                        warnings.simplefilter("ignore")
                        got, addressable = fn(m, feed)
                    row[eng] = {"ok": True, "max_abs_diff": float(np.abs(got - want).max()),
                                "names": addressable}
                except Exception as e:  # noqa: BLE001  a converter's refusal is the measurement
                    row[eng] = {"ok": False, "error": f"{type(e).__name__}: {str(e).splitlines()[0][:90]}"}
            rows.append(row)
            print(json.dumps(row), flush=True)
    Path(a.out).write_text(json.dumps(rows, indent=1) + "\n")

    def cell(r):
        if not r["ok"]:
            return f"fails ({r['error'][:60]})"
        return f"{r['max_abs_diff']:.1e}" + ("" if r["names"] else ", weights not by name")
    print("\n| model | ganq.train.onnx_torch | onnx2torch |\n|---|---|---|")
    for r in rows:
        print(f"| {r['model']} | {cell(r['ganq'])} | {cell(r['onnx2torch'])} |")
    for eng in ("ganq", "onnx2torch"):
        ok = sum(r[eng]["ok"] and r[eng]["max_abs_diff"] <= 1e-4 for r in rows)
        print(f"{eng}: {ok}/{len(rows)} within 1e-4 of onnxruntime")


if __name__ == "__main__":
    main()
