"""Data sets as uint8 NHWC arrays with labels, read torch-free from their standard on-disk formats.

Lookup order for a named data set: --data-root, $GANQ_DATA, the user cache (~/.cache/ganq/datasets),
/usr/share/datasets (Debian's packages), then, for the test split of Fashion-MNIST only, the copy embedded in the
package (ganq/data/embedded: 10,000 images, 4.4 MB, MIT licensed, what `make demo` needs on a bare machine).
`download=ganq.train.download.fetch` uses torchvision's downloader into the user cache (the torch side).
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from ganq.data.cifar import CLASSES as _CIFAR, read_batch, read_classes
from ganq.data.folder import read_image_folder
from ganq.data.idx import read_idx
from ganq.errors import GanqError
from ganq.registry import Registry

SPLITS = ("train", "test")
FOLDER_PREFIX = "folder:"
SYSTEM_ROOT = Path("/usr/share/datasets")
EMBEDDED_ROOT = Path(__file__).resolve().parent / "embedded"


@dataclass
class Dataset:
    """images: uint8 [N, H, W, C]; labels: int64 [N]; classes: names; source: where it was read."""

    name: str
    split: str
    images: np.ndarray
    labels: np.ndarray
    classes: list[str]
    source: str

    @property
    def shape_chw(self) -> tuple[int, int, int]:
        n, h, w, c = self.images.shape
        return (c, h, w)


def cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "ganq"


def search_roots(data_root: str | os.PathLike | None = None) -> list[tuple[str, Path]]:
    roots = []
    if data_root:
        roots.append(("--data-root", Path(data_root)))
    if os.environ.get("GANQ_DATA"):
        roots.append(("$GANQ_DATA", Path(os.environ["GANQ_DATA"])))
    roots.append(("user cache", cache_dir() / "datasets"))
    roots.append(("system", SYSTEM_ROOT))
    return roots


# --- IDX data sets (MNIST, Fashion-MNIST) -------------------------------------------------------------------

_IDX_FILES = {"train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
              "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")}


def _find_idx(folder: Path, stem: str) -> Path | None:
    for name in (stem, stem + ".gz"):
        if (folder / name).is_file():
            return folder / name
    return None


def _idx_locate(subdirs: tuple[str, ...], splits: tuple[str, ...] = SPLITS) -> Callable[[Path], Path | None]:
    def locate(root: Path) -> Path | None:
        for sub in subdirs:
            folder = root / sub
            if all(_find_idx(folder, stem) for split in splits for stem in _IDX_FILES[split]):
                return folder
        return None
    return locate


def _idx_load(folder: Path, split: str):
    img_stem, lab_stem = _IDX_FILES[split]
    images, labels = read_idx(_find_idx(folder, img_stem)), read_idx(_find_idx(folder, lab_stem))
    if images.ndim != 3 or images.dtype != np.uint8:
        raise GanqError(f"{folder}: {img_stem} is not a uint8 [N, H, W] image file")
    if labels.ndim != 1 or len(labels) != len(images):
        raise GanqError(f"{folder}: {lab_stem} does not have one label per image")
    return images[..., None], labels.astype(np.int64), None


# --- CIFAR-10 ------------------------------------------------------------------------------------------------

def _cifar_locate(root: Path) -> Path | None:
    for sub in ("cifar-10-batches-py", "cifar10/cifar-10-batches-py", "cifar10"):
        folder = root / sub
        if (folder / "data_batch_1").is_file() and (folder / "test_batch").is_file():
            return folder
    return None


def _cifar_load(folder: Path, split: str):
    names = [f"data_batch_{i}" for i in range(1, 6)] if split == "train" else ["test_batch"]
    missing = [n for n in names if not (folder / n).is_file()]
    if missing:
        raise GanqError(f"{folder}: missing CIFAR-10 batch files {missing}")
    parts = [read_batch(folder / n) for n in names]
    return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts]), read_classes(folder)


# --- the JPEG copy of CIFAR-10 (an image folder, possibly zipped) ---------------------------------------------

def _jpeg_locate(root: Path) -> Path | None:
    for name in ("cifar10-jpeg", "cifar10-jpeg.zip"):
        if (root / name).exists():
            return root / name
    return None


def _cached_folder(source: Path, split: str, size: int, channels: int):
    """Decoding 50,000 JPEGs takes a while: keep the decoded arrays in the user cache, keyed by the source."""
    st = source.stat()
    key = hashlib.sha256(f"{source.resolve()}|{st.st_size}|{st.st_mtime_ns}|{split}|{size}|{channels}".encode())
    path = cache_dir() / "decoded" / f"{key.hexdigest()[:24]}.npz"
    if path.exists():
        try:
            with np.load(path, allow_pickle=False) as z:
                images, labels, classes = z["images"], z["labels"], [str(c) for c in z["classes"]]
            if (images.dtype == np.uint8 and images.ndim == 4 and images.shape[1:] == (size, size, channels)
                    and labels.ndim == 1 and len(labels) == len(images) and len(images) > 0
                    and labels.min() >= 0 and labels.max() < len(classes)):
                return images, labels, classes
        except Exception:  # a truncated or foreign file: np.load raises many types
            pass
        from ganq.errors import warn
        warn(f"{path}: corrupt decoded-image cache entry; discarded and decoded again")
        path.unlink(missing_ok=True)
    images, labels, classes = read_image_folder(source, size, channels, split=split)
    from ganq._io import atomic_path
    try:
        with atomic_path(path) as tmp:
            with open(tmp, "wb") as fh:
                np.savez(fh, images=images, labels=labels, classes=np.asarray(classes))
    except OSError:
        pass  # a read-only cache only costs time
    return images, labels, classes


def _jpeg_load(source: Path, split: str):
    return _cached_folder(source, split, 32, 3)


@dataclass(frozen=True)
class Entry:
    name: str
    description: str
    shape: tuple[int, int, int]  # C, H, W
    locate: Callable[[Path], Path | None]
    load: Callable[[Path, str], tuple]
    how_to_get: str
    torchvision: str | None = None
    classes: tuple[str, ...] = ()
    embedded: Callable[[Path], Path | None] | None = None  # finds the test split shipped in the package
    one_split: Callable[[Path, str], Path | None] | None = None  # finds a folder holding one split alone


def _idx_one_split(subdirs: tuple[str, ...]) -> Callable[[Path, str], Path | None]:
    return lambda root, split: _idx_locate(subdirs, (split,))(root)


_DIGITS = tuple(str(i) for i in range(10))
_FASHION = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot")

REGISTRY: Registry[Entry] = Registry("data set", f", or {FOLDER_PREFIX}PATH for your own image folder")


def register(entry: Entry) -> None:
    REGISTRY.register(entry.name, entry)


register(Entry("mnist", "MNIST handwritten digits, 60k train + 10k test", (1, 28, 28),
               _idx_locate(("MNIST/raw", "mnist", "MNIST", "")), _idx_load,
               "put the four IDX files in <root>/MNIST/raw/ or run with --download", "MNIST", _DIGITS,
               one_split=_idx_one_split(("MNIST/raw", "mnist", "MNIST", ""))))
register(Entry("fashion-mnist", "Fashion-MNIST clothes, 60k train + 10k test", (1, 28, 28),
               _idx_locate(("FashionMNIST/raw", "fashion-mnist", "FashionMNIST", "")), _idx_load,
               "`apt-get install dataset-fashion-mnist`, put the IDX files in <root>/FashionMNIST/raw/, "
               "or run with --download", "FashionMNIST", _FASHION,
               embedded=_idx_locate(("fashion-mnist",), ("test",)),
               one_split=_idx_one_split(("FashionMNIST/raw", "fashion-mnist", "FashionMNIST", ""))))
register(Entry("cifar10", "CIFAR-10 (python batches), 50k train + 10k test", (3, 32, 32),
               _cifar_locate, _cifar_load,
               "extract cifar-10-python.tar.gz into <root>/ (giving cifar-10-batches-py/) or run with --download",
               "CIFAR10", _CIFAR))
register(Entry("cifar10-jpeg", "CIFAR-10 as JPEG (quality ~75, lossy: not comparable with CIFAR-10 numbers)",
               (3, 32, 32), _jpeg_locate, _jpeg_load,
               "put cifar10-jpeg.zip (train/<class>/*.jpg, test/<class>/*.jpg) or its unzipped folder in <root>/",
               classes=_CIFAR))


def names() -> list[str]:
    return REGISTRY.names()


def get_entry(name: str) -> Entry:
    return REGISTRY.get(name)


def locate(name: str, data_root=None, split: str = "train") -> tuple[Path | None, list[str]]:
    """Where data set `name` (with its `split`) is found (or None) and the places looked."""
    entry = get_entry(name)
    looked = []
    for label, root in search_roots(data_root):
        looked.append(f"{root} ({label})")
        found = entry.locate(root)
        if found is not None:
            return found, looked
        if entry.one_split is not None:
            alone = entry.one_split(root, split)
            if alone is not None:  # the split asked for, without the other: enough to read it
                return alone, looked
            other = "test" if split == "train" else "train"
            if label == "--data-root" and entry.one_split(root, other) is not None:
                raise GanqError(f"{name}: --data-root {root} holds only its {other} split "
                                f"({entry.one_split(root, other)}); put its {split} split there too, or leave "
                                "--data-root out")
    if split == "test" and entry.embedded is not None:
        looked.append(f"{EMBEDDED_ROOT} (embedded test split)")
        found = entry.embedded(EMBEDDED_ROOT)
        if found is not None:
            return found, looked
    return None, looked


def balanced_head(labels: np.ndarray, limit: int) -> np.ndarray:
    """Indices of `limit` samples taken round-robin over the classes in file order, returned in file order.

    A data set stored class by class (an image folder) then still gives every class to --limit."""
    per_class = [np.flatnonzero(labels == c) for c in np.unique(labels)]
    depth = max(len(p) for p in per_class)
    order = [p[i] for i in range(depth) for p in per_class if i < len(p)]
    return np.sort(np.asarray(order[:limit], dtype=np.int64))


def load(name: str, split: str = "train", data_root=None, download=None, limit: int | None = None,
         image_size: int | None = None, channels: int | None = None) -> Dataset:
    """Load a data set by name (or folder:PATH) as uint8 NHWC images, int64 labels. download: None, or a function
    entry -> folder that fetches a missing data set (the torch side hands in torchvision's, ganq.train.download)."""
    if split not in SPLITS:
        raise GanqError(f"unknown split {split!r}; choose train or test")
    if limit is not None and limit < 1:
        raise GanqError(f"--limit must be at least 1, got {limit}")
    if name.startswith(FOLDER_PREFIX):
        path = Path(name[len(FOLDER_PREFIX):]).expanduser()
        images, labels, classes = read_image_folder(path, image_size, channels or 3, split=split, limit=limit)
        return Dataset(name, split, images, labels, classes, str(path))
    entry = get_entry(name)
    found, looked = locate(name, data_root, split)
    if found is None:
        if not download:
            raise GanqError(f"{name} not found; looked in {', '.join(looked)}; {entry.how_to_get}")
        found = download(entry)
    images, labels, classes = entry.load(found, split)
    if limit is not None and limit < len(images):
        keep = balanced_head(labels, limit)
        images, labels = images[keep], labels[keep]
    n, h, w, c = images.shape
    if (image_size and (h, w) != (image_size, image_size)) or (channels and channels != c):
        from ganq.data.resize import resize_images  # e.g. Fashion-MNIST at 32x32 for a 32x32 architecture

        images = resize_images(images, image_size or h, image_size or w, channels or c)
    return Dataset(name, split, np.ascontiguousarray(images), labels, list(classes or entry.classes), str(found))


def catalogue(data_root=None) -> list[dict]:
    """Every data set ganq knows, with where it was found (or how to get it)."""
    rows = []
    for name in names():
        entry = get_entry(name)
        found, _ = locate(name, data_root)
        if found is None:
            test_only, _ = locate(name, data_root, "test")
            found = f"{test_only} (test split only)" if test_only else None
        rows.append({"name": name, "shape": "x".join(map(str, entry.shape)), "found": str(found) if found else None,
                     "description": entry.description, "how_to_get": None if found else entry.how_to_get})
    return rows
