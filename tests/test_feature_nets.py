"""Pretrained feature networks: ganq's ONNX conversion against torch-fidelity's own extractors, on random weights
of the same architectures (nothing is downloaded)."""

import numpy as np
import pytest

torch = pytest.importorskip("torch")
import torch_fidelity  # noqa: E402,F401  (a dev dependency beside torch: missing, these tests fail)

from ganq.errors import GanqError  # noqa: E402
from ganq.evaluate.features import FeatureNet  # noqa: E402
from ganq.export.features import convert, random_state, torch_fidelity_extractor  # noqa: E402


@pytest.mark.parametrize("kind,shape,names", [("inception", (1, 28, 28), ["logits_unbiased", "2048"]),
                                              ("vgg16-tv", (3, 32, 32), ["fc2"])])
def test_conversion_matches_torch_fidelity(kind, shape, names, tmp_path):
    torch.set_num_threads(2)
    state = random_state(kind)
    torch.save(state, tmp_path / "w.pth")
    info = convert(kind, tmp_path / "w.pth", tmp_path / "f.onnx", shape, check=False)
    c, h, w = shape
    images = np.random.default_rng(1).integers(0, 256, (3, h, w, c)).astype(np.uint8)
    net = FeatureNet(tmp_path / "f.onnx")
    logits, feats = net(images)
    reference = torch_fidelity_extractor(kind, state, names)
    x = torch.from_numpy(images).permute(0, 3, 1, 2).repeat(1, 3 // c, 1, 1).contiguous()
    with torch.no_grad():
        want = [t.numpy() for t in reference(x)]
    assert feats.shape == (3, info["feature_dim"])
    assert np.abs(feats - want[-1]).max() <= 1e-4 * np.abs(want[-1]).max()
    assert np.abs(feats).max() > 1e-2  # the random network's activations did not vanish
    if kind == "inception":
        assert logits.shape == (3, 1008)
        assert np.abs(logits - want[0]).max() <= 1e-4 * np.abs(want[0]).max()
    else:
        assert logits is None


def test_weights_checks(tmp_path):
    with pytest.raises(GanqError, match="download pt_inception-2015-12-05-6726825d.pth"):
        convert("inception", tmp_path / "missing.pth", tmp_path / "o.onnx", (1, 28, 28))
    torch.save({"w": torch.zeros(2)}, tmp_path / "other.pth")
    with pytest.raises(GanqError, match="is not the inception weights file"):
        convert("inception", tmp_path / "other.pth", tmp_path / "o.onnx", (1, 28, 28))

    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))
    torch.save({"w": Evil()}, tmp_path / "evil.pth")
    with pytest.raises(GanqError, match="not a state dict"):
        convert("inception", tmp_path / "evil.pth", tmp_path / "o.onnx", (1, 28, 28), check=False)
    with pytest.raises(GanqError, match="do not fit"):
        convert("vgg16-tv", tmp_path / "other.pth", tmp_path / "o.onnx", (3, 32, 32), check=False)
    assert not (tmp_path / "o.onnx").exists()


def _nvidia_like_vgg16(path):
    """A TorchScript archive with the calling convention and layer names of NVIDIA's vgg16.pt (StyleGAN2-ADA's
    metrics call it as net(uint8 images, return_features=True)), random weights, saved with torch.jit.save. It
    stands in for NVIDIA's file, which cannot be downloaded here; its preprocessing is its own code, as NVIDIA's is."""
    from torch import nn
    import torch.nn.functional as F

    class ConvReLU(nn.Module):
        def __init__(self, cin, cout):
            super().__init__()
            self.conv = nn.Conv2d(cin, cout, 3, padding=1)

        def forward(self, x):
            return F.relu(self.conv(x))

    class Layers(nn.Module):
        def __init__(self):
            super().__init__()
            widths = [(3, 64), (64, 64), (64, 128), (128, 128), (128, 256), (256, 256), (256, 256),
                      (256, 512), (512, 512), (512, 512), (512, 512), (512, 512), (512, 512)]
            for i, (a, b) in enumerate(widths, 1):
                setattr(self, f"conv{i}", ConvReLU(a, b))
            self.fc1, self.fc2, self.fc3 = nn.Linear(512 * 7 * 7, 4096), nn.Linear(4096, 4096), nn.Linear(4096, 1000)

        def forward(self, x, return_features: bool):
            x = self.conv2(self.conv1(x))
            x = F.max_pool2d(x, 2)
            x = self.conv4(self.conv3(x))
            x = F.max_pool2d(x, 2)
            x = self.conv7(self.conv6(self.conv5(x)))
            x = F.max_pool2d(x, 2)
            x = self.conv10(self.conv9(self.conv8(x)))
            x = F.max_pool2d(x, 2)
            x = self.conv13(self.conv12(self.conv11(x)))
            x = F.max_pool2d(x, 2)
            x = F.relu(self.fc1(x.flatten(1)))
            x = F.relu(self.fc2(x))
            if return_features:
                return x
            return F.softmax(self.fc3(x), dim=1)

    class VGG16(nn.Module):
        def __init__(self):
            super().__init__()
            self.layers = Layers()
            self.register_buffer("mean", torch.tensor([123.68, 116.779, 103.939]).view(1, 3, 1, 1))

        def forward(self, img, resize_images: bool = True, return_lpips: bool = False,
                    return_features: bool = False):
            x = img.to(torch.float32)
            if resize_images:  # TF1-style bilinear resize by affine_grid + grid_sample, the demanding case for export
                theta = torch.eye(2, 3, dtype=x.dtype, device=x.device)
                theta[0, 2] += theta[0, 0] / x.shape[3] - theta[0, 0] / 224
                theta[1, 2] += theta[1, 1] / x.shape[2] - theta[1, 1] / 224
                grid = F.affine_grid(theta.unsqueeze(0).repeat(x.shape[0], 1, 1), [x.shape[0], x.shape[1], 224, 224],
                                     align_corners=False)
                x = F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)
            x = x - self.mean
            return self.layers(x, return_features)

    torch.manual_seed(0)
    net = VGG16().eval()
    for m in net.modules():  # He initialisation scaled so that activations neither vanish nor explode
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            nn.init.kaiming_normal_(m.weight, nonlinearity="relu")
            nn.init.zeros_(m.bias)
    net.layers.conv1.conv.weight.data /= 128.0
    torch.jit.save(torch.jit.script(net), str(path))
    return torch.jit.load(str(path)).eval()


@pytest.mark.parametrize("shape", [(1, 28, 28)])  # grey: the path with the most to get wrong (3 channels made)
def test_nvidia_vgg16_conversion_matches_the_torchscript_file(shape, tmp_path):
    torch.set_num_threads(2)
    reference = _nvidia_like_vgg16(tmp_path / "vgg16.pt")
    with pytest.raises(GanqError, match="is not the vgg16 weights file"):  # not NVIDIA's sha256: refused unread
        convert("vgg16", tmp_path / "vgg16.pt", tmp_path / "f.onnx", shape)
    info = convert("vgg16", tmp_path / "vgg16.pt", tmp_path / "f.onnx", shape, check=False)
    c, h, w = shape
    images = np.random.default_rng(2).integers(0, 256, (3, h, w, c)).astype(np.uint8)
    logits, feats = FeatureNet(tmp_path / "f.onnx")(images)
    x = torch.from_numpy(images).permute(0, 3, 1, 2).repeat(1, 3 // c, 1, 1).contiguous()  # StyleGAN2-ADA's grey
    with torch.no_grad():
        want = reference(x, return_features=True).numpy()
    assert logits is None and feats.shape == (3, 4096) == (3, info["feature_dim"])
    assert np.abs(feats).max() > 1e-2
    assert np.abs(feats - want).max() <= 1e-4 * np.abs(want).max()
    assert "NVIDIA" in info["reference"]


def test_nvidia_vgg16_refuses_what_is_not_its_interface(tmp_path):
    torch.jit.save(torch.jit.script(torch.nn.Linear(2, 2)), str(tmp_path / "lin.pt"))
    with pytest.raises(GanqError, match="no forward\\(images, return_features=True\\)"):
        convert("vgg16", tmp_path / "lin.pt", tmp_path / "o.onnx", (3, 32, 32), check=False)
    torch.save({"w": torch.zeros(2)}, tmp_path / "sd.pth")
    with pytest.raises(GanqError, match="not a TorchScript archive"):
        convert("vgg16", tmp_path / "sd.pth", tmp_path / "o.onnx", (3, 32, 32), check=False)
    assert not (tmp_path / "o.onnx").exists()


def test_a_torchscript_forward_onnx_cannot_express_is_one_line(tmp_path):
    class Odd(torch.nn.Module):  # torch.linalg.eigvals has no ONNX export
        def forward(self, img, return_features: bool = False):
            x = img.to(torch.float32).flatten(1)[:, :4].reshape(-1, 2, 2)
            return torch.linalg.eigvals(x).real.flatten(1)

    torch.jit.save(torch.jit.script(Odd()), str(tmp_path / "odd.pt"))
    with pytest.raises(GanqError, match="does not export to ONNX opset 21"):
        convert("vgg16", tmp_path / "odd.pt", tmp_path / "o.onnx", (3, 32, 32), check=False)
    assert not (tmp_path / "o.onnx").exists()
