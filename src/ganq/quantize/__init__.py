"""Quantize the weight initializers of an ONNX generator to k bits (pure numpy + onnx; never torch).

    model, report = quantize_model(onnx.load("g.onnx"), QuantizeOptions(bits=4, format="packed"))
"""

from __future__ import annotations

import gzip
import json
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper

from ganq._io import atomic_path
from ganq.errors import GanqError
from ganq.quantize.fold_bn import fold_batchnorm
from ganq.quantize.formats import FORMATS, GraphBuilder, emit_int, emit_packed
from ganq.quantize.schemes import GRANULARITIES, METHODS, make
from ganq.quantize.select import find_targets, opset
from ganq.spec import META_QUANT, read_metadata, write_metadata

FLOAT_BITS = 32


@dataclass(frozen=True)
class QuantizeOptions:
    bits: int
    method: str = "minmax"
    granularity: str = "tensor"
    format: str = "fake"
    fold_bn: bool = False
    include_bias: bool = False

    def __post_init__(self):
        if self.bits != FLOAT_BITS:
            make(self.method, self.bits, self.granularity)  # validates bits, method and granularity
        if self.method not in METHODS:
            raise GanqError(f"unknown method {self.method!r}; choose one of {', '.join(METHODS)}")
        if self.granularity not in GRANULARITIES:
            raise GanqError(f"granularity must be one of {', '.join(GRANULARITIES)}, got {self.granularity!r}")
        if self.format not in FORMATS:
            raise GanqError(f"unknown format {self.format!r}; choose one of {', '.join(FORMATS)}")


def _param_count(model: onnx.ModelProto) -> int:
    return sum(int(np.prod(i.dims, dtype=np.int64)) for i in model.graph.initializer
               if i.data_type == onnx.TensorProto.FLOAT)


def quantize_model(model: onnx.ModelProto, options: QuantizeOptions) -> tuple[onnx.ModelProto, dict]:
    """A quantized copy of model and its report (also stored as the `ganq.quant` metadata)."""
    if META_QUANT in read_metadata(model):
        raise GanqError("model is already quantized (it has ganq.quant metadata); quantize the fp32 model")
    folded = 0
    if options.fold_bn:
        model, folded = fold_batchnorm(model)
    else:
        model = onnx.ModelProto.FromString(model.SerializeToString())
    v = opset(model)
    targets = [] if options.bits == FLOAT_BITS else find_targets(model, options.include_bias, options.granularity)
    if options.bits != FLOAT_BITS and not targets:
        raise GanqError("model has no quantizable weights (float initializers feeding Conv, ConvTranspose, Gemm or "
                        "MatMul)")
    graph = model.graph
    inits = {i.name: i for i in graph.initializer}
    taken = set(inits) | {n for node in graph.node for n in list(node.input) + list(node.output)}
    taken |= {i.name for i in graph.input} | {o.name for o in graph.output}
    builder = GraphBuilder(taken)
    rows, replaced = [], set()
    for t in targets:
        x = numpy_helper.to_array(inits[t.name]).astype(np.float32)
        if not np.all(np.isfinite(x)):
            raise GanqError(f"weight {t.name} holds NaN or infinity; fix the model before quantizing it")
        scheme = make(options.method, options.bits, "tensor" if t.role == "bias" else options.granularity)
        q = scheme.quantize(x, axis=t.axis)
        if options.format == "fake":
            inits[t.name].CopyFrom(numpy_helper.from_array(q.dequantize(), t.name))
            stored = x.nbytes
        else:
            stored = (emit_int if options.format == "int" else emit_packed)(builder, t.name, q, v)
            replaced.add(t.name)
        rows.append({"tensor": t.name, "op": t.op_type, "role": t.role, "shape": list(x.shape),
                     "axis": q.axis, "params": int(x.size), "bytes_fp32": int(x.nbytes),
                     "bytes_ideal": int(np.ceil(x.size * options.bits / 8)) + (8 * q.scale.size),
                     "bytes_stored": int(stored), "levels_used": int(np.unique(q.codes).size)})
    if replaced:
        kept = [i for i in graph.initializer if i.name not in replaced]
        del graph.initializer[:]
        graph.initializer.extend(kept + builder.inits)
        nodes = builder.nodes + list(graph.node)  # the decoders depend on initializers only: put them first
        del graph.node[:]
        graph.node.extend(nodes)

    total = _param_count(model) if options.format == "fake" else None
    quantized_params = sum(r["params"] for r in rows)
    all_params = total if total is not None else quantized_params + sum(
        int(np.prod(i.dims, dtype=np.int64)) for i in graph.initializer
        if i.data_type == onnx.TensorProto.FLOAT and i.name not in {n.name for n in builder.inits})
    other = all_params - quantized_params
    report = {"bits": options.bits, "method": options.method, "granularity": options.granularity,
              "format": options.format, "fold_bn": options.fold_bn, "bn_folded": folded,
              "include_bias": options.include_bias, "opset": v,
              "params": all_params, "params_quantized": quantized_params, "params_float": other,
              "bytes_fp32": 4 * all_params,
              "bytes_ideal": 4 * other + sum(r["bytes_ideal"] for r in rows),
              "tensors": rows}
    write_metadata(model, META_QUANT, json.dumps(report, sort_keys=True))
    try:
        onnx.checker.check_model(model, full_check=True)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as e:
        raise GanqError(f"quantized model fails onnx.checker: {str(e).splitlines()[0]}") from None
    return model, report


def load_model(path: str | Path, external_data: bool = True) -> onnx.ModelProto:
    """Load an ONNX file; external data must lie inside the model's folder (and is read if external_data)."""
    path = Path(path)
    if not path.is_file():
        raise GanqError(f"{path}: no such file")
    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as e:  # onnx raises DecodeError and friends from protobuf
        raise GanqError(f"{path}: not an ONNX model ({type(e).__name__})") from None
    if not model.graph.node:
        raise GanqError(f"{path}: not an ONNX model (empty or truncated: no graph nodes)")
    base = path.resolve().parent
    for t in model.graph.initializer:
        if t.data_location == onnx.TensorProto.EXTERNAL:
            loc = dict((e.key, e.value) for e in t.external_data).get("location", "")
            target = (base / loc).resolve()
            if base not in target.parents:
                raise GanqError(f"{path}: external data of {t.name} points outside the model's folder ({loc})")
            if not target.is_file():
                raise GanqError(f"{path}: external data file {loc} of {t.name} is missing")
    if not external_data:
        return model
    try:
        onnx.load_external_data_for_model(model, str(base))
    except Exception as e:
        raise GanqError(f"{path}: cannot read its external data ({type(e).__name__})") from None
    return model


def quantize_file(src: str | Path, out: str | Path, options: QuantizeOptions) -> dict:
    """Quantize file src into out (atomically); the report gains file and gzip sizes."""
    model, report = quantize_model(load_model(src), options)
    data = model.SerializeToString()
    with atomic_path(out) as tmp:
        tmp.write_bytes(data)
    report.update({"source": str(src), "out": str(out), "bytes_source_file": Path(src).stat().st_size,
                   "bytes_file": len(data), "bytes_gzip": len(gzip.compress(data, compresslevel=9, mtime=0))})
    report["ratio_to_fp32"] = report["bytes_file"] / report["bytes_fp32"]
    return report


__all__ = ["QuantizeOptions", "quantize_model", "quantize_file", "load_model", "fold_batchnorm", "FORMATS"]
