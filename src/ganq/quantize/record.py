"""Step 6 of quantize_model, record: the size report, stored as the `ganq.quant` metadata, and the checker."""

from __future__ import annotations

import json

import numpy as np
import onnx

from ganq.errors import GanqError
from ganq.onnx_io import META_QUANT, write_metadata


FLOATS = (onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16, onnx.TensorProto.INT8)  # what --float-bits 16 / 8 stored


def _param_count(model: onnx.ModelProto) -> int:
    return sum(int(np.prod(i.dims, dtype=np.int64)) for i in model.graph.initializer if i.data_type in FLOATS)


def _ideal(options, other: int, rows) -> int:
    """k bits a weight, plus the decoders and the other floats at the width they are stored (--float-bits)."""
    if options.float_bits == 32:
        return 4 * other + sum(r["bytes_ideal"] for r in rows)
    per = options.float_bits // 8   # the decoders stay float16 at --float-bits 8
    codes = [int(np.ceil(r.get("params_stored", r["params"]) * r["bits"] / 8)) for r in rows]
    return per * other + sum(c + (r["bytes_ideal"] - c) // 2 for c, r in zip(codes, rows))


def coverage(weights: dict[str, int], rows) -> dict:
    """The share of the weight parameters (quantize.ops.weight_params of the float model) quantized, and the largest
    weights left float."""
    done = {r["tensor"] for r in rows if r["role"] == "weight"}
    total = sum(weights.values())
    left = sorted(((n, s) for n, s in weights.items() if n not in done), key=lambda x: -x[1])
    return {"weight_params": total, "weight_share": (sum(s for n, s in weights.items() if n in done) / total)
            if total else None, "weights_left_float": [n for n, _ in left[:8]]}


def record(model, options, plan, rows, edit, folded: int, v: int, calib, notes, weights=None, extra=None) -> dict:
    """The report (without timings), written into model's metadata; the model checked by onnx.checker."""
    graph = model.graph
    total = _param_count(model) if options.format == "fake" else None
    quantized_params = sum(r["params"] for r in rows)
    all_params = total if total is not None else quantized_params + sum(
        int(np.prod(i.dims, dtype=np.int64)) for i in graph.initializer
        if i.data_type in FLOATS and not i.name.endswith("_i8_scale")
        and i.name.removesuffix("_f16").removesuffix("_i8") not in {n.name for n in edit.inits})
    if total is not None:  # OCS grows a fake weight; count the original parameters
        all_params -= sum(r.get("params_stored", r["params"]) - r["params"] for r in rows)
    other = all_params - quantized_params
    report = {"bits": options.bits, "method": options.method, "granularity": options.granularity,
              "format": options.format, "fold_bn": options.fold_bn, "bn_folded": folded,
              "include_bias": options.include_bias, "opset": v,
              "params": all_params, "params_quantized": quantized_params, "params_float": other,
              "bytes_fp32": 4 * all_params,
              "bytes_ideal": _ideal(options, other, rows),
              "tensors": rows}
    if weights is not None:
        report.update(coverage(weights, rows))
    if options.method_opts:
        report["method_opts"] = options.method_config.options()
    if plan.mixed or any(r["bits"] != options.bits for r in rows):
        report["mixed"] = True
        report["avg_bits"] = (sum(r["bits"] * r["params"] for r in rows) / quantized_params) if rows else None
    if calib is not None:
        report["calibration"] = {"latents": options.calibration, "seed": options.calibration_seed,
                                 "forward_passes": calib.passes, "recalibrate_bn": options.recalibrate_bn}
    if extra:
        report.update(extra)
    if notes:
        report["notes"] = notes
    write_metadata(model, META_QUANT, json.dumps(report, sort_keys=True))
    try:
        onnx.checker.check_model(model, full_check=True)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as e:
        raise GanqError(f"quantized model fails onnx.checker: {str(e).splitlines()[0]}") from None
    return report
