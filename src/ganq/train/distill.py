"""The torch side of method distill (ganq.quantize.methods.distill): the quantized generator trained end to end against
its fp32 self. Handed the prepared fp32 model and every quantized tensor's starting grid (plain arrays: this side
never imports ganq.quantize), it returns the refined grids and a record of the run.

Per tensor, in code units so that one learning rate suits every layer:
    v      float codes, initialised to the init's integer codes          (the latent weights)
    ls     log scale change, 0 at init: scale = scale0 * exp(ls)
    do     offset change in steps of scale0, 0 at init: offset = offset0 + scale0 * do
    W_q  = (clip(round_ste(v), 0, 2^k - 1) - zero_point) * scale + offset
so with lr = 0 nothing moves and the result is the init's codes and grid, bit for bit.
"""

from __future__ import annotations

import math
import time

import numpy as np
import onnx
import torch
from torch.nn import functional as F

from ganq.errors import GanqError
from ganq.onnx_io import feed_size, fixed_batch, probe_inputs, resolve_model, sample_inputs, slice_feed
from ganq.spec import GeneratorSpec
from ganq.train.onnx_torch import OnnxTorch, Unsupported, check_against_onnxruntime

HOLDOUT_SEED = 0x484F4C44  # the held-out set's calibration stream; training steps use STEP_SEED + step
BN_SEED = 0x424E5245  # the stream BatchNorm is re-estimated on (neither the held-out set's nor a training step's)
BN_N = 1024  # inputs the re-estimation averages over (quantize's --calibration default)
STEP_SEED = 1 << 40
GRID_LR = 0.1
TAP_N = 256  # held-out inputs the activation term is measured on


class _Round(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        return torch.round(x)

    @staticmethod
    def backward(ctx, g):
        return g


def _rows(a: np.ndarray, axis: int) -> np.ndarray:
    """a as [C, n], one row per channel along axis (quantize.decoders.rows; the torch side imports only the base)."""
    return np.moveaxis(a, axis, 0).reshape(a.shape[axis], -1)


def _unrows(r: np.ndarray, shape: tuple, axis: int) -> np.ndarray:
    moved = (shape[axis],) + tuple(s for i, s in enumerate(shape) if i != axis)
    return np.moveaxis(r.reshape(moved), 0, axis)


class QTensor(torch.nn.Module):
    def __init__(self, t: dict):
        super().__init__()
        self.name, self.levels = t["name"], float(2 ** t["bits"] - 1)
        # group:G: codes in the row form [C, K], the grid compact [C, ng] and expanded over the groups when used
        self.group, self.axis, self.shape = t.get("group"), t.get("axis"), t["codes"].shape
        codes = _rows(t["codes"], self.axis) if self.group else t["codes"]
        self.v = torch.nn.Parameter(torch.from_numpy(codes.astype(np.float32)))
        shape = np.broadcast_shapes(t["scale"].shape, t["offset"].shape, t["zero_point"].shape)
        self.ls = torch.nn.Parameter(torch.zeros(shape))
        self.do = torch.nn.Parameter(torch.zeros(shape))
        self.register_buffer("s0", torch.from_numpy(np.broadcast_to(t["scale"], shape).astype(np.float32).copy()))
        self.register_buffer("o0", torch.from_numpy(np.broadcast_to(t["offset"], shape).astype(np.float32).copy()))
        self.register_buffer("zp", torch.from_numpy(np.broadcast_to(t["zero_point"], shape).astype(np.float32)
                                                    .copy()))

    def grid(self):
        return self.s0 * torch.exp(self.ls), self.o0 + self.s0 * self.do

    def forward(self):
        scale, offset = self.grid()
        q = torch.clamp(_Round.apply(self.v), 0.0, self.levels)
        if not self.group:
            return (q - self.zp) * scale + offset
        k = q.shape[1]

        def e(p):
            return p.repeat_interleave(self.group, dim=1)[:, :k]
        w = (q - e(self.zp)) * e(scale) + e(offset)
        moved = (self.shape[self.axis],) + tuple(n for i, n in enumerate(self.shape) if i != self.axis)
        return w.reshape(moved).movedim(0, self.axis)

    def result(self) -> dict:
        with torch.no_grad():
            scale, offset = self.grid()
            codes = torch.clamp(torch.round(self.v), 0.0, self.levels).numpy().astype(np.int64)
        if self.group:
            codes = _unrows(codes, self.shape, self.axis)
        return {"codes": codes, "scale": scale.numpy().astype(np.float32),
                "offset": offset.numpy().astype(np.float32)}


class _Runner:
    """Calls of a graph rebuilt in torch, in chunks of its fixed batch where it has one."""

    def __init__(self, model: onnx.ModelProto, spec: GeneratorSpec, output: str):
        self.net, self.spec, self.output = OnnxTorch(model), spec, output
        self.fixed = fixed_batch(model, spec)

    def __call__(self, feed: dict, replace=None, taps: list[str] = ()) -> torch.Tensor | list:
        """The output (and, with taps, [output, *the tapped values])."""
        names = [self.output, *taps]
        n = feed_size(self.spec, feed)
        if not self.fixed or self.fixed == n:
            got = self.net(feed, replace, names)
        else:
            if n % self.fixed:
                raise GanqError(f"distill: batch {n} is not a multiple of the model's fixed batch {self.fixed}")
            parts = [self.net(slice_feed(self.spec, feed, i, i + self.fixed), replace, names)
                     for i in range(0, n, self.fixed)]
            got = [torch.cat(p) for p in zip(*parts)]
        return got if taps else got[0]


class _Features:
    """A ganq feature network rebuilt in torch: images in the generator's layout and range -> features."""

    def __init__(self, path, spec: GeneratorSpec):
        import json

        from ganq.onnx_io import META_FEATURES, load_model, read_metadata

        model = load_model(path)
        info = json.loads(read_metadata(model)[META_FEATURES])
        self.shape = tuple(info["image_shape"])
        self.net = OnnxTorch(model)
        self.input = model.graph.input[0].name
        self.spec = spec
        c, h, w = self.shape
        probe = np.random.default_rng(0).uniform(-1, 1, (4, c, h, w)).astype(np.float32)
        check_against_onnxruntime(model, {self.input: probe}, what=f"feature network {path}")
        for p in self.net.tensors.values():
            p.requires_grad_(False)

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        x = images.permute(0, 3, 1, 2) if self.spec.output_layout == "NHWC" else images
        lo, hi = self.spec.output_range
        x = (x - lo) / (hi - lo) * 2.0 - 1.0  # the feature networks take [-1, 1]
        c, h, w = self.shape
        if x.shape[1] != c:
            x = x.mean(1, keepdim=True).expand(-1, c, -1, -1) if c == 3 or x.shape[1] == 1 else x.mean(1, True)
        if tuple(x.shape[2:]) != (h, w):
            x = F.interpolate(x, size=(h, w), mode="bilinear", align_corners=False, antialias=True)
        return self.net({self.input: x}, outputs=["features"])[0]


def _feeds(spec, n, seed, data_root):
    return {k: torch.from_numpy(v) for k, v in sample_inputs(spec, n, seed, calibration=True,
                                                              data_root=data_root).items()}


def refine(model: onnx.ModelProto, spec: GeneratorSpec, tensors: list[dict], cfg: dict, data_root=None,
           progress=None) -> tuple[list[dict], dict]:
    """Train the quantized tensors of `model` (the prepared fp32 graph) end to end against its fp32 outputs.

    tensors: [{name, codes, scale, offset, zero_point, bits}] (codes shaped like the weight; the grid broadcastable
    to it). cfg: the distill method's options. progress(step, steps, loss, best): called after every step.
    Returns ([{name, codes, scale, offset}] in the same order, the record, {BatchNorm statistic initializer: new
    float32 array}: empty unless re-estimating them lowered the held-out loss, cfg bn=auto)."""
    threads = torch.get_num_threads()
    if cfg.get("threads"):
        torch.set_num_threads(int(cfg["threads"]))
    try:
        return _refine(model, spec, tensors, cfg, data_root, progress)
    finally:  # the caller's torch keeps its own thread count
        torch.set_num_threads(threads)


def _refine(model, spec, tensors, cfg, data_root, progress):
    t_start = time.perf_counter()
    torch.manual_seed(int(cfg["seed"]))
    try:
        n_check = fixed_batch(model, spec) or 4
        worst = check_against_onnxruntime(model, probe_inputs(spec, n_check, seed=1), what="the generator")
        run = _Runner(model, spec, spec.output_name)
    except Unsupported as e:
        raise GanqError(f"method distill: {e}; this model cannot be trained end to end (use a layer-wise method)"
                        ) from None
    for p in run.net.tensors.values():
        p.requires_grad_(False)
    qs = [QTensor(t) for t in tensors]
    missing = [q.name for q in qs if q.name not in run.net.tensors]
    if missing:
        raise GanqError(f"method distill: tensors {', '.join(missing[:3])} are not initializers of the graph")
    feat = _Features(resolve_model(cfg["features"]), spec) if cfg.get("lam", 0) > 0 else None
    lam, act = float(cfg.get("lam", 0.0)), float(cfg.get("act", 0.0))
    taps = [n[2][0] for n in run.net.nodes if n[0] in WEIGHT_OPS and n[2][0] != spec.output_name] if act else []

    batch, steps, every = int(cfg["batch"]), int(cfg["steps"]), int(cfg["every"])
    fb = run.fixed
    if fb and batch % fb:
        batch = max(fb, batch // fb * fb)
    hold_n = int(cfg["holdout"])
    if fb and hold_n % fb:
        hold_n = max(fb, hold_n // fb * fb)
    hold = _feeds(spec, hold_n, HOLDOUT_SEED + int(cfg["seed"]), data_root)
    with torch.no_grad():
        hold_t = _batched(run, hold, spec, None, 256)
        var_out = float(hold_t.var()) or 1.0
        hold_ft = _batched_features(feat, hold_t, 256) if feat is not None else None
        var_feat = float(hold_ft.var()) or 1.0 if hold_ft is not None else 1.0
        # the activation term's held-out part: the first TAP_N inputs, the teacher's activations computed once
        hold_taps = slice_feed(spec, hold, 0, TAP_N)
        teacher_taps = run(hold_taps, None, taps)[1:] if taps else []
        var_taps = [float(t.var()) or 1.0 for t in teacher_taps]

    def loss_of(out, teacher, f_out=None, f_teacher=None, a_out=(), a_teacher=()):
        loss = F.mse_loss(out, teacher) / var_out
        if f_out is not None:
            loss = loss + lam * F.mse_loss(f_out, f_teacher) / var_feat
        if a_out:
            loss = loss + act * sum(F.mse_loss(a, b) / v for a, b, v in zip(a_out, a_teacher, var_taps)) / len(a_out)
        return loss

    def heldout(replace=None) -> float:
        """The held-out loss: the same terms as training's, the activations' on the first 256 inputs."""
        with torch.no_grad():
            replace = replace or {q.name: q() for q in qs}
            out = _batched(run, hold, spec, replace, 256)
            f = _batched_features(feat, out, 256) if feat is not None else None
            loss = loss_of(out, hold_t, f, hold_ft)
            if taps:
                a_s = run(hold_taps, replace, taps)[1:]
                loss = loss + act * sum(F.mse_loss(a, b) / v for a, b, v in zip(a_s, teacher_taps, var_taps)) / len(a_s)
            return float(loss)

    lr = float(cfg["lr"])
    # the codes move at lr (in code units); the grid at GRID_LR x lr (a log-scale step of 0.01 is 1% of the range)
    groups = [{"params": [q.v for q in qs], "scale": 1.0},
              {"params": [p for q in qs for p in (q.ls, q.do)], "scale": GRID_LR}]
    opt = torch.optim.Adam(groups, lr=lr) if lr > 0 else None
    budget = float(cfg.get("minutes", 0.0)) * 60.0
    best = heldout()
    curve = [{"step": 0, "heldout": best, "seconds": round(time.perf_counter() - t_start, 2)}]
    init_loss, best_step = best, 0
    best_state = [q.result() for q in qs]
    best_weights = _weights(qs)
    step, stopped = 0, "steps"
    for step in range(1, steps + 1):
        elapsed = time.perf_counter() - t_start
        if budget and elapsed > budget:
            step -= 1
            stopped = "time budget"
            break
        frac = max((step - 1) / steps, elapsed / budget if budget else 0.0)
        if opt is not None:
            for g in opt.param_groups:
                g["lr"] = g["scale"] * lr * 0.5 * (1.0 + math.cos(math.pi * min(frac, 1.0)))
        feed = _feeds(spec, batch, STEP_SEED + int(cfg["seed"]) * 1_000_003 + step, data_root)
        with torch.no_grad():
            teacher, *a_teacher = run(feed, None, taps) if taps else [run(feed)]
            f_teacher = feat(teacher) if feat is not None else None
        if opt is not None:
            out, *a_out = run(feed, {q.name: q() for q in qs}, taps) if taps else [run(feed, {q.name: q() for q in qs})]
            loss = loss_of(out, teacher, feat(out) if feat is not None else None, f_teacher, a_out, a_teacher)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            train_loss = float(loss.detach())
        else:
            train_loss = best
        if step % every == 0 or step == steps:
            h = heldout()
            curve.append({"step": step, "heldout": h, "seconds": round(time.perf_counter() - t_start, 2)})
            if h < best:
                best, best_step, best_state, best_weights = h, step, [q.result() for q in qs], _weights(qs)
        if progress:
            progress(step, steps, train_loss, best)
    if best_step == 0:  # the init itself: its codes and grid exactly as given
        best_state = [{"codes": t["codes"], "scale": t["scale"], "offset": t["offset"]} for t in tensors]
    bn_set, bn_record = {}, {"batchnorm": "kept as trained"}
    if cfg.get("bn", "auto") == "auto" and lr > 0 and step > 0:
        bn_set, bn_record = _reestimate_if_lower(run, spec, best_weights, best, heldout, int(cfg["seed"]), data_root)
    record = {"init": cfg["init"], "steps_run": step, "stopped_by": stopped, "best_step": best_step,
              "heldout_init": init_loss, "heldout_best": best, "heldout_n": hold_n, "batch": batch,
              "loss": "output MSE / var" + (f" + {lam:g} x feature MSE / var" if feat is not None else "")
              + (f" + {act:g} x mean activation MSE / var ({len(taps)} weight ops)" if taps else ""),
              "features": cfg.get("features") or None, **bn_record,
              "rebuild_max_abs_diff": worst, "seconds": round(time.perf_counter() - t_start, 2), "curve": curve}
    return [{"name": t["name"], **s} for t, s in zip(tensors, best_state)], record, bn_set


def _weights(qs) -> dict:
    """The quantized weights of the current state, detached (what the held-out loss of that state ran on)."""
    with torch.no_grad():
        return {q.name: q().detach().clone() for q in qs}


def _reestimate_if_lower(run, spec, weights, kept, heldout, seed, data_root) -> tuple[dict, dict]:
    """BatchNorm statistics re-estimated through the distilled network, kept only if they lower the held-out loss.

    Each BatchNormalization whose mean and variance are initializers of its own gets the per-channel mean and
    population variance of its input over BN_N fresh calibration inputs (their own stream), in graph order, every
    earlier one already re-estimated (so each sees the inputs the final file gives it). Returns ({initializer:
    new array} or {} when kept, the record's entries)."""
    uses: dict[str, int] = {}
    for _, ins, _, _ in run.net.nodes:
        for n in ins:
            uses[n] = uses.get(n, 0) + 1
    bns = [ins for op, ins, _, _ in run.net.nodes if op == "BatchNormalization" and len(ins) >= 5
           and all(n in run.net.tensors and uses.get(n) == 1 for n in ins[3:5])]
    if not bns:
        return {}, {"batchnorm": "kept as trained (no BatchNormalization with statistics of its own)"}
    feed = _feeds(spec, BN_N, BN_SEED + seed, data_root)
    replace, new = dict(weights), {}
    size = max(256 // run.fixed * run.fixed, run.fixed) if run.fixed else 256
    with torch.no_grad():
        for ins in bns:
            s = s2 = None
            m = 0
            for i in range(0, BN_N, size):
                x = run(slice_feed(spec, feed, i, i + size), replace, [ins[0]])[1].double()
                x = x.movedim(1, 0).reshape(x.shape[1], -1)
                s = x.sum(1) if s is None else s + x.sum(1)
                s2 = (x * x).sum(1) if s2 is None else s2 + (x * x).sum(1)
                m += x.shape[1]
            mean = s / m
            var = torch.clamp(s2 / m - mean * mean, min=0.0)
            for name, v in zip(ins[3:5], (mean, var)):
                new[name] = v.float().reshape(run.net.tensors[name].shape)
            replace.update({n: new[n] for n in ins[3:5]})
    h = heldout(replace)
    entry = {"heldout_kept": kept, "heldout_reestimated": h, "batchnorm_layers": len(bns), "batchnorm_n": BN_N}
    if h < kept:
        return {n: v.numpy() for n, v in new.items()}, {
            "batchnorm": "re-estimated (it lowered the held-out loss)", **entry}
    return {}, {"batchnorm": "kept as trained (re-estimating it did not lower the held-out loss)", **entry}


WEIGHT_OPS = ("Conv", "ConvTranspose", "Gemm", "MatMul")



def _batched(run, feed, spec, replace, size):
    n = feed_size(spec, feed)
    size = max(size // run.fixed * run.fixed, run.fixed) if run.fixed else size
    return torch.cat([run(slice_feed(spec, feed, i, i + size), replace) for i in range(0, n, size)])


def _batched_features(feat, images, size):
    return torch.cat([feat(images[i:i + size]) for i in range(0, len(images), size)])
