"""The PyTorch engine of `ganq bench --vs-torch`: a run folder's generator timed like an ONNX one. The CLI hands
it to the deploy-side bench as "ganq.train.engine:bench_loader", so that the bench never imports torch."""

from __future__ import annotations

import numpy as np


def bench_loader(model: str, batch: int, threads: int):
    """(run once, parameter bytes) for the generator of a run folder or checkpoint."""
    import torch

    from ganq.train.checkpoint import load_generator

    torch.set_num_threads(threads)
    g, spec, _ = load_generator(model)
    z = torch.from_numpy(np.random.default_rng(0).standard_normal((batch, spec.latent_dim)).astype(np.float32))

    def fn():
        with torch.inference_mode():
            g(z)
    return fn, sum(p.numel() * 4 for p in g.parameters())
