"""The metrics' domain classifier: a small CNN trained on the data set being judged, exported to ONNX with two
outputs, `logits` (for the Inception Score) and `features` (the penultimate layer, for FID, precision/recall...)."""

from __future__ import annotations

import io
import json
import time
import warnings
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ganq import data as gdata
from ganq._io import atomic_path
from ganq.errors import GanqError
from ganq.onnx_io import META_FEATURES
from ganq.onnx_io import write_metadata
from ganq.train.loop import _to_tensor


class Classifier(nn.Module):
    """Three conv blocks (conv, BN, ReLU, 2x2 max-pool), then a `feature_dim` ReLU layer and the class logits."""

    def __init__(self, channels: int, classes: int, size: int, width: int = 32, feature_dim: int = 128):
        super().__init__()

        def block(cin, cout):
            return [nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(), nn.MaxPool2d(2)]
        w, s = width, size // 8
        self.body = nn.Sequential(*block(channels, w), *block(w, 2 * w), *block(2 * w, 4 * w), nn.Flatten(),
                                  nn.Linear(4 * w * s * s, feature_dim), nn.ReLU())
        self.head = nn.Sequential(nn.Dropout(0.3), nn.Linear(feature_dim, classes))

    def forward(self, x):
        f = self.body(x)
        return self.head(f), f


class ResClassifier(nn.Module):
    """The independent judge: another architecture than Classifier (a stem, three residual stages with stride-2
    downsampling, global average pooling), so that a loss computed on one network's features is judged on the
    other's. Same outputs: (logits, `feature_dim` ReLU features)."""

    def __init__(self, channels: int, classes: int, size: int, width: int = 32, feature_dim: int = 128):
        super().__init__()
        w = width
        self.stem = nn.Sequential(nn.Conv2d(channels, w, 3, padding=1, bias=False), nn.BatchNorm2d(w), nn.ReLU())
        self.stages = nn.Sequential(_ResBlock(w, w, 1), _ResBlock(w, 2 * w, 2), _ResBlock(2 * w, 4 * w, 2))
        self.body = nn.Sequential(nn.Flatten(), nn.Linear(4 * w, feature_dim), nn.ReLU())
        self.head = nn.Sequential(nn.Dropout(0.3), nn.Linear(feature_dim, classes))

    def forward(self, x):
        h = self.stages(self.stem(x)).mean((2, 3), keepdim=True)
        f = self.body(h)
        return self.head(f), f


class _ResBlock(nn.Module):
    def __init__(self, cin, cout, stride):
        super().__init__()
        self.c1 = nn.Sequential(nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU())
        self.c2 = nn.Sequential(nn.Conv2d(cout, cout, 3, 1, 1, bias=False), nn.BatchNorm2d(cout))
        self.skip = (nn.Identity() if stride == 1 and cin == cout else
                     nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout)))

    def forward(self, x):
        return F.relu(self.c2(self.c1(x)) + self.skip(x))


CLASSIFIERS = {"cnn": Classifier, "resnet": ResClassifier}


def _augment(x: torch.Tensor, flip: bool, gen: torch.Generator) -> torch.Tensor:
    # random shifts of up to 2 pixels (pad + crop) and, for natural images, horizontal flips
    n, _, h, w = x.shape
    padded = F.pad(x, (2, 2, 2, 2), value=-1.0)
    dy, dx = torch.randint(0, 5, (2,), generator=gen).tolist()
    x = padded[:, :, dy:dy + h, dx:dx + w]
    if flip:
        mask = torch.rand(n, generator=gen) < 0.5
        x = torch.where(mask[:, None, None, None], x.flip(3), x)
    return x


def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch: int = 1000) -> float:
    model.eval()
    correct = 0
    with torch.no_grad():
        for i in range(0, len(x), batch):
            correct += (model(x[i:i + batch])[0].argmax(1) == y[i:i + batch]).sum().item()
    return correct / len(x)


def train_classifier(dataset: str, out: str | Path, epochs: int = 5, batch_size: int = 128, lr: float = 2e-3,
                     seed: int = 0, limit: int | None = None, data_root=None, download: bool = False,
                     width: int = 32, progress=None, arch: str = "cnn") -> dict:
    """Train the classifier on the train split, measure test accuracy, export to ONNX at `out`. arch: cnn (the
    metrics' default feature network) or resnet (the independent judge of a loss that used the first)."""
    from ganq.errors import check_range

    check_range("--epochs", epochs, 1, 10_000)
    check_range("--batch-size", batch_size, 2, 65_536)
    check_range("--width", width, 1, 1024)
    if arch not in CLASSIFIERS:
        raise GanqError(f"--arch must be one of {', '.join(CLASSIFIERS)}, got {arch!r}")
    if not (isinstance(lr, (int, float)) and 0 < lr <= 1):
        raise GanqError(f"--lr must be in (0, 1], got {lr}")
    import onnx

    from ganq.train.download import fetch

    train_ds = gdata.load(dataset, "train", data_root=data_root, download=fetch if download else None, limit=limit)
    test_ds = gdata.load(dataset, "test", data_root=data_root, download=fetch if download else None)
    classes = train_ds.classes or [str(i) for i in range(int(train_ds.labels.max()) + 1)]
    c, h, w = train_ds.shape_chw
    torch.manual_seed(seed)
    model = CLASSIFIERS[arch](c, len(classes), h, width)
    x, y = _to_tensor(train_ds.images), torch.from_numpy(train_ds.labels)
    xt, yt = _to_tensor(test_ds.images), torch.from_numpy(test_ds.labels)
    flip = c == 3  # digits and clothes are not mirror-symmetric classes; natural images are
    steps = len(x) // batch_size
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=5e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=epochs * steps)
    gen = torch.Generator().manual_seed(seed)
    history = []
    t0 = time.perf_counter()
    for epoch in range(1, epochs + 1):
        model.train()
        perm = torch.randperm(len(x), generator=gen)
        total = 0.0
        for i in range(steps):
            idx = perm[i * batch_size:(i + 1) * batch_size]
            logits, _ = model(_augment(x[idx], flip, gen))
            loss = F.cross_entropy(logits, y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            total += loss.item()
            if progress:
                progress(epoch, i + 1, steps, loss.item())
        history.append({"epoch": epoch, "loss": total / steps, "test_accuracy": accuracy(model, xt, yt)})
    seconds = time.perf_counter() - t0
    model.eval()

    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (torch.zeros(2, c, h, w),), buf, input_names=["image"],
                          output_names=["logits", "features"], opset_version=21, dynamo=False,
                          dynamic_axes={"image": {0: "N"}, "logits": {0: "N"}, "features": {0: "N"}})
    proto = onnx.load_from_string(buf.getvalue())
    info = {"kind": "classifier", "dataset": dataset, "image_shape": [c, h, w], "input_range": [-1.0, 1.0],
            "feature_dim": model.head[1].in_features, "classes": classes,
            "test_accuracy": history[-1]["test_accuracy"], "epochs": epochs, "seed": seed,
            "train_images": int(len(x)), "train_seconds": round(seconds, 1), "width": width,
            "arch": arch}
    write_metadata(proto, META_FEATURES, json.dumps(info, sort_keys=True))
    proto.producer_name = "ganq"
    onnx.checker.check_model(proto, full_check=True)
    # the ONNX classifier must agree with the torch one before it judges anything
    from ganq.onnx_io import run
    probe = xt[:256]
    got = run(proto, {"image": probe.numpy()})
    with torch.no_grad():
        want = model(probe)
    diff = max(float(np.abs(got[0] - want[0].numpy()).max()), float(np.abs(got[1] - want[1].numpy()).max()))
    if diff > 1e-4:
        raise GanqError(f"classifier export differs from PyTorch by {diff:.3g}; nothing written")
    with atomic_path(out) as tmp:
        onnx.save(proto, str(tmp))
    return {**info, "out": str(out), "history": history, "parity_max_abs_diff": diff}
