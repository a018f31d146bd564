"""Pretrained feature networks -> ONNX files that ganq's runtime runs, computing exactly what torch-fidelity's
extractors compute (its TF1-compatible bilinear resize, its normalisation), from weights files the user has.

    inception: torch-fidelity's FeatureExtractorInceptionV3: `logits` = the 1008 unbiased logits (its IS layer),
               `features` = the 2048-d pool features (its FID/KID/PRC layer). Weights:
               pt_inception-2015-12-05-6726825d.pth (a state dict; torch hub names files by their sha256 prefix).
    vgg16:     NVIDIA's VGG16 of Kynkaenniemi et al. and StyleGAN2-ADA (vgg16.pt, a TorchScript archive): its own
               forward(uint8 images, return_features=True), fc2 features (4096-d), resize and normalisation as NVIDIA
               scripted them. The archive holds code, so ganq loads it only when its sha256 is NVIDIA's published
               file's (--no-check loads any file: the TorchScript code inside it runs).
    vgg16-tv:  torch-fidelity's FeatureExtractorVGG16: torchvision VGG16 (ImageNet), `features` = fc2 (4096-d,
               before ReLU; fc2_relu is max(0, features)). Weights: torchvision's vgg16-397923af.pth state dict.

Images enter as float32 [N, C, H, W] in [-1, 1] like every ganq feature network, are rounded to the uint8 values
torch-fidelity sees, and grey is replicated to three channels. The resize is traced for one H x W: the ONNX file
is made for one image shape.
"""

from __future__ import annotations

import hashlib
import io
import json
import tempfile
import warnings
from pathlib import Path

from ganq._io import atomic_path
from ganq.errors import GanqError
from ganq.onnx_io import META_FEATURES
from ganq.onnx_io import write_metadata

KNOWN = {
    "inception": {"file": "pt_inception-2015-12-05-6726825d.pth", "sha256_prefix": "6726825d",
                  "where": "https://github.com/toshas/torch-fidelity/releases/download/v0.2.0/"
                           "weights-inception-2015-12-05-6726825d.pth"},
    "vgg16": {"file": "vgg16.pt",
              "sha256_prefix": "b437eb095feaeb0b83eb3fa11200ebca4548ee39a07fb944a417ddc516cc07c3",
              "where": "https://nvlabs-fi-cdn.nvidia.com/stylegan2-ada-pytorch/pretrained/metrics/vgg16.pt"},
    "vgg16-tv": {"file": "vgg16-397923af.pth", "sha256_prefix": "397923af",
                 "where": "https://download.pytorch.org/models/vgg16-397923af.pth"},
}
TORCHSCRIPT = {"vgg16"}  # archives of code and weights, not state dicts


def _check_file(path: Path, kind: str, check: bool) -> str:
    """sha256 of the weights file, checked against the known file's unless check is False."""
    k = KNOWN[kind]
    if not path.is_file():
        raise GanqError(f"{path}: no such weights file; download {k['file']} from {k['where']} and pass --weights")
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    if check and not digest.startswith(k["sha256_prefix"]):
        raise GanqError(f"{path}: sha256 {digest[:16]}... is not the {kind} weights file "
                        f"({k['file']}, sha256 {k['sha256_prefix'][:16]}...); --no-check to convert anyway")
    return digest


def _torchscript(path: Path, kind: str, check: bool):
    """NVIDIA's TorchScript VGG16, loaded only after its sha256 matched (or the user said --no-check)."""
    import torch

    digest = _check_file(path, kind, check)
    try:
        net = torch.jit.load(str(path), map_location="cpu").eval()
    except Exception as e:
        raise GanqError(f"{path}: not a TorchScript archive ({str(e).splitlines()[0][:120]})") from None
    try:
        with torch.no_grad():
            out = net(torch.zeros(1, 3, 32, 32, dtype=torch.uint8), return_features=True)
    except Exception as e:
        raise GanqError(f"{path}: has no forward(images, return_features=True) as NVIDIA's vgg16.pt does "
                        f"({str(e).splitlines()[0][:120]})") from None
    if not isinstance(out, torch.Tensor) or out.ndim != 2:
        raise GanqError(f"{path}: forward(images, return_features=True) gave no [N, D] features")
    return net, digest


def _state_dict(path: Path, kind: str, check: bool) -> dict:
    import torch

    digest = _check_file(path, kind, check)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise GanqError(f"{path}: not a state dict of tensors ({str(e).splitlines()[0][:120]})") from None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise GanqError(f"{path}: not a state dict of tensors")
    return state, digest


def torch_fidelity_extractor(kind: str, state: dict, features: list[str]):
    """torch-fidelity's extractor with these weights. torch-fidelity itself unpickles its weights file freely, so
    it only ever sees a file that ganq wrote from tensors it loaded with weights_only=True."""
    import torch

    try:
        from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3
        from torch_fidelity.feature_extractor_vgg16 import FeatureExtractorVGG16
    except ImportError:
        raise GanqError("converting pretrained feature networks needs torch-fidelity>=0.4.0: "
                        "pip install 'torch-fidelity>=0.4.0'") from None
    cls = {"inception": FeatureExtractorInceptionV3, "vgg16-tv": FeatureExtractorVGG16}[kind]
    with tempfile.TemporaryDirectory() as tmp:
        safe = Path(tmp) / "weights.pt"
        torch.save(state, safe)
        try:
            return cls(f"ganq-{kind}", features, feature_extractor_weights_path=str(safe))
        except RuntimeError as e:
            raise GanqError(f"weights do not fit torch-fidelity's {kind} ({str(e).splitlines()[0][:160]})") from None


def random_state(kind: str) -> dict:
    """Randomly initialised weights of the architecture (for tests; nothing is downloaded)."""
    import torch
    import torchvision
    from torch import nn

    if kind == "vgg16-tv":
        return torchvision.models.vgg16().state_dict()
    from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3

    # torch-fidelity opens its weights path before load_state_dict: give it an empty file, and skip the loading so
    # that PyTorch's initialisation stays
    original = FeatureExtractorInceptionV3.load_state_dict
    with tempfile.TemporaryDirectory() as tmp:
        torch.save({}, Path(tmp) / "empty.pt")
        FeatureExtractorInceptionV3.load_state_dict = lambda self, sd, *a, **k: None
        try:
            m = FeatureExtractorInceptionV3("ganq-random", ["2048"],
                                            feature_extractor_weights_path=str(Path(tmp) / "empty.pt"))
        finally:
            FeatureExtractorInceptionV3.load_state_dict = original
    # BatchNorm statistics from a batch of random images, so that activations neither vanish nor explode
    for mod in m.modules():
        if isinstance(mod, nn.BatchNorm2d):
            mod.reset_running_stats()
            mod.momentum = None
    m.features_list = ["2048"]
    m.train()
    with torch.no_grad():
        m((torch.rand(8, 3, 64, 64, generator=torch.Generator().manual_seed(0)) * 255).to(torch.uint8))
    return {k: v.clone() for k, v in m.state_dict().items()}


def convert(kind: str, weights: str | Path, out: str | Path, image_shape: tuple[int, int, int],
            check: bool = True) -> dict:
    """Write the ONNX feature network for images of image_shape (C, H, W); returns its info."""
    import numpy as np
    import onnx
    import torch
    from torch import nn

    if kind not in KNOWN:
        raise GanqError(f"unknown feature network {kind!r}; choose one of {', '.join(KNOWN)}")
    c, h, w = image_shape
    if c not in (1, 3):
        raise GanqError(f"image channels must be 1 or 3, got {c}")
    if kind in TORCHSCRIPT:
        net, digest = _torchscript(Path(weights), kind, check)

        class Scripted(nn.Module):  # NVIDIA's calling convention, as StyleGAN2-ADA's metrics call it
            __constants__ = ["grey"]

            def __init__(self):
                super().__init__()
                self.net = net
                self.grey = c == 1

            def forward(self, x):
                x = torch.clamp(torch.round((x + 1.0) * 127.5), 0, 255).to(torch.uint8)
                if self.grey:
                    x = x.repeat(1, 3, 1, 1)
                return self.net(x, return_features=True)

        # scripted, not traced: a traced module cannot call a TorchScript one with keyword arguments
        model = torch.jit.script(Scripted().eval())
        reference = "NVIDIA vgg16.pt (StyleGAN2-ADA metrics), return_features=True"
    else:
        state, digest = _state_dict(Path(weights), kind, check)
        names = ["logits_unbiased", "2048"] if kind == "inception" else ["fc2"]
        extractor = torch_fidelity_extractor(kind, state, names)
        reference = f"torch-fidelity {kind.removesuffix('-tv')} ({', '.join(names)})"

        class Wrapper(nn.Module):
            def __init__(self):
                super().__init__()
                self.inner = extractor

            def forward(self, x):
                x = torch.clamp(torch.round((x + 1.0) * 127.5), 0, 255).to(torch.uint8)
                if c == 1:
                    x = x.repeat(1, 3, 1, 1)
                return self.inner(x)

        model = Wrapper().eval()
    buf = io.BytesIO()
    outputs = ["logits", "features"] if kind == "inception" else ["features"]
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        try:
            torch.onnx.export(model, (torch.zeros(2, c, h, w),), buf, input_names=["image"], output_names=outputs,
                              opset_version=21, dynamo=False,
                              dynamic_axes={"image": {0: "N"}, **{o: {0: "N"} for o in outputs}})
        except Exception as e:  # an op of the weights file's own code that ONNX (opset 21) cannot express
            raise GanqError(f"{weights}: {kind} does not export to ONNX opset 21 "
                            f"({type(e).__name__}: {str(e).strip().splitlines()[0][:160]}); nothing written") from None
    proto = onnx.load_from_string(buf.getvalue())
    dim = int(proto.graph.output[-1].type.tensor_type.shape.dim[-1].dim_value) or (2048 if kind == "inception"
                                                                                   else 4096)
    info = {"kind": kind, "image_shape": [c, h, w], "input_range": [-1.0, 1.0], "feature_dim": dim,
            "weights_sha256": digest, "reference": reference}
    write_metadata(proto, META_FEATURES, json.dumps(info, sort_keys=True))
    proto.producer_name = "ganq"
    # parity with torch-fidelity on a few random images
    from ganq.onnx_io import run
    x = torch.from_numpy(np.random.default_rng(0).integers(0, 256, (2, c, h, w)).astype(np.float32) / 127.5 - 1)
    got = run(proto, {"image": x.numpy()})
    with torch.no_grad():
        want = model(x)
    want = want if isinstance(want, tuple) else (want,)
    diff = max(float(np.abs(g - t.numpy()).max() / (float(t.abs().max()) + 1e-12)) for g, t in zip(got, want))
    if diff > 1e-4:
        raise GanqError(f"ONNX {kind} differs from the reference by {diff:.3g} (relative); nothing written")
    with atomic_path(out) as tmp:
        onnx.save(proto, str(tmp))
    return {**info, "out": str(out), "parity_rel_diff": diff}
