"""Feature networks as ONNX files run by onnxruntime: images -> (logits for IS, features for the rest)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np

from ganq.errors import GanqError
from ganq.onnx_io import META_FEATURES, load_model, read_metadata, resolve_model, session



class FeatureNet:
    """An ONNX feature network with `ganq.features` metadata; input float32 [N, C, H, W] in [-1, 1]."""

    def __init__(self, model: str | Path, provider: str = "cpu", threads: int | None = None):
        self.path = resolve_model(model)
        if not self.path.is_file():
            raise GanqError(f"{self.path}: no such feature network")
        proto = load_model(self.path, external_data=False)
        meta = read_metadata(proto)
        if META_FEATURES not in meta:
            raise GanqError(f"{self.path}: not a ganq feature network (no '{META_FEATURES}' metadata); "
                            "make one with `ganq train-classifier`")
        self.info = _read_info(meta[META_FEATURES], self.path)
        self.sha256 = hashlib.sha256(self.path.read_bytes()).hexdigest()
        self.session = session(self.path, provider, threads)
        self.input = self.session.get_inputs()[0].name
        self.outputs = [o.name for o in self.session.get_outputs()]
        if "features" not in self.outputs:
            raise GanqError(f"{self.path}: feature network has no 'features' output")
        self.has_logits = "logits" in self.outputs
        self.check_graph()

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return tuple(self.info["image_shape"])

    def resize_note(self, shape) -> dict | None:
        """How images of shape (C, H, W) reach this network (None: as they are)."""
        from ganq.data.resize import FILTER

        if tuple(shape) == self.image_shape:
            return None
        return {"from": "x".join(map(str, shape)), "to": "x".join(map(str, self.image_shape)), "filter": FILTER}

    def check_graph(self) -> None:
        """The input must take [N, C, H, W] of the declared image shape."""
        dims = self.session.get_inputs()[0].shape
        want = [None, *self.image_shape]
        if len(dims) != 4 or any(isinstance(d, int) and w is not None and d != w for d, w in zip(dims, want)):
            raise GanqError(f"{self.path}: its ganq.features says images {'x'.join(map(str, self.image_shape))}, "
                            f"but its input takes {dims}")

    def __call__(self, images: np.ndarray, batch: int = 500, progress=None) -> tuple[np.ndarray, np.ndarray]:
        """uint8 [N, H, W, C] -> (logits float32 [N, classes] or None when the network has none (vgg16),
        features float32 [N, D])."""
        from ganq.runtime import to_float

        from ganq.data.resize import resize_images

        c, h, w = self.image_shape
        if images.ndim != 4 or images.shape[-1] not in (1, 3):
            raise GanqError(f"feature network {self.path.name} takes images [N, H, W, 1 or 3], got "
                            f"{list(images.shape)}")
        names = ["features"] + (["logits"] if self.has_logits else [])
        logits, feats = [], []
        for i in range(0, len(images), batch):  # other sizes and channel counts: resized (resize_note says how)
            part = resize_images(images[i:i + batch], h, w, c)
            res = self.session.run(names, {self.input: to_float(part)})
            feats.append(res[0])
            if self.has_logits:
                logits.append(res[1])
            if progress:
                progress(len(res[0]))
        return (np.concatenate(logits) if logits else None), np.concatenate(feats)


def _read_info(text: str, path: Path) -> dict:
    """The `ganq.features` metadata, checked: a JSON object whose image_shape is [C, H, W] (C 1 or 3)."""
    try:
        info = json.loads(text)
    except ValueError:
        raise GanqError(f"{path}: its '{META_FEATURES}' metadata is not JSON") from None
    shape = info.get("image_shape") if isinstance(info, dict) else None
    if (not isinstance(shape, list) or len(shape) != 3 or not all(isinstance(v, int) and not isinstance(v, bool)
                                                                   for v in shape)
            or shape[0] not in (1, 3) or not all(1 <= v <= 8192 for v in shape[1:])):
        raise GanqError(f"{path}: its '{META_FEATURES}' metadata needs image_shape [C, H, W] (C 1 or 3), got "
                        f"{str(shape)[:80]}")
    return info
