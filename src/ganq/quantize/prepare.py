"""Step 1 of quantize_model, prepare: a copy of the model in the form the later steps need (legacy graph inputs as
constants, BatchNorm folded if asked, the opset the format needs)."""

from __future__ import annotations

import numpy as np
import onnx

from ganq.errors import GanqError
from ganq.onnx_io import META_QUANT, random_feed, read_metadata, run
from ganq.quantize.fold_bn import fold_batchnorm
from ganq.quantize.formats import FORMATS
from ganq.quantize.ops import opset
from ganq.quantize.options import TARGET_OPSET, QuantizeOptions
from ganq.quantize.plan import FLOAT_BITS


def prepare(model: onnx.ModelProto, options: QuantizeOptions, notes: list[str]) -> tuple[onnx.ModelProto, int, int]:
    """(the model to quantize, BatchNorms folded, its opset)."""
    if META_QUANT in read_metadata(model):
        raise GanqError("model is already quantized (it has ganq.quant metadata); quantize the fp32 model")
    model = onnx.ModelProto.FromString(model.SerializeToString())
    legacy_inputs(model, options.keep_overridable, notes)
    folded = 0
    if options.fold_bn:
        model, folded = fold_batchnorm(model)
    v = opset(model)
    if options.bits != FLOAT_BITS and options.format != "fake" and v < TARGET_OPSET and options.upgrade_opset:
        model = upgrade_opset(model, TARGET_OPSET, notes)
        v = opset(model)
    return model, folded, v


def check_opset(v: int, options: QuantizeOptions, todo) -> None:
    fmt = FORMATS.get(options.format)
    if todo and v < fmt.min_opset:
        raise GanqError(f"the {fmt.name} format needs opset >= {fmt.min_opset}; the model has {v} "
                        "(drop --no-upgrade-opset to upgrade it)")


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
