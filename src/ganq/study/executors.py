"""Where the sweep's jobs run: in this process, in local worker processes, or on a Dask cluster; the real features
are computed once, here, before any job."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

from ganq._io import write_text_atomic
from ganq.errors import GanqError
from ganq.evaluate import FeatureCache, real_images
from ganq.study.jobs import Context, Job, plan_jobs, run_job
from ganq.study.settings import GRID, ModelRef, SweepSettings
from ganq.quantize import FLOAT_BITS

@dataclass(frozen=True)
class Execution:
    """Where the jobs run: here (workers 1), in N local processes, or on a Dask cluster (scheduler address)."""
    workers: int = 1
    scheduler: str | None = None

    def __post_init__(self):
        from ganq.errors import check_range

        check_range("--workers", self.workers, 1, 256)
        if self.workers > 1 and self.scheduler:
            raise GanqError("give --workers or --scheduler, not both")
        if self.scheduler is not None and not re.match(r"^(tcp|tls|ws|wss|inproc)://\S+$", self.scheduler):
            raise GanqError(f"--scheduler must be an address like tcp://HOST:8786, got {self.scheduler!r}")


CONNECT_TIMEOUT = 15.0  # seconds for the whole handshake with a Dask scheduler


def connect(scheduler: str):
    """A Dask client for tcp://HOST:PORT, or one line saying why not."""
    try:
        from distributed import Client
    except ImportError:
        raise GanqError("--scheduler needs Dask's distributed: pip install 'ganq[cluster]'") from None
    import threading

    box: dict = {}

    def start():  # in a thread of its own: a listener that accepts and never answers cannot hold the sweep
        try:
            box["client"] = Client(scheduler, timeout="10s", set_as_default=False)
        except BaseException as e:  # handed to the caller below
            box["error"] = e
    t = threading.Thread(target=start, daemon=True)
    t.start()
    t.join(CONNECT_TIMEOUT)
    if t.is_alive():
        raise GanqError(f"the Dask scheduler at {scheduler} accepts connections but does not answer within "
                        f"{CONNECT_TIMEOUT:.0f} s; is it a Dask scheduler?")
    try:
        if "error" in box:
            raise box["error"]
        return box["client"]
    except (OSError, TimeoutError, ValueError) as e:
        raise GanqError(f"cannot reach the Dask scheduler at {scheduler} ({type(e).__name__}: "
                        f"{str(e).splitlines()[0][:120] if str(e) else 'no answer'}); start one with "
                        "'dask scheduler' and workers with 'dask worker'") from None


def run_sweep(refs: list[ModelRef], settings: SweepSettings, out: str | Path, features: str | None = None,
              data_root=None, progress=None, execution: Execution = Execution()) -> dict:
    """Every row, computed or read from out/cache; writes nothing but the cache and models/. execution: local
    processes, or a Dask scheduler's address (jobs then run on its workers, which must see `out`, the models and,
    for mixed rows, the data). progress(done, total, label)."""
    workers, scheduler = execution.workers, execution.scheduler
    out = Path(out).resolve()
    if out.exists() and not out.is_dir():
        raise GanqError(f"{out}: exists and is not a folder")
    from ganq._io import check_writable_place
    check_writable_place(out)
    marker = out / "sweep.json"
    fresh = not out.exists() or not any(out.iterdir())
    if not fresh and not is_sweep(out):
        raise GanqError(f"{out}: folder exists and holds no ganq sweep; choose another --out")
    jobs, nets = plan_jobs(refs, settings, features)
    client = connect(scheduler) if scheduler else None  # before anything is written: an unreachable one costs nothing
    try:
        return _run(jobs, nets, refs, settings, out, data_root, progress, fresh, marker, workers, client)
    except BaseException:
        # a failed or interrupted first attempt that cached nothing leaves nothing behind
        if fresh and out.is_dir() and not any((out / "cache").glob("*.npz")):
            import shutil
            shutil.rmtree(out, ignore_errors=True)
        raise
    finally:
        if client is not None:
            client.close()


def is_sweep(out: Path) -> bool:
    try:
        return json.loads((out / "sweep.json").read_text()).get("ganq") == "sweep"
    except (OSError, ValueError, AttributeError):
        return False


def _label(job: Job) -> str:
    if job.bits == FLOAT_BITS:
        return f"{job.model.name} fp32"
    return f"{job.model.name} {job.method} {'mixed' if job.bits is None else f'{job.bits}-bit'}"


def _run(jobs, nets, refs, settings, out, data_root, progress, fresh, marker, workers, client) -> dict:
    out.mkdir(parents=True, exist_ok=True)
    if fresh or not marker.exists():
        # the marker comes first, so that an interrupted first sweep is resumed, not refused
        write_text_atomic(marker, json.dumps({"ganq": "sweep", "state": "running"}) + "\n")
    (out / "cache").mkdir(parents=True, exist_ok=True)
    (out / "models").mkdir(exist_ok=True)
    tick = progress or (lambda done, total, label: None)
    # real features first, here, once per (data set, seed): workers then read them from the cache
    fc = FeatureCache(out / "cache" / "features")
    for net_ref, ds in dict.fromkeys((j.net, j.model.dataset) for j in jobs):
        for r in range(settings.repeats):
            tick(0, len(jobs), f"real features {ds} seed {settings.seed + r}")
            fc.real(nets[net_ref], ds, settings.eval.real_split, settings.n, settings.seed + r, data_root)
    data_root = str(data_root) if data_root is not None else None
    results = []
    if client is not None:
        ctx = Context(settings, str(out), data_root, "worker")
        futures = client.map(run_job, jobs, ctx=ctx, pure=False)
        from distributed import as_completed
        done = {}
        for i, fut in enumerate(as_completed(futures, loop=client.loop), 1):
            res = fut.result()
            done[res["job"]] = res
            tick(i, len(jobs), _label(res["job"]))
        results = [done[j] for j in jobs]
    elif workers > 1:
        import multiprocessing as mp
        import os
        from concurrent.futures import ProcessPoolExecutor, as_completed as done_futures

        ctx = Context(settings, str(out), data_root, max(1, (os.cpu_count() or 1) // workers))
        pool = ProcessPoolExecutor(workers, mp_context=mp.get_context("spawn"))
        try:
            futs = {pool.submit(run_job, j, ctx): j for j in jobs}
            done = {}
            for i, fut in enumerate(done_futures(futs), 1):
                done[futs[fut]] = fut.result()
                tick(i, len(jobs), _label(futs[fut]))
        except BaseException:  # Ctrl-C, SIGTERM or a failed job: the workers stop now, not after their cells
            for p in list((getattr(pool, "_processes", None) or {}).values()):
                p.terminate()
            pool.shutdown(wait=False, cancel_futures=True)
            raise
        pool.shutdown()
        results = [done[j] for j in jobs]
    else:
        ctx = Context(settings, str(out), data_root, None)
        for i, job in enumerate(jobs):
            tick(i, len(jobs), _label(job))
            results.append(run_job(job, ctx))
        tick(len(jobs), len(jobs), "done")
    rows, samples, reals, failed = [], {}, {}, []
    for res in results:
        if res["row"] is None:
            from ganq.errors import warn
            warn(f"{res['job'].model.name} mixed {res['job'].method}: {res['error']}")
            failed.append({"model": res["job"].model.name, "method": res["job"].method, "error": res["error"]})
            continue
        rows.append(res["row"])
        samples[(res["row"]["model"], res["row"]["method"], res["row"]["bits"])] = res["grid"]
    for ref in refs:
        reals[ref.name] = real_images(ref.dataset, GRID, settings.eval.real_split, settings.seed + 1, data_root)
    return {"rows": rows, "samples": samples, "reals": reals, "failed": failed}


