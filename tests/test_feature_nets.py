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
                                              ("vgg16", (3, 32, 32), ["fc2"])])
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
        convert("vgg16", tmp_path / "other.pth", tmp_path / "o.onnx", (3, 32, 32), check=False)
    assert not (tmp_path / "o.onnx").exists()
