"""Torch-free reader of the CIFAR-10 python batches, through an unpickler that refuses arbitrary code."""

from __future__ import annotations

import io
import pickle
from pathlib import Path

import numpy as np

from ganq.errors import GanqError

# The CIFAR-10 batches are pickled dicts of a numpy uint8 array, lists and strings. Nothing else may load.
_ALLOWED = {
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    ("_codecs", "encode"),  # how Python 3's protocol-2 pickles spell bytes; it only encodes a str
}


class _RestrictedUnpickler(pickle.Unpickler):
    def find_class(self, module, name):
        if (module, name) in _ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refusing to load {module}.{name}")


def load_pickle(path: Path) -> dict:
    try:
        obj = _RestrictedUnpickler(io.BytesIO(Path(path).read_bytes()), encoding="bytes").load()
    except Exception as e:  # the restricted unpickler runs no code; junk raises many types (OverflowError, ...)
        raise GanqError(f"{path}: not a CIFAR-10 batch ({type(e).__name__}: {str(e)[:120]})") from None
    if not isinstance(obj, dict):
        raise GanqError(f"{path}: not a CIFAR-10 batch (not a dict)")
    return {k.decode() if isinstance(k, bytes) else k: v for k, v in obj.items()}


CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")  # batches.meta's
# order; the JPEG copy's train/<class>/ folders sort to it too


def read_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """One batch file -> (uint8 [N, 32, 32, 3], int64 [N])."""
    d = load_pickle(path)
    data, labels = d.get("data"), d.get("labels")
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072:
        raise GanqError(f"{path}: not a CIFAR-10 batch ('data' is not a uint8 [N, 3072] array)")
    if not isinstance(labels, list) or len(labels) != len(data):
        raise GanqError(f"{path}: not a CIFAR-10 batch ('labels' missing or of the wrong length)")
    images = data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
    return np.ascontiguousarray(images), np.asarray(labels, dtype=np.int64)


def read_classes(folder: Path) -> list[str]:
    meta = folder / "batches.meta"
    if meta.exists():
        names = load_pickle(meta).get("label_names")
        if isinstance(names, list):
            return [n.decode() if isinstance(n, bytes) else str(n) for n in names]
    return list(CLASSES)
