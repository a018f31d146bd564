"""Shared fixtures: tiny data sets written in the standard formats, a tiny trained run, real-data lookup."""

from __future__ import annotations

import gzip
import os
import struct
import sys
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))  # tests/fixtures
# read before the autouse fixture below clears $GANQ_DATA for the synthetic tests
_REAL_ROOT = os.environ.get("GANQ_TEST_DATA") or os.environ.get("GANQ_DATA")


def write_idx(path: Path, array: np.ndarray, gz: bool = False) -> Path:
    code = {np.dtype(np.uint8): 0x08}[array.dtype]
    raw = bytes([0, 0, code, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape) + array.tobytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    if gz:
        path = path.with_name(path.name + ".gz")
        path.write_bytes(gzip.compress(raw))
    else:
        path.write_bytes(raw)
    return path


def toy_digits(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """n 28x28 uint8 images: a bright square whose position depends on the label (learnable, tiny)."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 10, n).astype(np.uint8)
    images = rng.integers(0, 30, (n, 28, 28)).astype(np.uint8)
    for i, y in enumerate(labels):
        r, c = 2 + 2 * (y // 5) * 5, 2 + (y % 5) * 5
        images[i, r:r + 8, c:c + 5] = 250
    return images, labels


def make_idx_root(root: Path, sub: str = "MNIST/raw", n_train: int = 256, n_test: int = 64, gz: bool = False):
    folder = root / sub
    for split, n, seed in (("train", n_train, 0), ("t10k", n_test, 1)):
        images, labels = toy_digits(n, seed)
        write_idx(folder / f"{split}-images-idx3-ubyte", images, gz)
        write_idx(folder / f"{split}-labels-idx1-ubyte", labels, gz)
    return root


@pytest.fixture
def idx_root(tmp_path):
    return make_idx_root(tmp_path / "data")


@pytest.fixture(autouse=True)
def isolated_cache(tmp_path, monkeypatch):
    """Tests never see the user's cache or $GANQ_DATA unless they set it."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.delenv("GANQ_DATA", raising=False)


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory):
    """A cnn3 GAN trained one epoch on 128 toy digits (shared by export and quantize tests)."""
    torch = pytest.importorskip("torch")
    from ganq.train.loop import TrainConfig, train

    root = make_idx_root(tmp_path_factory.mktemp("data"), n_train=128)
    out = tmp_path_factory.mktemp("runs") / "tiny"
    torch.set_num_threads(1)
    train(TrainConfig(dataset="mnist", arch="cnn3", epochs=1, batch_size=32, latent_dim=16), out, data_root=root)
    return out


@pytest.fixture(scope="session")
def exported_onnx(tiny_run, tmp_path_factory):
    """tiny_run's generator through `ganq export` (torch)."""
    from ganq.export import export

    path = tmp_path_factory.mktemp("onnx") / "g.onnx"
    export(tiny_run, path, n=32)
    return path


@pytest.fixture(scope="session")
def tiny_onnx(tmp_path_factory):
    """A torch-free cnn3-like generator (z [N, 16] -> [N, 1, 28, 28], spec: mnist) from seeded weights."""
    from fixtures.models import generator, write

    path = tmp_path_factory.mktemp("onnx") / "g.onnx"
    write(generator(), path)
    return path


def real_data_root() -> Path | None:
    return Path(_REAL_ROOT) if _REAL_ROOT else None


def need_real(name: str):
    """Skip unless data set `name` is found through $GANQ_TEST_DATA/$GANQ_DATA or the system folders."""
    from ganq import data

    found, looked = data.locate(name, real_data_root())
    if found is None:
        pytest.skip(f"real {name} not found (looked in {', '.join(looked)}); set GANQ_TEST_DATA to run this test")
    return real_data_root()


@pytest.fixture(scope="session")
def toy_data_root(tmp_path_factory):
    return make_idx_root(tmp_path_factory.mktemp("toy"), n_train=512, n_test=200)


@pytest.fixture(scope="session")
def tiny_classifier(tmp_path_factory):
    """A torch-free feature network (28x28x1 -> 16 features, 10 logits) from seeded weights, and its info."""
    import json

    from fixtures.models import feature_net, write
    from ganq.onnx_io import META_FEATURES, read_metadata

    out = tmp_path_factory.mktemp("features") / "toy-features.onnx"
    model = feature_net()
    write(model, out)
    return out, json.loads(read_metadata(model)[META_FEATURES])


@pytest.fixture(scope="session")
def trained_classifier(toy_data_root, tmp_path_factory):
    """A classifier trained briefly on the toy digits (whose label sets a bright square's position)."""
    torch = pytest.importorskip("torch")
    from ganq.train.classifier import train_classifier

    torch.set_num_threads(1)
    out = tmp_path_factory.mktemp("clf") / "toy-classifier.onnx"
    info = train_classifier("mnist", out, epochs=2, batch_size=64, width=8, data_root=toy_data_root)
    return out, info
