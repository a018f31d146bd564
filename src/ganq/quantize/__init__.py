"""Quantize the weight initializers of an ONNX generator (pure numpy + onnx; never torch): plan -> solve -> emit.

    model, report = quantize_model(onnx.load("g.onnx"), QuantizeOptions(bits=4, method="mse", format="packed"))

plan (quantize.plan): which tensors, and for each its bits, method and granularity;
solve (quantize.methods): a method turns one weight into codes plus a decoder (Affine or Codebook);
emit (quantize.formats): a format stores codes and decoder in the graph (fake / int / packed).
"""

from __future__ import annotations

import gzip
import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper

from ganq._io import atomic_path
from ganq.errors import GanqError
from ganq.quantize.decoders import GRANULARITIES, Codebook
from ganq.quantize.fold_bn import fold_batchnorm
from ganq.quantize.formats import FORMATS, GraphBuilder
from ganq.quantize.methods import METHODS, SolveContext, make_method
from ganq.quantize.plan import FLOAT_BITS, Plan, check_bits, make_plan, read_plan_file
from ganq.quantize.select import opset
from ganq.spec import META_QUANT, read_metadata, write_metadata

TARGET_OPSET = 21  # UINT4 and per-axis DequantizeLinear; what `int` and `packed` want


@dataclass(frozen=True)
class QuantizeOptions:
    """Everything `ganq quantize` takes, validated once. method_opts: ((key, value), ...) for the method's config;
    tensor_bits: ((NAME | first | last, bits), ...); plan_file: a JSON plan with per-tensor overrides."""

    bits: int
    method: str = "minmax"
    method_opts: tuple = ()
    granularity: str = "tensor"
    format: str = "fake"
    fold_bn: bool = False
    include_bias: bool = False
    tensor_bits: tuple = ()
    plan_file: str | None = None
    keep_overridable: bool = False
    upgrade_opset: bool = True
    method_config: object = field(default=None, init=False, compare=False, repr=False)
    overrides: dict = field(default=None, init=False, compare=False, repr=False)

    def __post_init__(self):
        check_bits(self.bits)
        config = make_method(self.method, dict(self.method_opts))
        if self.bits != FLOAT_BITS:
            config.check_bits(self.bits)
        if self.granularity not in GRANULARITIES:
            raise GanqError(f"granularity must be one of {', '.join(GRANULARITIES)}, got {self.granularity!r}")
        FORMATS.get(self.format)
        object.__setattr__(self, "method_config", config)
        object.__setattr__(self, "overrides", read_plan_file(self.plan_file) if self.plan_file else {})


def _param_count(model: onnx.ModelProto) -> int:
    return sum(int(np.prod(i.dims, dtype=np.int64)) for i in model.graph.initializer
               if i.data_type == onnx.TensorProto.FLOAT)


def _check_data(init: onnx.TensorProto) -> np.ndarray:
    try:
        x = numpy_helper.to_array(init)
    except (ValueError, TypeError) as e:
        raise GanqError(f"initializer {init.name}: its data does not match its dims ({str(e)[:120]})") from None
    return x.astype(np.float32)


def legacy_inputs(model: onnx.ModelProto, keep: bool, notes: list[str]) -> None:
    """IR < 4 lists every initializer among the graph inputs; treat those as constants unless `keep`."""
    inits = {i.name for i in model.graph.initializer}
    listed = [i for i in model.graph.input if i.name in inits]
    if not listed:
        return
    if keep:
        notes.append(f"{len(listed)} initializers are graph inputs (overridable at run time): kept as inputs, not "
                     "quantized (--keep-overridable)")
        return
    if model.ir_version >= 4:
        notes.append(f"{len(listed)} initializers are also graph inputs (overridable); treated as constants and "
                     "removed from the inputs (--keep-overridable keeps them)")
    else:
        notes.append(f"IR version {model.ir_version}: its {len(listed)} initializers are listed as graph inputs; "
                     "treated as constants (--keep-overridable keeps them as inputs)")
    kept = [i for i in model.graph.input if i.name not in inits]
    del model.graph.input[:]
    model.graph.input.extend(kept)
    model.ir_version = max(model.ir_version, 4)


def _feed(model: onnx.ModelProto, seed: int = 0) -> dict | None:
    """Random inputs for every graph input (dynamic dims = 2), or None if an input is not float."""
    rng = np.random.default_rng(seed)
    inits = {i.name for i in model.graph.initializer}
    feed = {}
    for vi in model.graph.input:
        if vi.name in inits:
            continue
        tt = vi.type.tensor_type
        if tt.elem_type != onnx.TensorProto.FLOAT:
            return None
        shape = [d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else 2 for d in tt.shape.dim]
        feed[vi.name] = rng.standard_normal(shape).astype(np.float32)
    return feed


def _run(model: onnx.ModelProto, feed: dict):
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    return ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"]).run(None, feed)


def upgrade_opset(model: onnx.ModelProto, target: int, notes: list[str]) -> onnx.ModelProto:
    """onnx.version_converter to `target`, outputs checked against the original in onnxruntime."""
    from onnx import version_converter

    before = opset(model)
    try:
        new = version_converter.convert_version(model, target)
        new.ir_version = max(new.ir_version, onnx.helper.find_min_ir_version_for(list(new.opset_import)))
        onnx.checker.check_model(new)
    except Exception as e:  # the converter raises RuntimeError/ValidationError with long C++ messages
        raise GanqError(f"this format needs opset {target} and onnx.version_converter cannot upgrade the model from "
                        f"opset {before} ({str(e).strip().splitlines()[0][:160]}); use --format fake or "
                        "--no-upgrade-opset") from None
    feed = _feed(model)
    if feed is None:
        notes.append(f"opset {before} -> {target} (onnx.version_converter); outputs not compared (non-float inputs)")
        return new
    try:
        a, b = _run(model, feed), _run(new, feed)
    except Exception as e:
        raise GanqError(f"opset upgrade {before} -> {target}: onnxruntime cannot run the model to compare outputs "
                        f"({str(e).strip().splitlines()[0][:160]})") from None
    diff = max(float(np.max(np.abs(x - y))) if x.size else 0.0 for x, y in zip(a, b))
    if not diff <= 1e-5:
        raise GanqError(f"opset upgrade {before} -> {target} changed the outputs by {diff:.3g}; use --format fake "
                        "or --no-upgrade-opset")
    notes.append(f"opset {before} -> {target} (onnx.version_converter), outputs equal within {diff:.1e}")
    return new


def _ocs_rewrite(graph, node, target, sol, builder: GraphBuilder) -> list:
    """Nodes that feed `node` its data input with sol.split's channels repeated (Gather + Concat)."""
    x = node.input[0]
    idx = builder.init(f"{target.name}_split", np.array(sol.split, np.int64))
    gathered = builder.fresh(f"{target.name}_xdup")
    cat = builder.fresh(f"{target.name}_xsplit")
    nodes = [onnx.helper.make_node("Gather", [x, idx], [gathered], name=gathered, axis=target.x_axis),
             onnx.helper.make_node("Concat", [x, gathered], [cat], name=cat, axis=target.x_axis)]
    node.input[0] = cat
    return nodes


def quantize_model(model: onnx.ModelProto, options: QuantizeOptions, plan: Plan | None = None
                   ) -> tuple[onnx.ModelProto, dict]:
    """A quantized copy of model and its report (also stored as the `ganq.quant` metadata). `plan` overrides the
    one the options describe (it must name this model's tensors)."""
    if META_QUANT in read_metadata(model):
        raise GanqError("model is already quantized (it has ganq.quant metadata); quantize the fp32 model")
    notes: list[str] = []
    model = onnx.ModelProto.FromString(model.SerializeToString())
    legacy_inputs(model, options.keep_overridable, notes)
    folded = 0
    if options.fold_bn:
        model, folded = fold_batchnorm(model)
    v = opset(model)
    fmt = FORMATS.get(options.format)
    if options.bits != FLOAT_BITS and options.format != "fake" and v < TARGET_OPSET and options.upgrade_opset:
        model = upgrade_opset(model, TARGET_OPSET, notes)
        v = opset(model)
    if plan is None:
        plan = make_plan(model, options.bits, options.method_config, options.granularity, options.include_bias,
                         options.tensor_bits, options.overrides) if options.bits != FLOAT_BITS or \
            options.tensor_bits or options.overrides else Plan(())
    todo = [t for t in plan.tensors if t.quantized]
    if options.bits != FLOAT_BITS and not todo:
        hint = (" (its initializers are graph inputs; drop --keep-overridable to treat them as constants)"
                if options.keep_overridable else "")
        raise GanqError("model has no quantizable weights (float initializers feeding Conv, ConvTranspose, Gemm or "
                        f"MatMul){hint}")
    if todo and v < fmt.min_opset:
        raise GanqError(f"the {fmt.name} format needs opset >= {fmt.min_opset}; the model has {v} "
                        "(drop --no-upgrade-opset to upgrade it)")
    graph = model.graph
    inits = {i.name: i for i in graph.initializer}
    taken = set(inits) | {n for node in graph.node for n in list(node.input) + list(node.output)}
    taken |= {i.name for i in graph.input} | {o.name for o in graph.output}
    builder = GraphBuilder(taken)
    rows, replaced, before = [], set(), {}
    for tp in todo:
        t = tp.target
        x = _check_data(inits[t.name])
        if not np.all(np.isfinite(x)):
            raise GanqError(f"weight {t.name} holds NaN or infinity; fix the model before quantizing it")
        ctx = SolveContext(t.name, t.op_type, t.in_axis, t.x_axis, t.group)
        try:
            sol = tp.method.solve(x, tp.bits, tp.axis, ctx)
        except GanqError as e:
            raise GanqError(f"{t.name}: {e}") from None
        if sol.split:
            consumers = [i for i, n in enumerate(graph.node) if t.name in n.input]
            if t.consumers != 1 or len(consumers) != 1:
                raise GanqError(f"method ocs: weight {t.name} feeds {t.consumers} nodes; it can split only a weight "
                                "used once")
            before[consumers[0]] = _ocs_rewrite(graph, graph.node[consumers[0]], t, sol, builder)
        stored = fmt.emit(builder, t.name, sol, v)
        if options.format != "fake":
            replaced.add(t.name)
        ideal = int(np.ceil(sol.codes.size * tp.bits / 8)) + sol.decoder.nbytes(tp.bits)
        row = {"tensor": t.name, "op": t.op_type, "role": t.role, "shape": list(x.shape), "axis": sol.axis,
               "bits": tp.bits, "method": tp.method.name, "method_opts": tp.method.options(),
               "granularity": tp.granularity, "decoder": sol.decoder.kind,
               "params": int(x.size), "bytes_fp32": int(x.nbytes), "bytes_ideal": ideal,
               "bytes_stored": int(stored), "levels_used": sol.levels_used}
        if sol.split:
            row.update({"split_channels": len(sol.split), "params_stored": int(sol.codes.size),
                        "shape_stored": list(sol.codes.shape)})
        if sol.info:
            row["info"] = sol.info
        rows.append(row)
    for name, array in builder.replace.items():
        inits[name].CopyFrom(numpy_helper.from_array(array, name))
    if replaced or before:
        kept = [i for i in graph.initializer if i.name not in replaced]
        del graph.initializer[:]
        graph.initializer.extend(kept + builder.inits)
        nodes = list(builder.nodes)  # the decoders depend on initializers only: put them first
        for i, n in enumerate(graph.node):
            nodes.extend(before.get(i, []))
            nodes.append(n)
        del graph.node[:]
        graph.node.extend(nodes)

    total = _param_count(model) if options.format == "fake" else None
    quantized_params = sum(r["params"] for r in rows)
    all_params = total if total is not None else quantized_params + sum(
        int(np.prod(i.dims, dtype=np.int64)) for i in graph.initializer
        if i.data_type == onnx.TensorProto.FLOAT and i.name not in {n.name for n in builder.inits})
    if total is not None:  # OCS grows a fake weight; count the original parameters
        all_params -= sum(r.get("params_stored", r["params"]) - r["params"] for r in rows)
    other = all_params - quantized_params
    report = {"bits": options.bits, "method": options.method, "granularity": options.granularity,
              "format": options.format, "fold_bn": options.fold_bn, "bn_folded": folded,
              "include_bias": options.include_bias, "opset": v,
              "params": all_params, "params_quantized": quantized_params, "params_float": other,
              "bytes_fp32": 4 * all_params,
              "bytes_ideal": 4 * other + sum(r["bytes_ideal"] for r in rows),
              "tensors": rows}
    if options.method_opts:
        report["method_opts"] = options.method_config.options()
    if plan.mixed or any(r["bits"] != options.bits for r in rows):
        report["mixed"] = True
        report["avg_bits"] = (sum(r["bits"] * r["params"] for r in rows) / quantized_params) if rows else None
    if notes:
        report["notes"] = notes
    write_metadata(model, META_QUANT, json.dumps(report, sort_keys=True))
    try:
        onnx.checker.check_model(model, full_check=True)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as e:
        raise GanqError(f"quantized model fails onnx.checker: {str(e).splitlines()[0]}") from None
    return model, report


def load_model(path: str | Path, external_data: bool = True) -> onnx.ModelProto:
    """Load an ONNX file; external data must lie inside the model's folder (and is read if external_data)."""
    path = Path(path)
    if path.is_dir():
        raise GanqError(f"{path}: is a folder, not an ONNX file")
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


def quantize_file(src: str | Path, out: str | Path, options: QuantizeOptions, plan: Plan | None = None) -> dict:
    """Quantize file src into out (atomically); the report gains file and gzip sizes."""
    if Path(out).resolve() == Path(src).resolve():
        raise GanqError(f"{out}: is the input model; write the quantized model elsewhere")
    model, report = quantize_model(load_model(src), options, plan)
    data = model.SerializeToString()
    with atomic_path(out) as tmp:
        tmp.write_bytes(data)
    report.update({"source": str(src), "out": str(out), "bytes_source_file": Path(src).stat().st_size,
                   "bytes_file": len(data), "bytes_gzip": len(gzip.compress(data, compresslevel=9, mtime=0))})
    report["ratio_to_fp32"] = report["bytes_file"] / report["bytes_fp32"]
    return report


__all__ = ["QuantizeOptions", "quantize_model", "quantize_file", "load_model", "fold_batchnorm", "FORMATS",
           "METHODS", "FLOAT_BITS", "Plan", "make_plan", "Codebook"]
