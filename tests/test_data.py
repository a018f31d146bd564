import io
import pickle
import zipfile

import numpy as np
import pytest
from PIL import Image

from conftest import make_idx_root, need_real, toy_digits, write_idx
from ganq import data
from ganq.data.idx import read_idx
from ganq.errors import GanqError


@pytest.mark.parametrize("gz", [False, True])
def test_idx_roundtrip(tmp_path, gz):
    images, labels = toy_digits(20)
    p = write_idx(tmp_path / "x-images-idx3-ubyte", images, gz)
    assert np.array_equal(read_idx(p), images)


def test_idx_truncated_and_garbage(tmp_path):
    images, _ = toy_digits(5)
    p = write_idx(tmp_path / "a", images)
    p.write_bytes(p.read_bytes()[:-10])
    with pytest.raises(GanqError, match="truncated or corrupt"):
        read_idx(p)
    (tmp_path / "b").write_bytes(b"hello world")
    with pytest.raises(GanqError, match="bad magic"):
        read_idx(tmp_path / "b")


@pytest.mark.parametrize("gz", [False, True])
def test_load_mnist_from_data_root(tmp_path, gz):
    root = make_idx_root(tmp_path, n_train=40, n_test=10, gz=gz)
    ds = data.load("mnist", "train", data_root=root)
    assert ds.images.shape == (40, 28, 28, 1) and ds.images.dtype == np.uint8
    assert ds.labels.dtype == np.int64 and np.array_equal(ds.labels, toy_digits(40, 0)[1])
    assert data.load("mnist", "test", data_root=root, limit=3).images.shape == (3, 28, 28, 1)


def test_lookup_order_env_and_data_root(tmp_path, monkeypatch):
    a = make_idx_root(tmp_path / "a", sub="fashion-mnist", n_train=8, n_test=8)
    b = make_idx_root(tmp_path / "b", sub="FashionMNIST/raw", n_train=16, n_test=8)
    monkeypatch.setenv("GANQ_DATA", str(a))
    assert len(data.load("fashion-mnist").images) == 8
    assert len(data.load("fashion-mnist", data_root=b).images) == 16  # --data-root comes first


def test_not_found_lists_every_place(tmp_path, monkeypatch):
    monkeypatch.setenv("GANQ_DATA", str(tmp_path / "env"))
    with pytest.raises(GanqError) as e:
        data.load("cifar10", data_root=tmp_path / "nowhere")
    msg = str(e.value)
    assert "nowhere (--data-root)" in msg and "env ($GANQ_DATA)" in msg and "user cache" in msg
    assert "/usr/share/datasets" in msg and "--download" in msg and "\n" not in msg


def test_unknown_dataset_lists_choices():
    with pytest.raises(GanqError, match="mnist, fashion-mnist, cifar10"):
        data.load("imagenet")


def _cifar_batch(n, seed):
    rng = np.random.default_rng(seed)
    return {b"batch_label": b"x", b"labels": [int(v) for v in rng.integers(0, 10, n)],
            b"data": rng.integers(0, 256, (n, 3072)).astype(np.uint8), b"filenames": [b"f"] * n}


def test_cifar_batches(tmp_path):
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    batches = {}
    for name, seed in [(f"data_batch_{i}", i) for i in range(1, 6)] + [("test_batch", 9)]:
        batches[name] = _cifar_batch(4, seed)
        (folder / name).write_bytes(pickle.dumps(batches[name], protocol=2))
    (folder / "batches.meta").write_bytes(pickle.dumps({b"label_names": [b"plane", b"car"]}))
    ds = data.load("cifar10", "train", data_root=tmp_path)
    assert ds.images.shape == (20, 32, 32, 3) and ds.classes[:2] == ["plane", "car"]
    first = batches["data_batch_1"][b"data"][0]
    # CIFAR stores planes R, G, B of 1024 pixels each; pixel (0, 1) green is at 1024 + 1
    assert ds.images[0, 0, 1, 1] == first[1025]
    assert list(ds.labels[:4]) == batches["data_batch_1"][b"labels"]


class _Evil:
    def __reduce__(self):
        return (print, ("pwned",))


def test_cifar_refuses_arbitrary_pickles(tmp_path, capsys):
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        (folder / name).write_bytes(pickle.dumps({b"data": _Evil(), b"labels": []}))
    with pytest.raises(GanqError, match="refusing to load builtins.print"):
        data.load("cifar10", data_root=tmp_path)
    assert "pwned" not in capsys.readouterr().out


def _write_folder(root, zipped):
    rng = np.random.default_rng(0)
    files = {}
    for split in ("train", "test"):
        for cls in ("cat", "dog"):
            for i in range(3):
                buf = io.BytesIO()
                Image.fromarray(rng.integers(0, 256, (40, 40, 3)).astype(np.uint8)).save(buf, "PNG")
                files[f"top/{split}/{cls}/{i}.png"] = buf.getvalue()
    if zipped:
        with zipfile.ZipFile(root, "w") as zf:
            for k, v in files.items():
                zf.writestr(k, v)
    else:
        for k, v in files.items():
            (root / k).parent.mkdir(parents=True, exist_ok=True)
            (root / k).write_bytes(v)
    return root if zipped else root / "top"


@pytest.mark.parametrize("zipped", [False, True])
def test_image_folder(tmp_path, zipped):
    src = _write_folder(tmp_path / ("x.zip" if zipped else "x"), zipped)
    ds = data.load(f"folder:{src}", "test", image_size=32, channels=3)
    assert ds.images.shape == (6, 32, 32, 3) and ds.classes == ["cat", "dog"]
    assert sorted(ds.labels.tolist()) == [0, 0, 0, 1, 1, 1]
    balanced = data.load(f"folder:{src}", "train", image_size=28, channels=1, limit=2)
    assert balanced.images.shape == (2, 28, 28, 1) and sorted(balanced.labels.tolist()) == [0, 1]


def test_image_folder_bad_file(tmp_path):
    (tmp_path / "f" / "cls").mkdir(parents=True)
    (tmp_path / "f" / "cls" / "broken.png").write_bytes(b"not a png")
    with pytest.raises(GanqError, match="not a readable image"):
        data.load(f"folder:{tmp_path / 'f'}", image_size=8)


@pytest.mark.realdata
def test_real_mnist_and_fashion():
    root = need_real("mnist")
    ds = data.load("mnist", "train", data_root=root)
    assert ds.images.shape == (60000, 28, 28, 1) and np.bincount(ds.labels).min() > 5000
    root = need_real("fashion-mnist")
    ds = data.load("fashion-mnist", "test", data_root=root)
    assert ds.images.shape == (10000, 28, 28, 1) and np.bincount(ds.labels).tolist() == [1000] * 10


@pytest.mark.realdata
def test_real_cifar_jpeg_copy():
    root = need_real("cifar10-jpeg")
    ds = data.load("cifar10-jpeg", "test", data_root=root)
    assert ds.images.shape == (10000, 32, 32, 3) and np.bincount(ds.labels).tolist() == [1000] * 10
    # the README's per-channel train means are 125.3/122.9/113.9; the test split is close to them
    assert np.allclose(ds.images.reshape(-1, 3).mean(0), [126.0, 123.7, 114.9], atol=2.0)


def test_limit_is_class_balanced_and_ordered():
    labels = np.repeat(np.arange(3), 5)  # stored class by class
    keep = data.balanced_head(labels, 6)
    assert np.bincount(labels[keep]).tolist() == [2, 2, 2] and list(keep) == sorted(keep)
    assert len(data.balanced_head(np.array([0, 0, 0, 1]), 4)) == 4


def test_embedded_fashion_mnist_test_split_on_a_bare_machine(tmp_path, monkeypatch):
    """What `make demo` needs when no other copy exists: every other location hidden."""
    from ganq import data

    monkeypatch.setattr(data, "SYSTEM_ROOT", tmp_path / "no-system")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "empty-cache"))
    monkeypatch.delenv("GANQ_DATA", raising=False)
    ds = data.load("fashion-mnist", "test")
    assert ds.images.shape == (10000, 28, 28, 1) and ds.images.dtype == np.uint8
    assert np.bincount(ds.labels).tolist() == [1000] * 10 and "embedded" in ds.source
    assert ds.classes[0] == "T-shirt/top"
    with pytest.raises(GanqError, match="fashion-mnist not found"):  # the train split is not shipped
        data.load("fashion-mnist", "train")
    with pytest.raises(GanqError, match="mnist not found"):
        data.load("mnist", "test")
    # a real copy elsewhere wins over the embedded one
    root = make_idx_root(tmp_path / "data", sub="FashionMNIST/raw", n_test=50)
    assert len(data.load("fashion-mnist", "test", data_root=root).images) == 50
