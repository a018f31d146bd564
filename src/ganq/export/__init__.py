"""torch -> ONNX: opset 21, dynamic batch, the GeneratorSpec in the ganq.spec metadata, parity with PyTorch enforced."""

from __future__ import annotations

import io
import warnings
from pathlib import Path

import numpy as np

from ganq._io import atomic_path
from ganq.errors import GanqError
from ganq.spec import GeneratorSpec
from ganq.onnx_io import META_SPEC, write_metadata

OPSET = 21
PARITY_TOL = 1e-5


def _torch_feed(spec: GeneratorSpec, n: int, seed: int):
    """(numpy feed by input name, torch arguments in the spec's order) of n calls, image inputs uniform."""
    import torch

    from ganq.onnx_io import probe_inputs

    if not spec.inputs:  # the one latent: standard normal, as before inputs existed
        z = np.random.default_rng(seed).standard_normal((n, spec.latent_dim)).astype(np.float32)
        feed = {spec.input_name: z}
    else:
        feed = probe_inputs(spec, n, seed)
    return feed, tuple(torch.from_numpy(v) for v in feed.values())


def to_onnx(g, spec: GeneratorSpec):
    """A ModelProto of generator g (eval mode): the spec's inputs (by default z [N, latent_dim]) -> image
    [N, C, H, W]; the batch is dynamic on every batched input."""
    import onnx
    import torch

    g = g.eval().cpu()
    _, args = _torch_feed(spec, 2, 0)
    names = [i.name for i in spec.all_inputs]
    dyn = {i.name: {0: "N"} for i in spec.all_inputs if i.batched}
    dyn[spec.output_name] = {0: "N"}
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(g, args, buf, input_names=names, output_names=[spec.output_name],
                          opset_version=OPSET, dynamo=False, dynamic_axes=dyn)
    model = onnx.load_from_string(buf.getvalue())
    for dim, value in zip(model.graph.output[0].type.tensor_type.shape.dim[1:], spec.image_shape):
        dim.Clear()
        dim.dim_value = value  # C, H, W are fixed; only the batch is dynamic
    model.producer_name, model.doc_string = "ganq", f"ganq generator: {spec.arch} on {spec.dataset}"
    write_metadata(model, META_SPEC, spec.to_json())
    onnx.checker.check_model(model, full_check=True)
    return model


def parity(g, model, spec: GeneratorSpec, n: int = 256, seed: int = 0) -> float:
    """Max abs difference between PyTorch (eval) and onnxruntime on n draws of the spec's inputs."""
    import torch

    from ganq.onnx_io import session

    feed, args = _torch_feed(spec, n, seed)
    with torch.no_grad():
        ref = g.eval()(*args).numpy()
    sess = session(model)
    got = sess.run(None, feed)[0]
    if got.shape != ref.shape:
        raise GanqError(f"ONNX output shape {got.shape} differs from PyTorch's {ref.shape}")
    return float(np.max(np.abs(got - ref)))


def export(source: str | Path, out: str | Path, n: int = 256, ema: bool = False) -> dict:
    """Export the generator of a run folder or checkpoint to `out`; returns {'max_abs_diff', 'spec', ...}.
    ema: export the weight EMA kept by `train --ema` (the spec's extra records which weights and the epoch)."""
    import dataclasses

    import onnx

    from ganq.train.checkpoint import load_generator

    if not 1 <= n <= 100_000:
        raise GanqError(f"--n must be in 1..100000, got {n}")
    g, spec, state = load_generator(source, ema=ema)
    extra = {"weights": "ema" if ema else "raw", "epoch": int(state["epoch"])}
    if ema:
        extra["ema_decay"] = float(state.get("ema_decay", 0.0))
    if spec.family == "image-to-image":  # ganq's image-to-image generators are 2x super-resolution
        extra["ground_truth"] = True
    spec = dataclasses.replace(spec, extra=extra)
    model = to_onnx(g, spec)
    from ganq.train.archs import ARCHS

    tol = ARCHS.get(spec.arch).parity_tol if spec.arch in ARCHS else PARITY_TOL
    diff = parity(g, model, spec, n=n)
    if not diff <= tol:
        raise GanqError(f"ONNX differs from PyTorch by {diff:.3g} > {tol:g} on {n} inputs; nothing written")
    with atomic_path(out) as tmp:
        onnx.save(model, str(tmp))
    return {"out": str(out), "max_abs_diff": diff, "parity_tol": tol, "n": n, "epoch": int(state["epoch"]), "opset": OPSET,
            "weights": extra["weights"],
            "spec": spec.to_dict(), "bytes": Path(out).stat().st_size}
