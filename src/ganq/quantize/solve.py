"""Steps 3 and 4 of quantize_model, solve and emit, tensor by tensor in graph order: a method turns one weight into
codes plus a decoder (seeing its layer's inputs through calibration latents when it is calibrated), corrections
follow (quantize.correct), a method that rewrites its layer's input does so (OCS), and the format emits the codes
and decoder through the one GraphEdit."""

from __future__ import annotations

import functools

import time

import numpy as np
import onnx
from onnx import numpy_helper

from ganq.errors import GanqError, test_point
from ganq.quantize.columns import Unsupported, check_layer
from ganq.quantize.correct import correct
from ganq.quantize.edit import GraphEdit
from ganq.quantize.groups import solve_groups
from ganq.quantize.formats import FORMATS
from ganq.quantize.methods import SolveContext
from ganq.quantize.bn_decoder import fold_into_decoder
from ganq.quantize.ops import OPS, following_batchnorm, inferred_shapes
from ganq.quantize.options import QuantizeOptions


def check_data(init: onnx.TensorProto) -> np.ndarray:
    try:
        x = numpy_helper.to_array(init)
    except (ValueError, TypeError) as e:
        raise GanqError(f"initializer {init.name}: its data does not match its dims ({str(e)[:120]})") from None
    return x.astype(np.float32)


def calibrator(model, options: QuantizeOptions, todo, notes, data_root=None, what: str | None = None):
    """A Calibrator on the model being quantized when a method needs layer inputs or --recalibrate-bn is on, or
    always when `what` (the option that asks) is given (image inputs drawn from their data set's train split, looked
    up under data_root first)."""
    if what is None and (not todo or not (options.recalibrate_bn or any(tp.method.calibrated for tp in todo))):
        return None
    from ganq.onnx_io import check_spec, read_spec, sample_inputs
    from ganq.quantize.calibrate import Calibrator

    what = what or ("--recalibrate-bn" if options.recalibrate_bn else f"method {options.method}")
    try:
        spec = read_spec(model)
        check_spec(model, spec)
    except GanqError as e:
        raise GanqError(f"{what} draws calibration latents from the generator's prior, which its spec gives: {e}"
                        ) from None
    feed = sample_inputs(spec, options.calibration, options.calibration_seed, calibration=True, data_root=data_root)
    return Calibrator(model, spec, feed)


def _layer_inputs(graph, t, x, method, options, calib, notes):
    """(method to use, LayerStats or None, the consumer node or None) for weight t; a calibrated method falls back
    to round-to-nearest on its grid where the layer's input columns cannot be built (said in the notes)."""
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


def solve_and_emit(model, options: QuantizeOptions, todo, v: int, edit: GraphEdit, notes: list[str],
                   data_root=None, progress=None):
    """(the report's per-tensor rows, the Calibrator or None, seconds spent calibrating and solving, the end-to-end
    method's record or None). Every tensor is solved first; an end-to-end method (distill) then refines all of its
    tensors together; then each is emitted in the format."""
    solved, e2e_record = [], None
    graph = model.graph
    inits = edit.initializers
    fmt = FORMATS.get(options.format)
    rows = []
    calib = calibrator(model, options, todo, notes, data_root)
    seconds = {"calibrate": 0.0, "solve": 0.0}  # in the returned report only: the file stays deterministic
    for tp in todo:
        test_point("work")
        t = tp.target
        x = check_data(inits[t.name])
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
            sol = solve_groups(method, x, tp.bits, tp.axis, tp.group, ctx) if tp.group else \
                method.solve(x, tp.bits, tp.axis, ctx)
        except GanqError as e:
            raise GanqError(f"{t.name}: {e}") from None
        t2 = time.perf_counter()
        corrected = []
        if calib is not None:
            calib.weights[t.name] = sol.dequantize()
            if options.recalibrate_bn and node is not None:
                corrected = correct(edit, node, t, x, calib.weights[t.name], stats, calib, notes)
        seconds["calibrate"] += (t1 - t0) + (time.perf_counter() - t2)
        seconds["solve"] += t2 - t1
        solved.append((t, tp, x, sol, method, corrected))
    e2e = [i for i, item in enumerate(solved) if getattr(item[1].method, "end_to_end", False)]
    if e2e:
        t0 = time.perf_counter()
        refined, e2e_record, bn_stats = end_to_end(model, solved[e2e[0]][1].method, [solved[i] for i in e2e],
                                                   data_root, progress)
        changed = []
        for name, new in bn_stats.items():  # BatchNorm the engine re-estimated (only when it lowered its loss)
            old = numpy_helper.to_array(edit.initializers[name])
            new32 = np.asarray(new, np.float32).reshape(old.shape)
            edit.set_init(name, new32)
            changed.append({"tensor": name, "max_abs_change": float(np.max(np.abs(new32 - old))) if old.size else 0.0})
        if changed:
            e2e_record["batchnorm_changed"] = changed
        for i, sol in zip(e2e, refined):
            solved[i] = solved[i][:3] + (sol,) + solved[i][4:]
        seconds["train"] = time.perf_counter() - t0
    # tensor -> dims, inferred once, only when a BatchNorm fold looks through a shape op
    shapes = functools.cache(lambda: inferred_shapes(model)[1])
    for t, tp, x, sol, method, corrected in solved:
        if sol.split and method.rewrites_input:
            users = [n for n in graph.node if t.name in n.input]
            if t.consumers != 1 or len(users) != 1:
                raise GanqError(f"method {method.name}: weight {t.name} feeds {t.consumers} nodes; it can split only "
                                "a weight used once")
            edit.insert_before(users[0], method.rewrite(edit, users[0], t, sol))
        if options.bn_into_decoder and t.role == "weight":
            users = [n for n in graph.node if t.name in n.input]
            if t.direct and len(users) == 1 and users[0].op_type in OPS:
                sol = fold_into_decoder(edit, users[0], t, sol, notes, shapes)
        stored = fmt.emit(edit, t.name, sol, v)
        if options.format != "fake":
            edit.removed.add(t.name)
        rows.append(_row(t, tp, x, sol, method, stored, corrected))
    return rows, calib, seconds, e2e_record


def end_to_end(model, method, items, data_root, progress):
    """The refined Solutions of items [(t, tp, x, sol, method, corrected)] from the method's torch engine (named by
    method.engine, imported only here: the deploy side never imports torch), its record, and the BatchNorm
    statistics it re-estimated ({initializer: array}, empty when it kept them)."""
    import importlib

    from ganq.onnx_io import read_spec
    from ganq.quantize.decoders import Affine, Solution

    spec = read_spec(model)
    tensors = []
    for t, tp, x, sol, m, _ in items:
        if not isinstance(sol.decoder, Affine) or sol.split:
            raise GanqError(f"method {method.name}: {t.name}'s start ({m.name}) is not a plain affine grid")
        d = sol.decoder
        tensors.append({"name": t.name, "codes": sol.codes, "scale": d.scale, "offset": d.offset,
                        "zero_point": d.zero_point, "bits": sol.bits, "group": sol.group, "axis": sol.axis})
    module, _, fn = method.engine.partition(":")
    refine = getattr(importlib.import_module(module), fn)
    out, rec, bn_stats = refine(model, spec, tensors, method.options(), data_root=data_root, progress=progress)
    sols = []
    for (t, tp, x, sol, m, _), r in zip(items, out):
        d = sol.decoder
        scale, offset = _fit(r["scale"], d.scale), _fit(r["offset"], d.offset)
        zp = d.zero_point if scale.shape == d.scale.shape else \
            np.broadcast_to(d.zero_point, scale.shape).astype(d.zero_point.dtype)
        sols.append(Solution(r["codes"].astype(sol.codes.dtype), Affine(scale, offset, zp), sol.bits, sol.axis,
                             info={**(sol.info or {}), "distilled": True}, group=sol.group))
    return sols, rec, bn_stats


def _fit(a: np.ndarray, like: np.ndarray) -> np.ndarray:
    """An engine's grid array back in the decoder's shape where the sizes agree (the engine learns the grid in the
    broadcast shape of scale, offset and zero point; the init's own arrays come back when its state is kept)."""
    return a.reshape(like.shape) if a.size == like.size else a


def _row(t, tp, x, sol, method, stored, corrected) -> dict:
    ideal = int(np.ceil(sol.codes.size * tp.bits / 8)) + sol.decoder.nbytes(tp.bits)
    counts = np.bincount(sol.codes.reshape(-1).astype(np.int64)) / sol.codes.size
    counts = counts[counts > 0]
    row = {"tensor": t.name, "op": t.op_type, "role": t.role, "shape": list(x.shape), "axis": sol.axis,
           "bits": tp.bits, "method": method.name, "method_opts": method.options(),
           "granularity": tp.granularity, "decoder": sol.decoder.kind,
           "params": int(x.size), "bytes_fp32": int(x.nbytes), "bytes_ideal": ideal,
           "bytes_stored": int(stored), "levels_used": sol.levels_used,
           # the codes' empirical entropy: bits a weight that an entropy coder would need (the information held)
           "entropy_bits": float(-(counts * np.log2(counts)).sum())}
    if method is not tp.method:
        row["fallback_from"] = tp.method.name
    if sol.split:
        row.update({"split_channels": len(sol.split), "params_stored": int(sol.codes.size),
                    "shape_stored": list(sol.codes.shape)})
    if sol.info:
        row["info"] = sol.info
    if corrected:
        row["corrected"] = corrected
    return row
