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
    with pytest.raises(GanqError, match="choose one of fc4, cnn5, cnn3, dcgan, cgan, cgan-bn, style, sr2x"):
        build(GeneratorSpec(latent_dim=8, channels=1, height=28, width=28, arch="resnet"))
    assert set(ARCHS) == {"fc4", "cnn5", "cnn3", "dcgan", "cgan", "cgan-bn", "style", "sr2x"}


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


@pytest.mark.parametrize("damage", ["garbage", "no-epoch-column", "bad-rows", "binary"])
def test_damaged_losses_csv_on_resume(tmp_path, damage, capfd):
    """losses.csv is a log: a damaged one loses its bad rows (one warning) and the resume goes on."""
    root = make_idx_root(tmp_path / "data", n_train=64)
    train(_cfg(), tmp_path / "run", data_root=root)
    log = tmp_path / "run" / "losses.csv"
    good = log.read_text()
    log.write_bytes({"garbage": b"%%%\n,,,\n", "no-epoch-column": b"a,b\n1,2\n",
                     "bad-rows": (good + "x,1,2\n2,,,,,,,\n").encode(), "binary": bytes(range(256))}[damage])
    capfd.readouterr()
    row = train(_cfg(epochs=2), tmp_path / "run", data_root=root, resume=True)
    assert row["epoch"] == 2
    assert "warning:" in capfd.readouterr().err
    rows = list(csv.DictReader(open(log)))
    assert rows[-1]["epoch"] == "2" and ([r["epoch"] for r in rows] == ["1", "2"] if damage == "bad-rows" else True)


@pytest.mark.parametrize("damage", ["missing", "garbage", "wrong-fields"])
def test_damaged_run_json_on_resume_uses_the_checkpoint(tmp_path, damage, capfd):
    root = make_idx_root(tmp_path / "data", n_train=64)
    train(_cfg(), tmp_path / "run", data_root=root)
    run_json = tmp_path / "run" / "run.json"
    if damage == "missing":
        run_json.unlink()
    else:
        run_json.write_text({"garbage": "{not json", "wrong-fields": '{"ganq": "run", "config": {"x": 1}}'}[damage])
    capfd.readouterr()
    assert train(_cfg(epochs=2), tmp_path / "run", data_root=root, resume=True)["epoch"] == 2
    assert "using the settings stored in checkpoint.pt" in capfd.readouterr().err
    assert json.loads(run_json.read_text())["config"]["epochs"] == 2  # rewritten whole
    # both gone: one clear error
    run_json.write_text("{")
    (tmp_path / "run" / "checkpoint.pt").unlink()
    with pytest.raises(GanqError, match="nothing to resume|missing or damaged"):
        train(_cfg(epochs=3), tmp_path / "run", data_root=root, resume=True)


@pytest.mark.parametrize("field,value,msg", [
    ("generator", "weights", "generator is not a dict of tensors"),
    ("discriminator", {"w": 1.0}, "discriminator is not a dict of tensors"),
    ("optimizers", {"g": [], "d": {}}, "optimizers is not"),
    ("epoch", "3", "epoch is '3'"), ("epoch", -1, "epoch is -1"), ("epoch", True, "epoch is True"),
    ("rng", {"torch": [1, 2]}, "rng has no torch generator state"),
    ("spec", [1], "spec is not an object"), ("config", None, "config is not an object"),
    ("generator_ema", {"w": "x"}, "generator_ema is not")])
def test_checkpoint_fields_with_wrong_types(tmp_path, field, value, msg):
    root = make_idx_root(tmp_path / "data", n_train=64)
    train(_cfg(), tmp_path / "run", data_root=root)
    ckpt = tmp_path / "run" / "checkpoint.pt"
    state = torch.load(ckpt, weights_only=True)
    state[field] = value
    torch.save(state, ckpt)
    with pytest.raises(GanqError, match=msg):
        checkpoint.load(ckpt)
    with pytest.raises(GanqError, match=msg):
        train(_cfg(epochs=2), tmp_path / "run", data_root=root, resume=True)


def test_checkpoint_weights_of_the_wrong_shape(tmp_path):
    root = make_idx_root(tmp_path / "data", n_train=64)
    train(_cfg(), tmp_path / "run", data_root=root)
    ckpt = tmp_path / "run" / "checkpoint.pt"
    state = torch.load(ckpt, weights_only=True)
    k = next(iter(state["generator"]))
    state["generator"][k] = torch.zeros(3, 3, 3)
    torch.save(state, ckpt)
    with pytest.raises(GanqError, match="does not fit"):
        train(_cfg(epochs=2), tmp_path / "run", data_root=root, resume=True)
    with pytest.raises(GanqError, match="do not fit architecture"):
        checkpoint.load_generator(ckpt)


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


# --- EMA ------------------------------------------------------------------------------------------------------

def test_ema_is_the_closed_form_average():
    from ganq.train.loop import GeneratorEMA

    lin = torch.nn.Sequential(torch.nn.Linear(3, 2), torch.nn.BatchNorm1d(2))
    decay = 0.9
    seq = [torch.randn(2, 3, generator=torch.Generator().manual_seed(t)) for t in range(6)]
    with torch.no_grad():
        lin[0].weight.copy_(seq[0])
    ema = GeneratorEMA(lin, decay)
    for w in seq[1:]:
        with torch.no_grad():
            lin[0].weight.copy_(w)
        ema.update(lin)
    T = len(seq) - 1
    want = decay ** T * seq[0] + sum((1 - decay) * decay ** (T - t) * seq[t] for t in range(1, T + 1))
    sd = ema.state_dict(lin)
    assert torch.allclose(sd["0.weight"], want, atol=1e-6)
    lin[1].running_mean.fill_(0.25)  # BatchNorm statistics are copied, not averaged
    assert torch.equal(ema.state_dict(lin)["1.running_mean"], lin[1].running_mean)


def test_train_with_ema_resumes_and_exports(tmp_path):
    from ganq.export import export
    from ganq.onnx_io import read_spec

    import onnx

    root = make_idx_root(tmp_path / "data", n_train=96)
    train(_cfg(epochs=2, ema=0.9), tmp_path / "a", data_root=root)
    train(_cfg(epochs=1, ema=0.9), tmp_path / "b", data_root=root)
    train(_cfg(epochs=2, ema=0.9), tmp_path / "b", data_root=root, resume=True)
    a = torch.load(tmp_path / "a" / "checkpoint.pt", weights_only=True)
    b = torch.load(tmp_path / "b" / "checkpoint.pt", weights_only=True)
    assert _same(a["generator_ema"], b["generator_ema"]) and a["ema_decay"] == 0.9
    assert not _same(a["generator_ema"], a["generator"])
    # the raw weights are those of a run without EMA (the EMA is a side computation)
    train(_cfg(epochs=2), tmp_path / "c", data_root=root)
    assert _same(_weights(tmp_path / "c"), a["generator"])
    r = export(tmp_path / "a", tmp_path / "ema.onnx", n=16, ema=True)
    assert r["weights"] == "ema"
    spec = read_spec(onnx.load(str(tmp_path / "ema.onnx")))
    assert spec.extra == {"weights": "ema", "epoch": 2, "ema_decay": 0.9}
    with pytest.raises(GanqError, match="no generator EMA"):
        export(tmp_path / "c", tmp_path / "x.onnx", n=16, ema=True)
    for bad in (1.0, 1.5, -0.1):
        with pytest.raises(GanqError, match="--ema must be in"):
            _cfg(ema=bad)


# --- many processes (torchrun + DDP, gloo) ------------------------------------------------------------------

def _torchrun(tmp_path, root, out, nproc, *extra, popen=False):
    import os
    import subprocess
    import sys

    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "ganq.cli", "train", "--dataset", "mnist", "--arch", "fc4", "--batch-size", "32",
           "--latent-dim", "16", "--dropout", "0", "--seed", "5", "--data-root", str(root), "--out", str(out),
           *extra]
    if nproc == 1:  # a 1-process torchrun: the distributed path with one process
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=1", "-m",
               "ganq.cli", *cmd[3:]]
    else:
        cmd += ["--nproc", str(nproc)]
    if popen:
        return subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                start_new_session=True)
    r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    return r


def test_two_processes_match_one(tmp_path):
    """2 processes x 16 images = 1 process x 32 images: the same global batches, latents and synchronised
    BatchNorm, so after epoch 1 (10 steps) the weights agree up to float32 summation order. Tolerance: weight
    matrices 1e-5 (seen: 1.3e-6); biases and BatchNorm statistics lr * steps, because Adam rescales the near-zero
    gradient of a bias feeding a BatchNorm (which cancels it) to a full step whatever its rounding; the generated
    images 1e-3. Compared at epoch 1, not at the end: early GAN training under Adam amplifies rounding-sized
    differences ~1000x in the next 10 steps (measured: a 1e-7 perturbation of a 1-process run's generator after
    epoch 1 ends epoch 2 1.5e-3 away; 2 vs 1 processes end it 1.5e-3 apart), so the end weights say nothing."""
    root = make_idx_root(tmp_path / "data", n_train=320)
    _torchrun(tmp_path, root, tmp_path / "one", 1, "--epochs", "2", "--keep-every", "1")
    _torchrun(tmp_path, root, tmp_path / "two", 2, "--epochs", "2", "--keep-every", "1")
    a = torch.load(tmp_path / "one" / "checkpoints" / "epoch-001.pt", weights_only=True)
    b = torch.load(tmp_path / "two" / "checkpoints" / "epoch-001.pt", weights_only=True)
    assert a["config"]["nproc"] == 1 and b["config"]["nproc"] == 2 and a["epoch"] == b["epoch"] == 1
    steps = 320 // 32
    for part in ("generator", "discriminator"):
        for k, x in a[part].items():
            diff = float((x.double() - b[part][k].double()).abs().max())
            assert diff <= (1e-5 if x.dim() >= 2 else 2e-4 * steps), (part, k, diff)
    from ganq.train.checkpoint import load_generator

    g1, _, _ = load_generator(tmp_path / "one" / "checkpoints" / "epoch-001.pt")
    g2, _, _ = load_generator(tmp_path / "two" / "checkpoints" / "epoch-001.pt")
    z = torch.randn(64, 16, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert float((g1(z) - g2(z)).abs().max()) < 1e-3
    # both ran to the end; only rank 0 wrote: one sample grid per epoch, one losses row per epoch
    assert torch.load(tmp_path / "two" / "checkpoint.pt", weights_only=True)["epoch"] == 2
    assert sorted(p.name for p in (tmp_path / "two" / "samples").iterdir()) == ["epoch-001.png", "epoch-002.png"]
    with open(tmp_path / "two" / "losses.csv") as fh:
        assert [r["epoch"] for r in csv.DictReader(fh)] == ["1", "2"]


def _descendants(pid: int) -> list[int]:
    from pathlib import Path

    parent = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
            parent[int(stat.parent.name)] = int(fields[1])
        except (OSError, IndexError, ValueError):
            pass
    out, todo = [], [pid]
    while todo:
        cur = todo.pop()
        kids = [c for c, pp in parent.items() if pp == cur]
        out += kids
        todo += kids
    return out


def test_two_processes_killed_then_resumed_match_uninterrupted(tmp_path):
    import os
    import signal
    import time

    root = make_idx_root(tmp_path / "data", n_train=1600)
    _torchrun(tmp_path, root, tmp_path / "straight", 2, "--epochs", "2")
    p = _torchrun(tmp_path, root, tmp_path / "killed", 2, "--epochs", "2", popen=True)
    ckpt = tmp_path / "killed" / "checkpoint.pt"
    deadline = time.time() + 120
    while not ckpt.exists() and time.time() < deadline and p.poll() is None:
        time.sleep(0.05)
    time.sleep(0.3)
    assert p.poll() is None, "the run ended before it could be killed"
    for pid in _descendants(p.pid) + [p.pid]:  # the workers (torchrun starts them in sessions of their own)
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    p.wait()
    time.sleep(0.5)
    assert checkpoint.load(ckpt)["epoch"] == 1
    # another number of processes: refused in one line (the dropout streams depend on it), nothing changed
    before = ckpt.read_bytes()
    import subprocess
    import sys

    r = subprocess.run([sys.executable, "-m", "ganq.cli", "train", "--dataset", "mnist", "--arch", "fc4",
                        "--batch-size", "32", "--latent-dim", "16", "--dropout", "0", "--seed", "5", "--data-root",
                        str(root), "--out", str(tmp_path / "killed"), "--epochs", "2", "--resume"],
                       capture_output=True, text=True)
    assert r.returncode == 1 and "trained with 2 process(es)" in r.stderr and "Traceback" not in r.stderr
    assert ckpt.read_bytes() == before
    _torchrun(tmp_path, root, tmp_path / "killed", 2, "--epochs", "2", "--resume")
    a = torch.load(tmp_path / "straight" / "checkpoint.pt", weights_only=True)
    b = torch.load(ckpt, weights_only=True)
    assert b["epoch"] == 2
    assert _same(a["generator"], b["generator"]) and _same(a["discriminator"], b["discriminator"])


def test_nproc_bad_input(tmp_path):
    from typer.testing import CliRunner

    from ganq.cli import app

    root = make_idx_root(tmp_path / "data", n_train=64)
    for args, msg in ((["--nproc", "3"], "does not split over 3"), (["--nproc", "32"], "leaves 1 image"),
                      (["--nproc", "0"], "1..64"), (["--ema", "1"], "--ema must be in")):
        r = CliRunner().invoke(app, ["train", "--dataset", "mnist", "--arch", "fc4", "--batch-size", "32",
                                     "--data-root", str(root), "--out", str(tmp_path / "r"), *args])
        assert r.exit_code == 1 and msg in r.output, (args, r.output)
        assert not (tmp_path / "r").exists()


def test_a_full_disk_at_the_first_checkpoint_is_one_error_and_leaves_no_run_folder(tmp_path, monkeypatch):
    """torch's zip writer on a full disk says "unexpected pos"; ganq says which file, and a new run that has no
    checkpoint leaves no half-made folder (run.json and a sample without weights)."""
    from ganq.errors import GanqError

    root = make_idx_root(tmp_path / "data", n_train=64)

    def full(*a, **k):
        raise RuntimeError("[enforce fail at inline_container.cc:778] . PytorchStreamWriter failed writing file "
                           "data/0: file write failed / unexpected pos 64 vs 0")
    monkeypatch.setattr(checkpoint.torch, "save", full)
    with pytest.raises(GanqError, match=r"checkpoint.pt: cannot write the checkpoint .*bytes free there"):
        train(_cfg(), tmp_path / "run", data_root=root)
    assert not (tmp_path / "run").exists()
