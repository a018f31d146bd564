"""`ganq export-ort`: onnxruntime's mobile format (.ort), with onnxruntime's own converter
(onnxruntime.tools.convert_onnx_models_to_ort), choosing what keeps the k-bit size:

- packed files are converted with graph optimisation disabled: at any other level onnxruntime constant-folds the
  bit-plane decoder into float32 weights, and a 3-bit .ort file is as large as fp32;
- so are files with group:G decoders (their Expand of the compact scales and offsets would be folded to weight
  size);
- int files with UINT4/INT4 codes are rewritten to UINT8/INT8 first (the same code values): the converter accepts
  4-bit initializers but writes a file that onnxruntime then refuses ("Unsupported tensor data type ... Invalid ORT
  format model"), and --enable_type_reduction crashes on them;
- int and float files use the basic level (ONNX-only rewrites, no hardware-specific fusions baked into the file).

The mobile trade-off is explicit (`weights`): `coded` (the default) keeps the codes in the file (small; packed and
int decoders then run on every call in the .ort runtime, which has no session-time folding of a packed decoder),
`decoded` folds every decoder into float32 weights at conversion (onnxruntime's own folding, DequantizeLinear
included: fp32 size, fp32 speed). An nbits file (`--format nbits`) keeps its MatMulNBits nodes when coded (4-bit
blocks in the file and onnxruntime's kernel for them); decoded, they become MatMul on float32 weights (decoded by
quantize.nbits, since onnxruntime's optimiser does not fold MatMulNBits).

The .ort file is loaded back and its outputs compared with the .onnx file's at the same optimisation level; the
operators a reduced build needs (`--include_ops_by_config`) are written next to it.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

from ganq.errors import GanqError

LEVELS = ("disable", "basic", "extended", "all")
WEIGHTS = ("coded", "decoded")


def decoded(proto, work: Path):
    """proto with every weight decoder folded into float32 initializers (onnxruntime's basic level with
    DequantizeLinear folding on) and MatMulNBits nodes as MatMul on their decoded weights, its metadata kept."""
    import onnx

    from ganq.onnx_io import copy_metadata, session
    from ganq.quantize.nbits import decoded_model

    proto = decoded_model(proto) or proto

    src, dst = work / "coded.onnx", work / "decoded.onnx"
    onnx.save(proto, str(src))
    session(src, decode="once", optimization="basic", quiet=True, save_optimized=dst)
    out = onnx.load(str(dst))
    copy_metadata(proto, out)
    return out


def _widen_4bit(model) -> int:
    """UINT4/INT4 initializers -> UINT8/INT8 with the same values; returns how many."""
    from onnx import TensorProto, numpy_helper

    n = 0
    for i, t in enumerate(model.graph.initializer):
        if t.data_type in (TensorProto.UINT4, TensorProto.INT4):
            a = numpy_helper.to_array(t).astype(np.uint8 if t.data_type == TensorProto.UINT4 else np.int8)
            model.graph.initializer[i].CopyFrom(numpy_helper.from_array(a, t.name))
            n += 1
    return n


def _session(path_or_bytes, level: str | None):
    from ganq.onnx_io import session

    return session(path_or_bytes, optimization=level)


def read_operators(config: Path) -> list[str]:
    """`domain;opset;Op1,Op2` lines of a required_operators.config -> ['Op1', ...] (domain-prefixed if not ai.onnx)."""
    ops = []
    for line in config.read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        domain, _, rest = line.partition(";")
        _, _, names = rest.partition(";")
        ops += [n if domain in ("ai.onnx", "") else f"{domain}:{n}" for n in names.split(",") if n]
    return sorted(ops)


def export_ort(model: str | Path, out: str | Path, optimization: str | None = None, n: int = 8,
               force: bool = False, weights: str = "coded") -> dict:
    """Convert ganq generator `model` to `out` (.ort) and `out` with suffix .required_operators.config (an existing
    `out` is replaced only with force); weights: coded or decoded (see the module's note)."""
    if weights not in WEIGHTS:
        raise GanqError(f"--weights must be coded or decoded, got {weights!r}")
    from ganq._io import check_out

    check_out(out, force, [model])
    check_out(Path(out).with_name(Path(out).stem + ".required_operators.config"), force, [model])  # its sidecar
    import onnx
    from onnxruntime.tools.convert_onnx_models_to_ort import OptimizationStyle, convert_onnx_models_to_ort

    from ganq._io import atomic_path
    from ganq.onnx_io import META_QUANT, check_spec, fixed_batch, load_model, probe_inputs, read_metadata, read_spec

    model, out = Path(model), Path(out)
    if optimization is not None and optimization not in LEVELS:
        raise GanqError(f"--optimization must be one of {', '.join(LEVELS)}, got {optimization!r}")
    if out.suffix != ".ort":
        raise GanqError(f"{out}: the output of export-ort ends in .ort")
    if out.resolve() == model.resolve():
        raise GanqError(f"{out}: is the input model")
    proto = load_model(model)
    spec = read_spec(proto, str(model))
    check_spec(proto, spec, str(model))
    quant = json.loads(read_metadata(proto).get(META_QUANT, "null"))
    fmt = quant["format"] if quant else "fp32"
    grouped = bool(quant) and any(str(t.get("granularity", "")).startswith("group:") for t in quant.get("tensors", []))
    # the basic level folds the packed bit planes, and the group decoders' Expand of scales and offsets, into
    # weight-sized float32 tensors: coded files of those kinds convert unoptimised
    level = optimization or ("disable" if (fmt == "packed" or grouped) and weights == "coded" else "basic")
    notes = []
    work = Path(tempfile.mkdtemp(prefix=".ganq-ort."))
    if weights == "decoded" and quant:
        try:
            proto = decoded(proto, work)
        except BaseException:
            shutil.rmtree(work, ignore_errors=True)
            raise
        notes.append("the weights decoded to float32 at conversion: an fp32-sized file at fp32 speed")
    widened = _widen_4bit(proto)
    if widened:
        notes.append(f"{widened} UINT4/INT4 tensors stored as UINT8/INT8 (onnxruntime's ORT format cannot hold 4-bit "
                     "tensors: its converter writes a file that fails to load); the codes are unchanged")
    if fmt == "packed" and level != "disable" and weights == "coded":
        notes.append(f"optimisation level {level} folds the packed decoder into float32 weights: the .ort file "
                     "holds fp32-sized weights")
    config = out.with_name(out.stem + ".required_operators.config")
    try:
        src = work / "model.onnx"
        onnx.save(proto, str(src))
        old = os.environ.get("ORT_CONVERT_ONNX_MODELS_TO_ORT_OPTIMIZATION_LEVEL")
        os.environ["ORT_CONVERT_ONNX_MODELS_TO_ORT_OPTIMIZATION_LEVEL"] = level
        quiet = io.StringIO()
        logger = logging.getLogger("ort_format_model.utils")
        before = logger.level
        logger.setLevel(logging.WARNING)
        try:
            with contextlib.redirect_stdout(quiet), contextlib.redirect_stderr(quiet):
                convert_onnx_models_to_ort(src, output_dir=work / "out", optimization_styles=[OptimizationStyle.Fixed])
        except Exception as e:  # the converter raises RuntimeError / onnxruntime errors with long messages
            raise GanqError(f"onnxruntime's ORT converter failed on {model} "
                            f"({str(e).strip().splitlines()[0][:200]})") from None
        finally:
            logger.setLevel(before)
            if old is None:
                os.environ.pop("ORT_CONVERT_ONNX_MODELS_TO_ORT_OPTIMIZATION_LEVEL", None)
            else:
                os.environ["ORT_CONVERT_ONNX_MODELS_TO_ORT_OPTIMIZATION_LEVEL"] = old
        made = list((work / "out").glob("*.ort"))
        cfgs = list((work / "out").glob("*.config"))
        if len(made) != 1 or len(cfgs) != 1:
            raise GanqError(f"onnxruntime's ORT converter wrote no .ort file for {model} ({quiet.getvalue()[-200:]})")
        # the .ort file must load and compute what the .onnx file computes at the same level
        feed = probe_inputs(spec, fixed_batch(proto, spec) or n)
        try:
            t0 = time.perf_counter()
            sess = _session(made[0], None)
            load_ms = (time.perf_counter() - t0) * 1e3
            got = sess.run(None, feed)[0]
        except Exception as e:
            raise GanqError(f"the converted .ort file does not load in onnxruntime "
                            f"({str(e).strip().splitlines()[0][:200]}); nothing written") from None
        want = _session(src, level).run(None, feed)[0]
        diff = float(np.max(np.abs(got - want)))
        if not diff <= 1e-5:
            raise GanqError(f"the .ort file's outputs differ from the .onnx file's by {diff:.3g}; nothing written")
        ops = read_operators(cfgs[0])  # this run's list, whatever another run writes meanwhile
        with atomic_path(out, replace=force) as tmp:
            shutil.copyfile(made[0], tmp)
        try:
            with atomic_path(config, replace=force) as tmp:
                shutil.copyfile(cfgs[0], tmp)
        except BaseException:  # nothing of this run is left: the .ort goes with its config
            out.unlink(missing_ok=True)
            raise
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return {"out": str(out), "config": str(config), "source": str(model), "format": fmt,
            "bits": quant["bits"] if quant else 32, "optimization": level, "weights": weights,
            "bytes_onnx": model.stat().st_size,
            "bytes_ort": out.stat().st_size, "max_abs_diff": diff, "load_ms": round(load_ms, 2),
            "operators": ops, "notes": notes}


__all__ = ["export_ort", "LEVELS", "read_operators"]
