"""quantize_model as named steps, each in a module of its own:

    prepare (quantize.prepare)  a copy in the form the steps need: legacy inputs, BatchNorm folded, the opset
    plan    (quantize.plan)     which tensors, and for each its bits, method and granularity (from the op table)
    solve   (quantize.solve)    a method turns one weight into codes plus a decoder; calibrated ones see the layer's
                                inputs through calibration latents
    correct (quantize.correct)  BatchNorm re-estimation / bias correction (--recalibrate-bn)
    emit    (quantize.formats)  a format stores codes and decoder (fake / int / packed) through one GraphEdit,
                                committed once
    activations (quantize.activations)  --activations only: QDQ pairs on the activations, calibrated through the
                                weight-quantized graph
    record  (quantize.record)   the size report as `ganq.quant` metadata; onnx.checker
"""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper

from ganq.errors import GanqError
from ganq.onnx_io import load_model, save_model
from ganq.quantize.edit import GraphEdit
from ganq.quantize.ops import weight_params
from ganq.quantize.options import QuantizeOptions
from ganq.quantize.plan import FLOAT_BITS, Plan, make_plan
from ganq.quantize.prepare import check_opset, prepare
from ganq.quantize.record import record
from ganq.quantize.solve import solve_and_emit


def quantize_model(model: onnx.ModelProto, options: QuantizeOptions, plan: Plan | None = None, data_root=None,
                   progress=None) -> tuple[onnx.ModelProto, dict]:
    """A quantized copy of model and its report (also stored as the `ganq.quant` metadata). `plan` overrides the
    one the options describe (it must name this model's tensors); data_root: where calibration looks first for the
    data set of an image input; progress: called as progress(step, steps, loss, best) by an end-to-end method."""
    notes: list[str] = []
    source = model
    model, folded, v = prepare(model, options, notes)
    sim = None
    if options.activations and (options.method_config.calibrated or options.recalibrate_bn):
        # calibrated methods (and bias correction) see the activations quantized: pairs from a round-to-nearest
        # pass sit in the graph while they calibrate, then make way for the final pairs (quantize.activations)
        from ganq.quantize.activations import simulate_activations

        sim = simulate_activations(model, source, options, data_root)
    if plan is None:
        plan = make_plan(model, options.bits, options.method_config, options.granularity, options.include_bias,
                         options.tensor_bits, options.overrides) if options.bits != FLOAT_BITS or \
            options.tensor_bits or options.overrides else Plan(())
    todo = [t for t in plan.tensors if t.quantized]
    if options.bits != FLOAT_BITS and plan.tensors and not todo:
        notes.append("the plan keeps every weight at 32 bits: the file is a float copy")
    if options.bits != FLOAT_BITS and not plan.tensors:
        hint = (" (its initializers are graph inputs; drop --keep-overridable to treat them as constants)"
                if options.keep_overridable else "")
        raise GanqError("model has no quantizable weights (float initializers feeding Conv, ConvTranspose, Gemm or "
                        f"MatMul){hint}")
    check_opset(v, options, todo)
    if options.float_overrides:
        from ganq.quantize.float_bits import check_names

        check_names(model, options.float_overrides, {t.target.name for t in todo})
    weights = weight_params(model)
    edit = GraphEdit(model.graph)
    rows, calib, seconds, e2e = solve_and_emit(model, options, todo, v, edit, notes, data_root, progress)
    extra, timed = {}, {}
    if options.bn_into_decoder:
        extra["bn_into_decoder"] = len(edit.folds)
    if e2e is not None:  # the file holds what made it (deterministic for a seed); the times only the returned report
        extra["distill"] = {k: val for k, val in e2e.items() if k not in ("seconds", "curve")}
        extra["distill"]["heldout_curve"] = thin([[c["step"], round(c["heldout"], 5)] for c in e2e["curve"]])
        timed["distill_curve"] = e2e["curve"]
    edit.commit()
    if any(n.domain == "com.microsoft" for n in model.graph.node) and \
            not any(o.domain == "com.microsoft" for o in model.opset_import):
        model.opset_import.append(onnx.helper.make_opsetid("com.microsoft", 1))  # MatMulNBits (--format nbits)
    if options.activations:  # on the weight-quantized graph: the ranges are what the integer file sees
        from ganq.quantize.activations import quantize_activations, remove_pairs
        from ganq.quantize.solve import calibrator

        if sim is not None:
            remove_pairs(model, sim)

        extra["activations"] = quantize_activations(
            model, options, calibrator(model, options, todo, notes, data_root, what="--activations"))
    f16 = None
    if options.float_bits != 32 or options.float_overrides:
        from ganq.quantize.float_bits import check_float16, to_float16, widths

        before = onnx.ModelProto.FromString(model.SerializeToString())
        keep = {r["tensor"] for r in rows} if options.format == "fake" else set()  # x_hat stays on its grid
        # the weights' decoders (float16 even at --float-bits 8), by weight: GraphEdit names them WEIGHT_...
        decoder_names = {i.name for i in edit.inits}
        decoders_of = {r["tensor"]: {d for d in decoder_names if d.startswith(r["tensor"] + "_")} for r in rows}
        width = widths(model, options.float_bits, options.float_overrides, decoder_names, decoders_of, keep)
        keep |= {n for n, b in width.items() if b == 32}
        int8 = {n for n, b in width.items() if b == 8}
        f16 = {"tensors": to_float16(model, keep, int8 or None),
               **check_float16(before, model, min(width.values(), default=32))}
        if options.float_overrides:
            f16["per_tensor"] = dict(options.float_overrides)
    if f16 is not None:
        # the codes and decoders as stored now (their floats narrowed): what the size report's parts add up
        names = {i.name for i in edit.inits}
        coded = sum(len(i.raw_data) if i.raw_data else numpy_helper.to_array(i).nbytes
                    for i in model.graph.initializer if i.name.removesuffix("_f16").removesuffix("_i8") in names)
        extra.update({"float_bits": options.float_bits, "float16": f16, "bytes_coded": int(coded)})
    report = record(model, options, plan, rows, edit, folded, v, calib, notes, weights, extra)
    report = dict(report, seconds={k: round(t, 3) for k, t in seconds.items()}, **timed)
    return model, report


CURVE_POINTS = 17  # the held-out curve the file keeps: enough to see it flatten, a few hundred bytes


def thin(curve: list, points: int = CURVE_POINTS) -> list:
    """At most `points` entries of curve, evenly spaced, the first and the last always kept."""
    if len(curve) <= points:
        return curve
    idx = sorted({round(i * (len(curve) - 1) / (points - 1)) for i in range(points)})
    return [curve[i] for i in idx]


def check_output(src, out, force: bool) -> None:
    """The output policy before any work: not the input model; an existing file only with force."""
    from ganq._io import check_out

    if Path(out).resolve() == Path(src).resolve():
        raise GanqError(f"{out}: is the input model; write the quantized model elsewhere")
    check_out(out, force, [src])


def quantize_file(src: str | Path, out: str | Path, options: QuantizeOptions, plan: Plan | None = None,
                  replace: bool = True, sizes: bool = False, data_root=None, progress=None) -> dict:
    """Quantize file src into out (atomically); the report gains file and gzip sizes and the file in parts (codes,
    decoders, the rest) beside the codes' entropy bound; sizes: also xz -9e (over a second for a 3 MB file: the
    command line and the size benchmark ask for it, the sweep and the mixed search do not)."""
    if Path(out).resolve() == Path(src).resolve():
        raise GanqError(f"{out}: is the input model; write the quantized model elsewhere")
    model, report = quantize_model(load_model(src), options, plan, data_root, progress)
    data = save_model(model, out, replace)
    report.update({"source": str(src), "out": str(out), "bytes_source_file": Path(src).stat().st_size,
                   "bytes_file": len(data), "bytes_gzip": len(gzip.compress(data, compresslevel=9, mtime=0))})
    if sizes:
        import lzma
        report["bytes_xz"] = len(lzma.compress(data, preset=9 | lzma.PRESET_EXTREME))
    from ganq.quantize.formats import row_code_bytes

    quantized = report["tensors"]
    codes = sum(row_code_bytes(r, options.format, report["opset"]) for r in quantized)
    stored = report.get("bytes_coded", sum(r["bytes_stored"] for r in quantized))
    # the file in three parts: the codes, their decoders, and the rest (floats that are not weights, the graph)
    report.update({"bytes_codes": int(codes), "bytes_decoders": int(stored - codes),
                   "bytes_other": int(len(data) - stored)})
    report["bytes_entropy_codes"] = int(sum(np.ceil(r["entropy_bits"] * r.get("params_stored", r["params"]) / 8)
                                            for r in quantized))
    report["ratio_to_fp32"] = report["bytes_file"] / report["bytes_fp32"]
    return report


