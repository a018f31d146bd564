import csv
import json

import pytest

torch = pytest.importorskip("torch")

from conftest import make_idx_root, need_real  # noqa: E402
from ganq.errors import GanqError  # noqa: E402
from ganq.spec import GeneratorSpec  # noqa: E402
from ganq.train import checkpoint  # noqa: E402
from ganq.train.archs import ARCHS, build  # noqa: E402
from ganq.train.loop import TrainConfig, train  # noqa: E402


@pytest.fixture(autouse=True)
def one_thread():
    torch.set_num_threads(1)


@pytest.mark.parametrize("arch,shape", [("fc4", (1, 28, 28)), ("cnn5", (1, 28, 28)), ("cnn3", (1, 28, 28)),
                                        ("cnn3", (3, 32, 32)), ("dcgan", (3, 32, 32)), ("dcgan", (1, 32, 32))])
def test_architectures_shapes(arch, shape):
    spec = GeneratorSpec(latent_dim=8, channels=shape[0], height=shape[1], width=shape[2], arch=arch)
    g, d = build(spec)
    g.eval()
    d.eval()
    x = g(torch.randn(3, 8))
    assert x.shape == (3, *shape)
    assert x.min() >= -1 and x.max() <= 1
    assert d(x).reshape(-1).shape == (3,)


def test_study_layer_counts():
    def count(m, types):
        return sum(isinstance(x, types) for x in m.modules())
    conv = (torch.nn.Conv2d, torch.nn.ConvTranspose2d)
    g, d = build(GeneratorSpec(latent_dim=8, channels=1, height=28, width=28, arch="fc4"))
    assert count(g, torch.nn.Linear) == 4 and count(d, torch.nn.Linear) == 4
    g, d = build(GeneratorSpec(latent_dim=8, channels=1, height=28, width=28, arch="cnn5"))
    assert count(g, conv + (torch.nn.Linear,)) == 5 and count(d, conv + (torch.nn.Linear,)) == 5
    g, _ = build(GeneratorSpec(latent_dim=8, channels=3, height=32, width=32, arch="cnn3"))
    assert count(g, conv) == 3


def test_arch_must_fit():
    with pytest.raises(GanqError, match="dcgan takes 32x32 images, but mnist has 1x28x28"):
        build(GeneratorSpec(latent_dim=8, channels=1, height=28, width=28, arch="dcgan", dataset="mnist"))
    with pytest.raises(GanqError, match="choose one of fc4, cnn5, cnn3, dcgan"):
        build(GeneratorSpec(latent_dim=8, channels=1, height=28, width=28, arch="resnet"))
    assert set(ARCHS) == {"fc4", "cnn5", "cnn3", "dcgan"}


def _cfg(**kw):
    base = dict(dataset="mnist", arch="fc4", epochs=1, batch_size=32, latent_dim=16, seed=3)
    base.update(kw)
    return TrainConfig(**base)


def _weights(run):
    return torch.load(run / "checkpoint.pt", weights_only=True)["generator"]


def _same(a, b):
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_deterministic_and_resume_matches_straight_run(tmp_path):
    root = make_idx_root(tmp_path / "data", n_train=96)
    train(_cfg(epochs=2), tmp_path / "a", data_root=root)
    train(_cfg(epochs=2), tmp_path / "b", data_root=root)
    assert _same(_weights(tmp_path / "a"), _weights(tmp_path / "b"))

    train(_cfg(epochs=1), tmp_path / "c", data_root=root)
    one_epoch = _weights(tmp_path / "c")
    assert not _same(one_epoch, _weights(tmp_path / "a"))
    train(_cfg(epochs=2), tmp_path / "c", data_root=root, resume=True)
    assert _same(_weights(tmp_path / "c"), _weights(tmp_path / "a"))

    state = checkpoint.load(tmp_path / "c" / "checkpoint.pt")
    assert state["epoch"] == 2 and state["spec"]["arch"] == "fc4" and state["config"]["seed"] == 3
    with open(tmp_path / "c" / "losses.csv") as fh:
        assert [r["epoch"] for r in csv.DictReader(fh)] == ["1", "2"]
    assert sorted(p.name for p in (tmp_path / "c" / "samples").iterdir()) == ["epoch-001.png", "epoch-002.png"]
    assert json.loads((tmp_path / "c" / "run.json").read_text())["ganq"] == "run"


def test_seed_changes_weights(tmp_path):
    root = make_idx_root(tmp_path / "data", n_train=64)
    train(_cfg(seed=1), tmp_path / "a", data_root=root)
    train(_cfg(seed=2), tmp_path / "b", data_root=root)
    assert not _same(_weights(tmp_path / "a"), _weights(tmp_path / "b"))


def test_refuses_foreign_out_folder(tmp_path):
    root = make_idx_root(tmp_path / "data", n_train=64)
    out = tmp_path / "mine"
    out.mkdir()
    (out / "thesis.tex").write_text("precious")
    with pytest.raises(GanqError, match="not a ganq run"):
        train(_cfg(), out, data_root=root)
    assert (out / "thesis.tex").read_text() == "precious" and len(list(out.iterdir())) == 1
    train(_cfg(), tmp_path / "run", data_root=root)
    with pytest.raises(GanqError, match="--resume"):
        train(_cfg(), tmp_path / "run", data_root=root)


def test_corrupt_checkpoint_on_resume(tmp_path):
    root = make_idx_root(tmp_path / "data", n_train=64)
    train(_cfg(), tmp_path / "run", data_root=root)
    ckpt = tmp_path / "run" / "checkpoint.pt"
    ckpt.write_bytes(ckpt.read_bytes()[:1000])
    before = ckpt.read_bytes()
    with pytest.raises(GanqError, match="not a readable ganq checkpoint"):
        train(_cfg(epochs=2), tmp_path / "run", data_root=root, resume=True)
    assert ckpt.read_bytes() == before


def test_resume_with_other_settings_refused(tmp_path):
    root = make_idx_root(tmp_path / "data", n_train=64)
    train(_cfg(), tmp_path / "run", data_root=root)
    with pytest.raises(GanqError, match="lr"):
        train(_cfg(epochs=2, lr=1e-3), tmp_path / "run", data_root=root, resume=True)


def test_checkpoint_refuses_pickled_code(tmp_path):
    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))
    torch.save({"x": Evil()}, tmp_path / "evil.pt")
    with pytest.raises(GanqError, match="not a readable ganq checkpoint"):
        checkpoint.load(tmp_path / "evil.pt")


@pytest.mark.realdata
def test_real_fashion_mnist_short_run(tmp_path):
    root = need_real("fashion-mnist")
    row = train(_cfg(dataset="fashion-mnist", arch="cnn3", limit=512, batch_size=64), tmp_path / "r", data_root=root)
    assert row["epoch"] == 1 and 0 < row["d_loss"] < 10


def test_kill_mid_epoch_then_resume_matches_uninterrupted(tmp_path):
    """A run killed (SIGKILL) during epoch 2 and resumed ends bitwise equal to an uninterrupted one."""
    import os
    import signal
    import subprocess
    import sys
    import time

    root = make_idx_root(tmp_path / "data", n_train=1600)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}

    def cmd(out, *extra):
        return [sys.executable, "-m", "ganq.cli", "train", "--dataset", "mnist", "--arch", "fc4", "--epochs", "2",
                "--batch-size", "16", "--latent-dim", "16", "--seed", "7", "--out", str(out),
                "--data-root", str(root), *extra]

    subprocess.run(cmd(tmp_path / "straight"), check=True, env=env, capture_output=True)
    p = subprocess.Popen(cmd(tmp_path / "killed"), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    ckpt = tmp_path / "killed" / "checkpoint.pt"
    deadline = time.time() + 120
    while not ckpt.exists() and time.time() < deadline and p.poll() is None:
        time.sleep(0.05)
    time.sleep(0.2)  # into epoch 2 (100 steps)
    assert p.poll() is None, "the run ended before it could be killed mid-epoch"
    os.kill(p.pid, signal.SIGKILL)
    p.wait()
    assert checkpoint.load(ckpt)["epoch"] == 1  # the last complete epoch, readable
    subprocess.run(cmd(tmp_path / "killed", "--resume"), check=True, env=env, capture_output=True)
    a = torch.load(tmp_path / "straight" / "checkpoint.pt", weights_only=True)
    b = torch.load(ckpt, weights_only=True)
    assert b["epoch"] == 2
    assert _same(a["generator"], b["generator"]) and _same(a["discriminator"], b["discriminator"])
