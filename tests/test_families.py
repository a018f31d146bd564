"""The trainable families of issue 26: cgan (conditional), style (StyleGAN2-like) and sr2x (super-resolution). Each
trains a few steps on tiny data, exports with its spec, runs in onnxruntime equal to torch, and goes through quantize
and evaluate; the parts with a closed form (R1, the unfused modulated convolution, the ground-truth replay) are
checked against it."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from ganq.onnx_io import ground_truth, load_model, read_spec, run, sample_inputs  # noqa: E402
from ganq.spec import GeneratorSpec  # noqa: E402
from ganq.train import families  # noqa: E402
from ganq.train.archs import ARCHS, build  # noqa: E402
from ganq.train.loop import TrainConfig, train  # noqa: E402

KINDS = {"cgan": ["latent", "label"], "cgan-bn": ["latent", "label"], "style": ["latent"] + ["noise"] * 7, "sr2x": ["image"]}
SIZE = {"style": 32}


@pytest.fixture(autouse=True)
def one_thread():
    torch.set_num_threads(1)


_RUNS: dict = {}


def trained(arch, toy_data_root, tmp_path_factory):
    """(run folder, exported .onnx) of one epoch of `arch` on the toy digits, once per session."""
    if arch not in _RUNS:
        from ganq.export import export

        folder = tmp_path_factory.mktemp(arch)
        cfg = TrainConfig(dataset="mnist", arch=arch, epochs=1, batch_size=32, latent_dim=16, seed=1,
                          image_size=SIZE.get(arch), lr=2e-3 if arch == "style" else 2e-4)
        train(cfg, folder / "run", data_root=toy_data_root)
        export(folder / "run", folder / f"{arch}.onnx", n=64)
        _RUNS[arch] = folder / "run", folder / f"{arch}.onnx"
    return _RUNS[arch]


def test_registered_with_their_family():
    assert {a: ARCHS.get(a).family for a in ("cgan", "cgan-bn", "style", "sr2x")} == {
        "cgan": "conditional", "cgan-bn": "conditional", "style": "style", "sr2x": "image-to-image"}


@pytest.mark.parametrize("arch", ["cgan", "cgan-bn", "style", "sr2x"])
def test_trains_exports_its_spec_and_onnxruntime_equals_torch(arch, toy_data_root, tmp_path_factory):
    from ganq.train.checkpoint import load_generator

    folder, path = trained(arch, toy_data_root, tmp_path_factory)
    model = load_model(path)
    spec = read_spec(model)
    assert [i.kind for i in spec.all_inputs] == KINDS[arch]
    assert spec.image_shape == (1, SIZE.get(arch, 28), SIZE.get(arch, 28))
    if arch.startswith("cgan"):
        assert spec.inputs_of("label")[0].classes == 10
    if arch == "sr2x":
        (img,) = spec.inputs_of("image")
        assert img.shape == (1, 14, 14) and img.source == "mnist" and spec.extra["ground_truth"]
    feed = sample_inputs(spec, 9, seed=5, data_root=toy_data_root)  # images from the data set, not probes
    (got,) = run(model, feed, [spec.output_name])
    g, _, _ = load_generator(folder)
    with torch.no_grad():
        want = g(*[torch.from_numpy(v) for v in feed.values()]).numpy()
    assert got.shape == want.shape == (9, *spec.image_shape)
    assert np.abs(got - want).max() <= 1e-4
    assert np.abs(got).max() <= 1.0


@pytest.mark.parametrize("arch,method", [("cgan", "gptq"), ("cgan-bn", "mse"), ("style", "mse"),
                                         ("sr2x", "adaround")])
def test_quantize_and_evaluate(arch, method, toy_data_root, tmp_path_factory, tiny_classifier):
    from ganq.evaluate import EvalOptions, evaluate
    from ganq.quantize import QuantizeOptions, quantize_model

    _, path = trained(arch, toy_data_root, tmp_path_factory)
    model = load_model(path)
    spec = read_spec(model)
    q, rep = quantize_model(model, QuantizeOptions(bits=4, method=method, granularity="channel", calibration=32,
                                                   format="packed"), data_root=toy_data_root)
    assert rep["weight_share"] >= 0.95, rep["weights_left_float"]
    assert all(r["levels_used"] <= 16 for r in rep["tensors"])
    out = tmp_path_factory.mktemp(f"{arch}-q") / "q.onnx"
    import onnx
    onnx.save(q, str(out))
    feats = tiny_classifier[0]
    e = evaluate(out, "mnist", feats, EvalOptions(n=100, k=3), data_root=toy_data_root, reference=path,
                 per_class=arch.startswith("cgan"))
    assert np.isfinite(e["fid"]) and 0 < e["psnr_fp32"] <= 100
    if arch.startswith("cgan"):
        assert len(e["fid_per_class"]) == 10 and np.isfinite(e["intra_fid"])
    if arch == "sr2x":  # on by default for a super-resolution spec
        assert {"psnr_gt", "ssim_gt", "bicubic_psnr_gt", "bicubic_fid"} <= set(e)
    else:
        assert "psnr_gt" not in e
    assert spec.family == e["family"]


def test_ground_truth_replays_the_inputs_draw(toy_data_root, tmp_path_factory):
    """The targets are the very images the inputs were made from: downsizing the targets gives the inputs."""
    from ganq.data.resize import resize_images
    from ganq.runtime.generator import to_float

    _, path = trained("sr2x", toy_data_root, tmp_path_factory)
    spec = read_spec(load_model(path))
    feed = sample_inputs(spec, 12, seed=3, data_root=toy_data_root)
    target, small = ground_truth(spec, 12, seed=3, data_root=toy_data_root)
    assert target.shape == (12, 28, 28, 1) and small.shape == (12, 14, 14, 1)
    assert np.allclose(feed["image_lr"], to_float(small), atol=1e-6)
    assert np.array_equal(resize_images(target, 14, 14, 1), small)  # the toy digits are 28x28: the target is exact


def test_conditional_training_is_deterministic_and_resumes(toy_data_root, tmp_path):
    def weights(run):
        return torch.load(run / "checkpoint.pt", weights_only=True)["generator"]

    cfg = dict(dataset="mnist", arch="cgan", batch_size=64, latent_dim=8, seed=2, limit=192)
    train(TrainConfig(epochs=2, **cfg), tmp_path / "a", data_root=toy_data_root)
    train(TrainConfig(epochs=1, **cfg), tmp_path / "b", data_root=toy_data_root)
    train(TrainConfig(epochs=2, **cfg), tmp_path / "b", data_root=toy_data_root, resume=True)
    a, b = weights(tmp_path / "a"), weights(tmp_path / "b")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_r1_penalty_closed_form():
    """D(x) = <w, x>: grad_x D = w for every image, so R1 = 0.5 ||w||^2."""
    w = torch.randn(1, 3, 4, 4)

    class Linear(torch.nn.Module):
        def forward(self, x):
            return (x * w).flatten(1).sum(1)

    got = families.r1_penalty(Linear(), torch.randn(5, 3, 4, 4), None)
    assert torch.allclose(got, 0.5 * w.pow(2).sum(), rtol=1e-5)


def test_unfused_modulated_convolution_equals_the_fused_form():
    """StyleGAN2's official fused form: the weight modulated per sample and demodulated, one grouped conv."""
    torch.manual_seed(0)
    conv = families.ModConv(6, 5, 3, w_dim=4)
    x, w = torch.randn(3, 6, 8, 8), torch.randn(3, 4)
    s = conv.affine(w)
    wt = conv.scale * conv.weight[None] * s[:, None, :, None, None]           # [N, O, I, k, k]
    wt = wt * torch.rsqrt(wt.pow(2).sum([2, 3, 4], keepdim=True) + 1e-8)
    fused = torch.nn.functional.conv2d(x.reshape(1, 18, 8, 8), wt.reshape(15, 6, 3, 3), padding=1, groups=3)
    fused = fused.reshape(3, 5, 8, 8) + conv.bias[None, :, None, None]
    assert torch.allclose(conv(x, w), fused, atol=1e-5)


def test_style_resolutions_and_noise_inputs():
    spec = GeneratorSpec(latent_dim=8, channels=1, height=32, width=32, arch="style")
    assert families.style_resolutions(spec) == [4, 8, 8, 16, 16, 32, 32]
    g, d = build(spec)
    noise = families.FAMILIES["style"].noise(spec, 2, torch.Generator().manual_seed(0), 0)
    assert g(*noise).shape == (2, 1, 32, 32) and d(g(*noise)).shape == (2, 1)


def test_sweep_reports_each_familys_metrics(toy_data_root, tmp_path_factory, tiny_classifier, tmp_path):
    from ganq.evaluate import EvalOptions
    from ganq.study import Execution, SweepSettings, sweep

    paths = [str(trained(a, toy_data_root, tmp_path_factory)[1]) for a in ("cgan", "sr2x")]
    s = SweepSettings(bits=(32, 4), n=100, speed=False, eval=EvalOptions(n=100, kid_subset_size=50))
    r = sweep(paths, s, tmp_path / "o", dataset="mnist", features=str(tiny_classifier[0]), data_root=toy_data_root,
              execution=Execution(1, None))
    cgan = [x for x in r["rows"] if x["model"] == "cgan"]
    sr = [x for x in r["rows"] if x["model"] == "sr2x"]
    assert cgan and sr
    assert all(np.isfinite(x["intra_fid"]) and x.get("psnr_gt") is None for x in cgan)
    assert all(0 < x["psnr_gt"] <= 100 and 0 < x["ssim_gt"] <= 1 and x.get("intra_fid") is None for x in sr)


def test_auxiliary_classifier_term(toy_data_root, tmp_path):
    """cgan --aux: the discriminator gains a classifier head (AC-GAN) and the run still exports a plain generator;
    the term belongs to cgan alone."""
    from ganq.errors import GanqError
    from ganq.export import export

    cfg = TrainConfig(dataset="mnist", arch="cgan", epochs=1, batch_size=64, latent_dim=8, seed=2, limit=128, aux=1.0)
    train(cfg, tmp_path / "run", data_root=toy_data_root)
    state = torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=True)
    assert state["discriminator"]["aux.weight"].shape == (10, 128 * 7 * 7)
    assert export(tmp_path / "run", tmp_path / "g.onnx", n=16)["max_abs_diff"] <= 1e-5
    with pytest.raises(GanqError, match=r"--aux is a term of the conditional architectures \(cgan, cgan-bn\)"):
        TrainConfig(dataset="mnist", arch="cnn3", aux=1.0)


def test_conditional_batchnorm_is_the_labels_affine_map_of_a_plain_batchnorm():
    """cgan-bn's normalisation: the identity map of BatchNorm(affine=False) at initialisation, and with the tables
    set, bn(x) * (1 + gamma[y]) + beta[y] channel by channel, so two labels give two different images of one z."""
    torch.manual_seed(0)
    cbn = families.ConditionalBatchNorm(3, 4, 2).eval()
    cbn.bn.running_mean.copy_(torch.tensor([0.5, -1.0, 2.0]))
    cbn.bn.running_var.copy_(torch.tensor([4.0, 1.0, 0.25]))
    x, y = torch.randn(5, 3, 2, 2), torch.tensor([0, 1, 2, 3, 1])
    plain = (x - cbn.bn.running_mean.view(1, 3, 1, 1)) / torch.sqrt(cbn.bn.running_var.view(1, 3, 1, 1) + 1e-5)
    cbn.init_identity()
    assert torch.allclose(cbn(x, y), plain, atol=1e-6)
    with torch.no_grad():
        cbn.gamma.weight.copy_(torch.arange(12.0).view(4, 3) / 10)
        cbn.beta.weight.copy_(-torch.arange(12.0).view(4, 3))
    want = plain * (1 + cbn.gamma.weight[y].view(5, 3, 1, 1)) + cbn.beta.weight[y].view(5, 3, 1, 1)
    assert torch.allclose(cbn(x, y), want, atol=1e-6)
    spec = GeneratorSpec(latent_dim=8, channels=1, height=28, width=28, arch="cgan-bn")
    spec = replace(spec, inputs=families.FAMILIES["conditional"].inputs(spec, 10))
    g, _ = build(spec)
    assert all(bn.gamma.weight.abs().max() == 0 for bn in (g.bn0, g.bn1, g.bn2))  # starts as the identity
