"""A conditional generator's sample sheet: one row per class (label 0 at the top), ten seeded draws each, 2x
nearest upscaling; what zoo/samples/ shows for the conditional zoo entries.

    .venv/bin/python benchmarks/class_grid.py zoo:fashion-mnist-cgan --out zoo/samples/fashion-mnist-cgan.png
"""

from __future__ import annotations

import argparse

import numpy as np
from PIL import Image

from ganq.runtime import Generator


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("model")
    ap.add_argument("--out", required=True)
    ap.add_argument("--per-class", type=int, default=10)
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()
    g = Generator(a.model)
    (label,) = g.spec.inputs_of("label")
    k = a.per_class
    labels = np.repeat(np.arange(label.classes), k)
    imgs = g.generate(len(labels), seed=a.seed, labels=labels)   # uint8 [N, H, W, C]
    n, h, w, c = imgs.shape
    sheet = imgs.reshape(label.classes, k, h, w, c).transpose(0, 2, 1, 3, 4).reshape(label.classes * h, k * w, c)
    im = Image.fromarray(sheet[..., 0] if c == 1 else sheet)
    im.resize((im.width * 2, im.height * 2), Image.NEAREST).save(a.out)
    print(f"wrote {a.out}: {label.classes} classes x {k} samples")


if __name__ == "__main__":
    main()
