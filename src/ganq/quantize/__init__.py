"""Quantize the weight initializers of an ONNX generator (pure numpy + onnx; never torch): plan -> solve -> emit.

    model, report = quantize_model(onnx.load("g.onnx"), QuantizeOptions(bits=4, method="mse", format="packed"))

plan (quantize.plan): which tensors, and for each its bits, method and granularity;
solve (quantize.methods): a method turns one weight into codes plus a decoder (Affine or Codebook);
emit (quantize.formats): a format stores codes and decoder in the graph (fake / int / packed).
"""

from __future__ import annotations

import gzip
import json
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper

from ganq._io import atomic_path
from ganq.errors import GanqError, check_range
from ganq.quantize.decoders import GRANULARITIES, Codebook
from ganq.quantize.fold_bn import fold_batchnorm, set_bias_input
from ganq.quantize.formats import FORMATS, GraphBuilder
from ganq.quantize.methods import METHODS, SolveContext, make_method
from ganq.quantize.plan import FLOAT_BITS, Plan, check_bits, make_plan, read_plan_file
from ganq.quantize.select import opset
from ganq.onnx_io import META_QUANT, load_model, random_feed, read_metadata, run, write_metadata

TARGET_OPSET = 21  # UINT4 and per-axis DequantizeLinear; what `int` and `packed` want
MAX_CALIBRATION = 1_000_000


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
    calibration: int = 1024
    calibration_seed: int = 0
    recalibrate_bn: bool = False
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
        check_range("--calibration", self.calibration, 1, MAX_CALIBRATION)
        check_range("--calibration-seed", self.calibration_seed, 0, 2 ** 31 - 1)
        if self.recalibrate_bn and config.name == "ocs":
            raise GanqError("--recalibrate-bn does not combine with method ocs (it changes the layers' input shapes)")
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
    feed = random_feed(model)
    if feed is None:
        notes.append(f"opset {before} -> {target} (onnx.version_converter); outputs not compared (non-float inputs)")
        return new
    try:
        a, b = run(model, feed), run(new, feed)
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


def _calibrator(model, options: QuantizeOptions, todo, notes):
    """A Calibrator on the model being quantized when a method needs layer inputs or --recalibrate-bn is on."""
    if not todo or not (options.recalibrate_bn or any(tp.method.calibrated for tp in todo)):
        return None
    from ganq.onnx_io import read_spec, sample_latents
    from ganq.quantize.calibrate import Calibrator

    what = "--recalibrate-bn" if options.recalibrate_bn else f"method {options.method}"
    try:
        spec = read_spec(model)
    except GanqError as e:
        raise GanqError(f"{what} draws calibration latents from the generator's prior, which its spec gives: {e}"
                        ) from None
    z = sample_latents(spec, options.calibration, options.calibration_seed, calibration=True)
    return Calibrator(model, spec.input_name, z)


def _layer_inputs(graph, t, x, method, options, calib, notes):
    """(method to use, LayerStats or None, the consumer node or None) for weight t; a calibrated method falls back
    to round-to-nearest on its grid where the layer's input columns cannot be built (said in the notes)."""
    from ganq.quantize.calibrate import Unsupported, check_layer, following_batchnorm

    nodes = [n for n in graph.node if t.name in n.input]
    try:
        if t.consumers != 1 or len(nodes) != 1:
            raise Unsupported(f"the weight feeds {t.consumers} nodes")
        node = nodes[0]
        check_layer(node, x.shape)
        need = method.calibrated or (options.recalibrate_bn and following_batchnorm(graph, node) is None)
        stats = calib.layer_stats(node, x.shape, hessian=method.calibrated) if need else None
        return method, stats, node
    except Unsupported as e:
        if method.calibrated:
            fb = method.fallback()
            notes.append(f"{t.name}: {method.name} cannot build this layer's input columns ({e}); rounded to "
                         f"nearest on its {fb.name} grid")
            method = fb
        if options.recalibrate_bn:
            notes.append(f"{t.name}: not recalibrated ({e})")
        return method, None, None


def _change(old: np.ndarray, new: np.ndarray) -> float:
    return float(np.max(np.abs(new.astype(np.float64) - old.astype(np.float64)))) if old.size else 0.0


def _recalibrate(graph, inits, node, t, w, w_hat, stats, calib, builder, notes) -> list[dict]:
    """After weight t is quantized: re-estimate the BatchNormalization after its node from the calibration latents
    through the quantized graph, or else correct the node's bias, b <- b - E[(W~ - W) x]. Returns what changed."""
    from ganq.quantize.calibrate import following_batchnorm
    from ganq.quantize.decoders import rows as as_rows

    uses = {}
    for n in graph.node:
        for i in set(n.input):
            uses[i] = uses.get(i, 0) + 1
    bn = following_batchnorm(graph, node)
    if bn is not None:
        names = [bn.input[3], bn.input[4]] if len(bn.input) >= 5 else []
        if len(names) != 2 or any(n not in inits or uses.get(n, 0) != 1 for n in names):
            notes.append(f"{t.name}: BatchNormalization {bn.name} not re-estimated (its statistics are not "
                         "initializers of its own)")
            return []
        mean, var = calib.channel_moments(bn.input[0])
        out = []
        for name, new, kind in zip(names, (mean, var), ("bn_mean", "bn_var")):
            old = numpy_helper.to_array(inits[name])
            new32 = new.astype(np.float32).reshape(old.shape)
            inits[name].CopyFrom(numpy_helper.from_array(new32, name))
            out.append({"tensor": name, "kind": kind, "node": bn.name, "max_abs_change": _change(old, new32)})
        return out
    if stats is None:
        return []
    delta = (as_rows(w_hat, t.axis).astype(np.float64) - as_rows(w, t.axis).astype(np.float64)) @ stats.mean
    op = node.op_type
    if op == "MatMul":
        name = builder.fresh(f"{t.name}_bias_correction")
        mid = builder.fresh(f"{node.output[0]}_uncorrected")
        b = (-delta).astype(np.float32)
        graph.initializer.append(numpy_helper.from_array(b, name))
        inits[name] = graph.initializer[-1]
        add = onnx.helper.make_node("Add", [mid, name], [node.output[0]], name=builder.fresh(f"{name}_add"))
        i = list(graph.node).index(node)
        node.output[0] = mid
        graph.node.insert(i + 1, add)
        return [{"tensor": name, "kind": "bias_added", "node": add.name, "max_abs_change": _change(b * 0, b)}]
    beta = 1.0
    if op == "Gemm":
        beta = float(next((onnx.helper.get_attribute_value(a) for a in node.attribute if a.name == "beta"), 1.0))
        if beta == 0:
            notes.append(f"{t.name}: Gemm with beta 0, bias not corrected")
            return []
    if len(node.input) >= 3 and node.input[2]:
        name = node.input[2]
        if name not in inits or uses.get(name, 0) != 1:
            notes.append(f"{t.name}: bias {name} is not an initializer of this node alone; not corrected")
            return []
        old = numpy_helper.to_array(inits[name])
        if old.size != delta.size:
            notes.append(f"{t.name}: bias {name} has shape {list(old.shape)}, not one value per output channel; "
                         "not corrected")
            return []
        new = (old.astype(np.float64) - (delta / beta).reshape(old.shape)).astype(np.float32)
        inits[name].CopyFrom(numpy_helper.from_array(new, name))
        return [{"tensor": name, "kind": "bias", "node": node.name, "max_abs_change": _change(old, new)}]
    name = builder.fresh(f"{t.name}_bias")
    new = (-delta / beta).astype(np.float32)
    graph.initializer.append(numpy_helper.from_array(new, name))
    inits[name] = graph.initializer[-1]
    set_bias_input(node, name)
    return [{"tensor": name, "kind": "bias_added", "node": node.name, "max_abs_change": _change(new * 0, new)}]


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
    calib = _calibrator(model, options, todo, notes)
    seconds = {"calibrate": 0.0, "solve": 0.0}  # in the returned report only: the file stays deterministic
    for tp in todo:
        t = tp.target
        x = _check_data(inits[t.name])
        if not np.all(np.isfinite(x)):
            raise GanqError(f"weight {t.name} holds NaN or infinity; fix the model before quantizing it")
        method, stats, node = tp.method, None, None
        t0 = time.perf_counter()
        if calib is not None and t.role == "weight":
            method, stats, node = _layer_inputs(graph, t, x, method, options, calib, notes)
        elif method.calibrated:
            method = method.fallback()
        ctx = SolveContext(t.name, t.op_type, t.in_axis, t.x_axis, t.group, t.axis,
                           stats.hessian if stats is not None and method.calibrated else None)
        t1 = time.perf_counter()
        try:
            sol = method.solve(x, tp.bits, tp.axis, ctx)
        except GanqError as e:
            raise GanqError(f"{t.name}: {e}") from None
        t2 = time.perf_counter()
        corrected = []
        if calib is not None:
            calib.weights[t.name] = sol.dequantize()
            if options.recalibrate_bn and node is not None:
                corrected = _recalibrate(graph, inits, node, t, x, calib.weights[t.name], stats, calib, builder,
                                         notes)
        seconds["calibrate"] += (t1 - t0) + (time.perf_counter() - t2)
        seconds["solve"] += t2 - t1
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
               "bits": tp.bits, "method": method.name, "method_opts": method.options(),
               "granularity": tp.granularity, "decoder": sol.decoder.kind,
               "params": int(x.size), "bytes_fp32": int(x.nbytes), "bytes_ideal": ideal,
               "bytes_stored": int(stored), "levels_used": sol.levels_used}
        if method is not tp.method:
            row["fallback_from"] = tp.method.name
        if sol.split:
            row.update({"split_channels": len(sol.split), "params_stored": int(sol.codes.size),
                        "shape_stored": list(sol.codes.shape)})
        if sol.info:
            row["info"] = sol.info
        if corrected:
            row["corrected"] = corrected
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
    if calib is not None:
        report["calibration"] = {"latents": options.calibration, "seed": options.calibration_seed,
                                 "forward_passes": calib.passes, "recalibrate_bn": options.recalibrate_bn}
    if notes:
        report["notes"] = notes
    write_metadata(model, META_QUANT, json.dumps(report, sort_keys=True))
    try:
        onnx.checker.check_model(model, full_check=True)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as e:
        raise GanqError(f"quantized model fails onnx.checker: {str(e).splitlines()[0]}") from None
    report = dict(report, seconds={k: round(v, 3) for k, v in seconds.items()})
    return model, report


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
