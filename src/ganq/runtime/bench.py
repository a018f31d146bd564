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

# keep: the weights decoded on every call (onnx_io.DECODE["per-call"]); fold: decoded once, when the session is made
# (DECODE["once"], what ganq's runtime does by default)
from ganq.onnx_io import DECODE  # noqa: E402

QDQ_MODES = {"keep": DECODE["per-call"], "fold": DECODE["once"]}


@dataclass(frozen=True)
class BenchJob:
    """One timing: a model at one batch and thread count. engine: onnxruntime, or another engine's name with
    `entry` = "module:function", a loader handed in by the caller (the CLI hands in the torch engine, so that
    this deploy-side module never imports torch): loader(model, batch, threads) -> (run once, bytes)."""
    model: str
    batch: int
    threads: int
    warmup: int = 10
    repeat: int = 50
    provider: str = "cpu"
    qdq: str = "keep"
    engine: str = "onnxruntime"   # or e.g. "torch" (model is then a run folder / checkpoint)
    entry: str = ""

    def __post_init__(self):
        import os

        from ganq.errors import check_range

        check_range("--batch", self.batch, 1, 65_536)
        check_range("--threads", self.threads, 1, 4 * (os.cpu_count() or 1))
        check_range("--warmup", self.warmup, 0, 100_000)
        check_range("--repeat", self.repeat, 1, 100_000)
        if self.qdq not in QDQ_MODES:
            raise GanqError(f"--qdq must be keep, fold or both, got {self.qdq!r}")
        if self.engine != "onnxruntime" and ":" not in self.entry:
            raise GanqError(f"engine {self.engine} needs its loader as module:function")


@dataclass(frozen=True)
class BenchSettings:
    """`ganq bench`'s options, validated once: the grid of jobs they make."""
    models: tuple[str, ...]
    batches: tuple[int, ...] = (1, 64)
    threads: tuple[int, ...] = (1, 2)
    warmup: int = 10
    repeat: int = 50
    provider: str = "cpu"
    qdq: str = "both"             # keep, fold or both
    extra_engine: tuple = ()      # (name, module:function, model) of an engine handed in by the caller

    def __post_init__(self):
        from ganq.onnx_io import PROVIDERS, resolve_model

        if self.provider not in PROVIDERS:
            raise GanqError(f"unknown provider {self.provider!r}; choose one of {', '.join(PROVIDERS)}")
        from ganq.onnx_io import check_provider
        check_provider(self.provider)
        if self.qdq != "both" and self.qdq not in QDQ_MODES:
            raise GanqError(f"--qdq must be keep, fold or both, got {self.qdq!r}")
        if self.warmup < 0 or self.repeat < 1:
            raise GanqError("--warmup must be >= 0 and --repeat >= 1")
        paths = tuple(str(resolve_model(m)) for m in self.models)
        for p in paths:
            if not Path(p).is_file():
                raise GanqError(f"{p}: no such file")
        object.__setattr__(self, "models", paths)
        self.jobs()  # every job's ranges, before any work

    def jobs(self) -> list[BenchJob]:
        jobs = [BenchJob(p, b, t, self.warmup, self.repeat, self.provider, m) for p in self.models
                for m in self.modes(p) for t in self.threads for b in self.batches]
        if self.extra_engine:
            name, entry, model = self.extra_engine
            jobs += [BenchJob(str(model), b, t, self.warmup, self.repeat, "cpu", "keep", name, entry)
                     for t in self.threads for b in self.batches]
        return jobs


    def modes(self, path: str) -> list[str]:
        """The decode modes to time for one file: with `both`, a file without DequantizeLinear or MatMulNBits (fp32,
        packed: its decoder is constant-folded either way) is timed once."""
        if self.qdq != "both":
            return [self.qdq]
        return list(QDQ_MODES) if decodes_per_call(path) else ["fold"]


def decodes_per_call(path: str) -> bool:
    """Whether a file's weights can be decoded per call (DequantizeLinear or MatMulNBits nodes): the files that have
    two decode modes to time."""
    from ganq.onnx_io import load_model

    graph = load_model(path, external_data=False).graph
    return any(n.op_type in ("DequantizeLinear", "MatMulNBits") for n in graph.node)


def busy(m: dict) -> bool:
    """Whether the machine's load makes timings slower and noisier than they should be."""
    return m["load1"] > 0.5 * (m["cpus"] or 1)


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


def _onnxruntime(job: BenchJob):
    from ganq.onnx_io import probe_inputs, run_batched, session
    from ganq.runtime import Generator

    gen = Generator(job.model, job.provider, job.threads)  # validates the file and its spec
    t0 = time.perf_counter()
    sess = session(gen.session_source("once" if job.qdq == "fold" else "per-call"), job.provider, job.threads,
                   config=QDQ_MODES[job.qdq])
    load_s = time.perf_counter() - t0
    feed = probe_inputs(gen.spec, job.batch)  # timing does not depend on the images fed: no data set needed
    return ((lambda: list(run_batched(sess, None, gen.spec, feed, job.batch, gen.fixed))),
            Path(gen.path).stat().st_size, load_s)


def _handed_in(job: BenchJob):
    import importlib

    module, _, name = job.entry.partition(":")
    loader = getattr(importlib.import_module(module), name)
    t0 = time.perf_counter()
    fn, size = loader(job.model, job.batch, job.threads)
    return fn, size, time.perf_counter() - t0


def run_job(job: BenchJob) -> dict:
    """Run one job in this process (the worker side)."""
    rss0 = _peak_rss_mb()
    fn, size, load_s = (_onnxruntime if job.engine == "onnxruntime" else _handed_in)(job)
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
