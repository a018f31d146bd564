"""Training speed per architecture on this machine: images/s of the GAN step (D and G updates) at batch 64 on
random data, and the implied epoch time per data set. Prints a table, writes JSON.

    .venv/bin/python benchmarks/train_speed.py --steps 30
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from ganq.spec import GeneratorSpec
from ganq.train.archs import build

CASES = [("fc4", (1, 28, 28), "mnist", 60000), ("cnn5", (1, 28, 28), "mnist", 60000),
         ("cnn3", (1, 28, 28), "fashion-mnist", 60000), ("cnn3", (3, 32, 32), "cifar10", 50000),
         ("dcgan", (3, 32, 32), "cifar10", 50000)]


def step_rate(arch, shape, steps, batch):
    torch.manual_seed(0)
    spec = GeneratorSpec(latent_dim=100, channels=shape[0], height=shape[1], width=shape[2], arch=arch)
    g, d = build(spec)
    og, od = torch.optim.Adam(g.parameters(), 2e-4, betas=(0.5, 0.999)), torch.optim.Adam(d.parameters(), 2e-4)
    real = torch.rand(batch, *shape) * 2 - 1

    def one():
        fake = g(torch.randn(batch, 100))
        ld = F.binary_cross_entropy_with_logits(d(real).view(-1), torch.ones(batch)) + \
            F.binary_cross_entropy_with_logits(d(fake.detach()).view(-1), torch.zeros(batch))
        od.zero_grad()
        ld.backward()
        od.step()
        lg = F.binary_cross_entropy_with_logits(d(fake).view(-1), torch.ones(batch))
        og.zero_grad()
        lg.backward()
        og.step()
    for _ in range(3):
        one()
    t0 = time.perf_counter()
    for _ in range(steps):
        one()
    return steps * batch / (time.perf_counter() - t0)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--out", default="benchmarks/results/train_speed.json")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    rows = []
    print(f"{'arch':6} {'image':8} {'data set':14} {'img/s':>7} {'epoch':>8}   (threads {args.threads}, "
          f"load {os.getloadavg()[0]:.2f})")
    for arch, shape, ds, n in CASES:
        rate = step_rate(arch, shape, args.steps, args.batch)
        rows.append({"arch": arch, "shape": shape, "dataset": ds, "images_per_s": rate, "epoch_s": n / rate})
        print(f"{arch:6} {'x'.join(map(str, shape)):8} {ds:14} {rate:>7.0f} {n / rate / 60:>6.1f} min", flush=True)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"threads": args.threads, "load1": os.getloadavg()[0], "rows": rows}, indent=1))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
