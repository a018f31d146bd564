"""distill: the quantized generator trained end to end against its own fp32 outputs (the free teacher).

Every other method is layer-wise. A GAN's inputs are free and unlimited and its fp32 generator is a perfect teacher
for the whole network, so distill starts from another method's grid (`init`, default mse) and trains the actual
quantized network: hard k-bit codes in every forward pass through the straight-through estimator (Bengio et al.
2013), the per-channel (or per-tensor) scale and offset learned with them (as LSQ, Esser et al. 2020, learns the
step), on fresh inputs drawn from the spec every step; loss = output MSE to the fp32 output (normalised by its
variance), optionally + lam x the feature error of a feature network (`features=`, normalised likewise) and
+ act x the mean normalised error of the outputs of every weight op (Conv, ConvTranspose, Gemm, MatMul). The
learning rate decays (cosine); the state kept is the best by the same loss on a fixed held-out set of calibration
inputs (never an evaluation's), checked every `every` steps, the init included, so distill is never worse than its
init on that set. BatchNorm statistics stay as trained unless re-estimating them through the distilled network (on
a calibration stream of their own) lowers that held-out loss (`bn=auto`, the default; `bn=keep` never tries; with
lr 0 nothing is trained and nothing re-estimated): in the prototype of issue 23 re-estimation after end-to-end
training made FID 4-5x worse, so it is a choice the held-out loss makes, said in the record.

The training runs in torch (the `train` extra) on ganq.train.onnx_torch, a rebuild of the ONNX graph checked against
onnxruntime at the start of every run. This module is the method's config and stays torch-free: `engine` names the
torch-side function the quantize pipeline hands the whole model to.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass, field
from pathlib import Path

from ganq.errors import GanqError
from ganq.quantize.methods import METHODS, Method, make_method, option, register

ENGINE = "ganq.train.distill:refine"


@register
@dataclass(frozen=True)
class Distill(Method):
    name = "distill"
    summary = "the quantized generator trained end to end against its fp32 outputs (STE codes, learned grid)"
    paper = "Hinton et al. 2015 (distillation); Esser et al. 2020, LSQ (learned step); this project's issue 23"
    end_to_end = True
    engine = ENGINE
    conflicts = {"recalibrate_bn": "distill re-estimates BatchNorm itself, and only when that lowers its held-out "
                                   "loss (bn=auto)"}
    init: str = "mse"
    steps: int = option(1000, 1, 1_000_000)
    batch: int = option(64, 2, 4096)
    lr: float = option(0.02, 0.0, 1.0)
    lam: float = option(0.0, 0.0, 1000.0)
    features: str = field(default="", metadata={"path": True})  # a file, not a choice: checked to exist
    act: float = option(0.0, 0.0, 1000.0)  # weight of the intermediate-activation term (outputs of the weight ops)
    every: int = option(20, 1, 100_000)
    holdout: int = option(512, 16, 100_000)
    minutes: float = option(0.0, 0.0, 1440.0, note=" (0: no time budget; with one the file depends on the machine)")
    bn: str = option("auto", choices=("auto", "keep"),
                     note=" (auto: BatchNorm re-estimated after training only if that lowers the held-out loss)")
    seed: int = option(0, 0, 2 ** 31 - 1)
    threads: int = option(0, 0, 256, note=" (0: torch's default)")

    def check(self) -> None:
        if self.init == "distill" or self.init not in METHODS:
            known = ", ".join(n for n in METHODS if n != "distill")
            raise GanqError(f"method distill: init must be one of {known}, got {self.init!r}")
        if make_method(self.init).decoder != "affine":
            raise GanqError(f"method distill: init {self.init} has a codebook decoder; distill learns an affine grid "
                            "(scale and offset): use an affine method (mse, minmax, gptq, adaround, ...)")
        if self.lam > 0 and not self.features:
            raise GanqError("method distill: lam > 0 needs features=FEATURE_NETWORK (a ganq feature .onnx or "
                            "zoo:NAME)")
        if self.features:
            resolve_features(self.features)
        check_engine()  # last: a bad option is named first, with or without torch

    @property
    def init_method(self) -> Method:
        return make_method(self.init)

    @property
    def calibrated(self) -> bool:  # the init's solve needs the layer's inputs when the init is calibrated
        return self.init_method.calibrated

    def fallback(self) -> Method:
        return self.init_method.fallback()

    def check_bits(self, bits: int) -> None:
        self.init_method.check_bits(bits)

    def solve(self, x, bits, axis, ctx=None):
        """The init's solution: the starting point the end-to-end pass refines."""
        return self.init_method.solve(x, bits, axis, ctx)


def resolve_features(name: str) -> Path:
    """The feature network file of features=NAME (a path or zoo:NAME), checked to be a ganq feature network."""
    from ganq.onnx_io import META_FEATURES, load_model, read_metadata, resolve_model

    try:
        path = resolve_model(name)
        meta = read_metadata(load_model(path, external_data=False))
    except GanqError as e:
        raise GanqError(f"method distill: features={name}: {e}") from None
    if META_FEATURES not in meta:
        raise GanqError(f"method distill: features={name} is not a ganq feature network (no {META_FEATURES} "
                        "metadata; make one with `ganq train-classifier` or `ganq convert-features`)")
    return Path(path)


def check_engine() -> None:
    """One line when the torch side is missing: distill needs autograd."""
    if importlib.util.find_spec("torch") is None:
        raise GanqError("method distill trains in torch, which is not installed: pip install 'ganq[train]'")
