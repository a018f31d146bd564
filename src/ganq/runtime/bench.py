"""Device-style inference benchmark: each (model, batch, threads) in its own process, so that peak memory and
load time are per model; latency p50/p95 over timed runs after warm-up; images/s; the machine's load recorded."""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from ganq.errors import GanqError

# onnxruntime keeps DequantizeLinear nodes (QDQ format) unless session.disable_quant_qdq=1, which constant-folds
# them into float weights at load time.
QDQ_MODES = {"keep": {}, "fold": {"session.disable_quant_qdq": "1"}}


@dataclass(frozen=True)
class BenchJob:
    model: str
    batch: int
    threads: int
    warmup: int = 10
    repeat: int = 50
    provider: str = "cpu"
    qdq: str = "keep"
    engine: str = "onnxruntime"   # or "torch" (model is then a run folder / checkpoint)

    def __post_init__(self):
        import os

        from ganq.errors import check_range

        check_range("--batch", self.batch, 1, 65_536)
        check_range("--threads", self.threads, 1, 4 * (os.cpu_count() or 1))
        check_range("warmup", self.warmup, 0, 100_000)
        check_range("repeat", self.repeat, 1, 100_000)


def _peak_rss_mb() -> float:
    """This process's peak resident memory. VmHWM belongs to the process image (ru_maxrss survives exec and
    would report the parent's peak)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def _time_runs(fn, warmup: int, repeat: int) -> dict:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    ms = np.array(times) * 1e3
    return {"p50_ms": float(np.percentile(ms, 50)), "p95_ms": float(np.percentile(ms, 95)),
            "mean_ms": float(ms.mean())}


def run_job(job: BenchJob) -> dict:
    """Run one job in this process (the worker side)."""
    rss0 = _peak_rss_mb()
    if job.engine == "torch":
        import torch

        from ganq.train.checkpoint import load_generator
        torch.set_num_threads(job.threads)
        t0 = time.perf_counter()
        g, spec, _ = load_generator(job.model)
        load_s = time.perf_counter() - t0
        z = torch.from_numpy(np.random.default_rng(0).standard_normal((job.batch, spec.latent_dim)).astype(np.float32))

        def fn():
            with torch.inference_mode():
                g(z)
        size = sum(p.numel() * 4 for p in g.parameters())
    else:
        import onnxruntime as ort

        from ganq.runtime import Generator, session_options
        gen = Generator(job.model, job.provider, job.threads)  # validates the file and its spec
        so = session_options(job.threads)
        for k, v in QDQ_MODES[job.qdq].items():
            so.add_session_config_entry(k, v)
        t0 = time.perf_counter()
        sess = ort.InferenceSession(str(gen.path), so, providers=gen.session.get_providers())
        load_s = time.perf_counter() - t0
        z = gen.latents(job.batch, 0)
        feed = {gen.spec.input_name: z}

        def fn():
            sess.run(None, feed)
        size = Path(gen.path).stat().st_size
    timing = _time_runs(fn, job.warmup, job.repeat)
    return {**asdict(job), "load_ms": load_s * 1e3, **timing,
            "images_per_s": job.batch / (timing["mean_ms"] / 1e3), "peak_rss_mb": _peak_rss_mb(),
            "baseline_rss_mb": rss0, "file_bytes": size}


def run_isolated(job: BenchJob, timeout: float = 600) -> dict:
    """Run one job in a fresh Python process and return its result."""
    env = {**os.environ, "OMP_NUM_THREADS": str(job.threads)}
    p = subprocess.run([sys.executable, "-m", "ganq.runtime.bench", json.dumps(asdict(job))],
                       capture_output=True, text=True, timeout=timeout, env=env)
    if p.returncode != 0:
        lines = (p.stderr or p.stdout).strip().splitlines()
        raise GanqError(f"bench of {job.model} failed: {lines[-1] if lines else 'no output'}")
    return json.loads(p.stdout.strip().splitlines()[-1])


def machine() -> dict:
    load1, load5, _ = os.getloadavg()
    return {"cpus": os.cpu_count(), "load1": load1, "load5": load5}


def parse_ints(text: str, what: str) -> list[int]:
    try:
        values = [int(v) for v in str(text).split(",") if v.strip()]
    except ValueError:
        raise GanqError(f"{what} must be a comma-separated list of integers, got {text!r}") from None
    if not values or any(v < 1 for v in values):
        raise GanqError(f"{what} must be positive integers, got {text!r}")
    return values


if __name__ == "__main__":  # worker: one job as JSON in argv[1], one JSON line out
    try:
        print(json.dumps(run_job(BenchJob(**json.loads(sys.argv[1])))))
    except GanqError as e:
        print(str(e), file=sys.stderr)
        sys.exit(1)
