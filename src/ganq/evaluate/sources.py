"""Where an evaluation's inputs come from: the feature network (by name, zoo entry or path), the real images, and
the cache of their features."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np

from ganq.errors import GanqError
from ganq.evaluate.features import FeatureNet


FEATURE_KINDS = ("classifier", "inception", "vgg16", "vgg16-tv")


def default_features(dataset: str) -> str:
    return f"zoo:{dataset}-classifier"


def converted_path(kind: str, shape) -> Path:
    """Where `ganq convert-features KIND` puts its ONNX by default, per image shape."""
    from ganq.data import cache_dir
    return cache_dir() / "feature-nets" / f"{kind}-{'x'.join(map(str, shape))}.onnx"


def resolve_features(features: str | Path | None, dataset: str, shape) -> str:
    """classifier (the data set's zoo classifier), inception, vgg16, vgg16-tv (converted ones), zoo:NAME or a
    path."""
    features = str(features) if features is not None else "classifier"
    if features == "classifier":
        return default_features(dataset)
    if features in ("inception", "vgg16", "vgg16-tv"):
        path = converted_path(features, shape)
        if not path.is_file():
            raise GanqError(f"no converted {features} for {'x'.join(map(str, shape))} images at {path}; make it "
                            f"once with `ganq convert-features {features} --weights FILE --dataset {dataset}`")
        return str(path)
    if features.startswith("zoo:") or Path(features).exists():
        return features
    raise GanqError(f"unknown feature network {features!r}; choose classifier, inception, vgg16, vgg16-tv, "
                    "zoo:NAME or a path")


def real_images(dataset: str, n: int, split: str = "test", seed: int = 0, data_root=None) -> np.ndarray:
    """n real uint8 NHWC images: the whole split when n equals its size, else a seeded subset."""
    from ganq import data

    return subset(data.load(dataset, split, data_root=data_root), n, seed)


def data_identity(ds) -> str:
    """Where a split was read from and a digest of its images: two copies of a data set that differ never share a
    cache entry."""
    digest = hashlib.sha256(np.ascontiguousarray(ds.images).data).hexdigest()[:16]
    return f"{Path(ds.source).resolve()}|{digest}"


def subset(ds, n: int, seed: int) -> np.ndarray:
    dataset, split = ds.name, ds.split
    if n > len(ds.images):
        raise GanqError(f"--n {n} is more than the {len(ds.images)} images of {dataset} {split}")
    if n == len(ds.images):
        return ds.images
    idx = np.sort(np.random.default_rng(seed).choice(len(ds.images), n, replace=False))
    return ds.images[idx]


class FeatureCache:
    """Real-image features cached as .npz, keyed by feature network, data set, split, n, seed and the data's
    identity (its resolved source and a digest of the split's images)."""

    def __init__(self, folder: str | Path | None):
        from ganq.data import cache_dir
        self.folder = Path(folder) if folder else cache_dir() / "features"
        self._splits: dict = {}  # (dataset, split, data_root) -> (Dataset, identity): loaded and digested once

    def path(self, net: FeatureNet, dataset: str, split: str, n: int, seed: int, identity: str = "") -> Path:
        key = hashlib.sha256(f"{net.sha256}|{dataset}|{split}|{n}|{seed}|{identity}".encode()).hexdigest()[:24]
        return self.folder / f"real-{dataset}-{split}-{n}-{key}.npz"

    def entry(self, net: FeatureNet, dataset: str, split: str, n: int, seed: int, data_root=None):
        """(the cache file of these real features, the loaded split)."""
        from ganq import data

        key = (dataset, split, str(data_root))
        if key not in self._splits:
            ds = data.load(dataset, split, data_root=data_root)
            self._splits[key] = ds, data_identity(ds)
        ds, identity = self._splits[key]
        return self.path(net, dataset, split, n, seed, identity), ds

    def real(self, net: FeatureNet, dataset: str, split: str, n: int, seed: int, data_root=None, progress=None,
             entry=None):
        """(logits or None, features) of n real images, from the cache or computed and cached. entry: what
        entry() gave, when the caller already asked."""
        from ganq._io import atomic_path

        p, ds = entry or self.entry(net, dataset, split, n, seed, data_root)
        width = net.info.get("feature_dim")
        if p.exists():
            try:
                with np.load(p, allow_pickle=False) as z:
                    feats = z["features"]
                    logits = z["logits"] if "logits" in z else None
                ok = (feats.ndim == 2 and len(feats) == n and feats.dtype.kind == "f" and np.all(np.isfinite(feats))
                      and (not isinstance(width, int) or feats.shape[1] == width)
                      and (logits is None or (logits.ndim == 2 and len(logits) == n)))
            except Exception:  # truncated, not a zip, missing arrays: np.load raises many types
                ok = False
            if ok:
                return logits, feats
            from ganq.errors import warn
            warn(f"{p}: corrupt or foreign real-feature cache entry; discarded and recomputed")
            p.unlink(missing_ok=True)
        logits, feats = net(subset(ds, n, seed), progress=progress)
        try:
            with atomic_path(p) as tmp:
                with open(tmp, "wb") as fh:
                    np.savez(fh, features=feats, **({"logits": logits} if logits is not None else {}))
        except OSError:
            pass  # a read-only cache costs time, not results
        return logits, feats
