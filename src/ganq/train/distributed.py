"""Training on many processes: torchrun + DistributedDataParallel (gloo on CPU, nccl on CUDA).

`ganq train --nproc N ...` re-launches itself under `torch.distributed.run` (torchrun); `torchrun --nproc_per_node N
-m ganq.cli train ...` works too. Under torchrun (WORLD_SIZE set) the loop takes its distributed path, the same for
every N, so runs with different N compute the same thing up to floating-point summation order:
- one global batch B, per-process batch B / N (refused if not divisible); each process reads its shard of the epoch's
  permutation through DistributedSampler (seed = the plain loop's shuffle seed), so the N shards of a step form the
  same B images a 1-process run sees;
- the step's B latents come from a generator seeded by (seed, epoch, step), identical on every process, and each
  process takes its slice;
- BatchNorm is synchronised: batch statistics are all-reduced (differentiably) over the B samples, as SyncBatchNorm
  does on GPUs (torch's SyncBatchNorm refuses CPU tensors);
- dropout masks come from each process's own stream, seeded by (seed, epoch, rank): deterministic for a fixed N, but
  N changes them, so a resumed run must keep its N (refused otherwise);
- rank 0 alone writes samples, checkpoints, losses.csv and run.json; the logged losses are averaged over processes.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass

import torch
import torch.nn.functional as F



@dataclass(frozen=True)
class Dist:
    rank: int
    world: int
    local_rank: int

    @property
    def main(self) -> bool:
        return self.rank == 0


from ganq.train.requests import per_process_batch, under_torchrun  # noqa: E402,F401  (torch-free, re-exported)


def setup(device: torch.device) -> tuple[Dist, torch.device]:
    import torch.distributed as dist

    world, rank = int(os.environ["WORLD_SIZE"]), int(os.environ["RANK"])
    local = int(os.environ.get("LOCAL_RANK", rank))
    if device.type == "cuda":
        torch.cuda.set_device(local)
        device = torch.device("cuda", local)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return Dist(rank, world, local), device


def teardown(*wrapped) -> None:
    """Drop the DDP wrappers before the process group (else gloo's threads may abort the exit), then leave it."""
    import gc

    import torch.distributed as dist

    del wrapped
    gc.collect()
    if dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def _global_bn_forward(self, x):
    """BatchNorm over the samples of every process (statistics all-reduced, gradients through them)."""
    from torch.distributed.nn.functional import all_reduce

    if not self.training:
        return F.batch_norm(x, self.running_mean, self.running_var, self.weight, self.bias, False, 0.0, self.eps)
    dims = [0] + list(range(2, x.dim()))
    n_local = x.numel() // x.shape[1]
    stats = torch.cat([x.sum(dims), (x * x).sum(dims), x.new_tensor([float(n_local)])])
    stats = all_reduce(stats)
    c = x.shape[1]
    n = stats[-1]
    mean = stats[:c] / n
    var = (stats[c:2 * c] / n - mean * mean).clamp_min(0)
    shape = [1, c] + [1] * (x.dim() - 2)
    y = (x - mean.view(shape)) * torch.rsqrt(var.view(shape) + self.eps)
    if self.affine:
        y = y * self.weight.view(shape) + self.bias.view(shape)
    with torch.no_grad():
        m = self.momentum
        self.running_mean.mul_(1 - m).add_(mean.detach(), alpha=m)
        self.running_var.mul_(1 - m).add_(var.detach() * (n / (n - 1)), alpha=m)
        self.num_batches_tracked += 1
    return y


def sync_batchnorm(module: torch.nn.Module) -> int:
    """Make every BatchNorm of module compute its training statistics over all processes; returns how many."""
    import types

    count = 0
    for m in module.modules():
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
            m.forward = types.MethodType(_global_bn_forward, m)
            count += 1
    return count


def launch(nproc: int, argv: list[str]) -> int:
    """Run `ganq train argv` under torchrun with nproc processes on this machine; returns its exit code."""
    import subprocess

    args, skip = [], False
    for a in argv:  # --nproc stays out: torchrun's own parser would take it for --nproc-per-node
        if skip:
            skip = False
        elif a == "--nproc":
            skip = True
        elif not a.startswith("--nproc="):
            args.append(a)
    argv = args
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
           "-m", "ganq.cli", "train", *argv]
    env = dict(os.environ)
    env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // nproc)))
    return subprocess.call(cmd, env=env)
