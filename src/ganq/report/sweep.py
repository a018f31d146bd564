"""Sweep bit widths over generators: quantize, generate from the same latents, score, time; cache each result."""

from __future__ import annotations

import csv
import re
import hashlib
import io
import json
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np

from ganq._io import write_bytes_atomic, write_text_atomic
from ganq.errors import GanqError
from ganq.evaluate import EvalOptions, FeatureCache, FeatureNet, real_images, resolve_features
from ganq.quantize import FLOAT_BITS, QuantizeOptions, quantize_file
from ganq.quantize.formats import FORMATS
from ganq.quantize.decoders import GRANULARITIES, MAX_BITS
from ganq.runtime import Generator, resolve_model

DEFAULT_BITS = (32, 8, 7, 6, 5, 4, 3)
GRID = 16  # samples per cell of fig-samples (4 x 4)


CALIBRATION_DEFAULTS = {"recalibrate_bn": False, "calibration": 1024, "calibration_seed": 0}
MIXED_CHOICES = (2, 3, 4, 5, 6, 8)
MAX_REPEATS = 20


def split_methods(text: str) -> tuple[str, ...]:
    """'minmax,mse,gptq[grid=mse;act_order=true]' -> ('minmax', 'mse', 'gptq[grid=mse;act_order=true]')."""
    out, depth, cur = [], 0, ""
    for ch in text:
        depth += {"[": 1, "]": -1}.get(ch, 0)
        if ch == "," and depth == 0:
            out.append(cur.strip())
            cur = ""
        else:
            cur += ch
    out.append(cur.strip())
    return tuple(m for m in out if m)


def parse_method_spec(spec: str) -> tuple[str, tuple]:
    """'gptq[grid=mse;act_order=true]' -> ('gptq', (('grid', 'mse'), ('act_order', 'true')))."""
    from ganq.quantize.methods import parse_method_opts

    name, sep, rest = spec.partition("[")
    if sep and not rest.endswith("]"):
        raise GanqError(f"--methods: {spec!r} must be NAME or NAME[KEY=VALUE;...]")
    items = [x for x in rest[:-1].split(";") if x.strip()] if sep else []
    return name.strip(), parse_method_opts(items)


@dataclass(frozen=True)
class SweepSettings:
    """The sweep's options, validated once. methods: method specs (NAME or NAME[KEY=VALUE;...]); when empty, the one
    method `method` with `method_opts`. repeats: evaluation seeds seed, seed+1, ... per row (latents and real
    subset). mixed: a quality target (fid=1.10, ...) for one mixed-precision row per model and method."""

    bits: tuple[int, ...] = DEFAULT_BITS
    format: str = "packed"
    granularity: str = "tensor"
    method: str = "minmax"
    method_opts: tuple = ()
    fold_bn: bool = False
    recalibrate_bn: bool = False
    calibration: int = 1024
    calibration_seed: int = 0
    n: int = 10000
    seed: int = 0
    speed: bool = True
    eval: EvalOptions = field(default_factory=EvalOptions)
    methods: tuple[str, ...] = ()
    repeats: int = 1
    mixed: str | None = None
    mixed_choices: tuple[int, ...] = MIXED_CHOICES
    proxy_n: int = 2000

    def __post_init__(self):
        if not self.bits:
            raise GanqError("--bits is empty")
        bad = [b for b in self.bits if b != FLOAT_BITS and not 1 <= b <= MAX_BITS]
        if bad:
            raise GanqError(f"--bits: {bad} out of range; use 1..{MAX_BITS}, or 32 for the float model")
        if len(set(self.bits)) != len(self.bits):
            raise GanqError(f"--bits lists a width twice: {','.join(map(str, self.bits))}")
        if self.format not in FORMATS:
            raise GanqError(f"unknown format {self.format!r}; choose one of {', '.join(FORMATS)}")
        if self.granularity not in GRANULARITIES:
            raise GanqError(f"granularity must be one of {', '.join(GRANULARITIES)}")
        from ganq.errors import check_range
        from ganq.quantize.methods import make_method

        check_range("--calibration", self.calibration, 1, 1_000_000)
        check_range("--calibration-seed", self.calibration_seed, 0, 2 ** 31 - 1)
        check_range("--repeats", self.repeats, 1, MAX_REPEATS)
        check_range("--seed", self.seed, 0, 2 ** 31 - 1 - MAX_REPEATS)
        if self.methods and (self.method != "minmax" or self.method_opts):
            raise GanqError("give --methods or --method/--method-opt, not both")
        if len(set(self.methods)) != len(self.methods):
            raise GanqError(f"--methods lists a method twice: {','.join(self.methods)}")
        for name, opts in self.method_list():
            m = make_method(name, dict(opts))
            if self.recalibrate_bn and m.name == "ocs":
                raise GanqError("--recalibrate-bn does not combine with method ocs (it changes the layers' input "
                                "shapes)")
            for b in self.bits:
                if b != FLOAT_BITS:
                    m.check_bits(b)
        if self.mixed is not None:
            from ganq.mixed import MixedOptions
            MixedOptions(target=self.mixed, bits_choices=self.mixed_choices, proxy_n=self.proxy_n, verify_n=self.n)

    def method_list(self) -> list[tuple[str, tuple]]:
        """[(name, options)] in order."""
        if not self.methods:
            return [(self.method, tuple(self.method_opts))]
        return [parse_method_spec(m) for m in self.methods]

    def labels(self) -> list[str]:
        return list(self.methods) or [self.method + (f"[{';'.join(f'{k}={v}' for k, v in self.method_opts)}]"
                                                     if self.method_opts else "")]

    def cell_key(self, method: str = "minmax", opts: tuple = (), repeat: int = 0, float_row: bool = False,
                 mixed: bool = False) -> str:
        """The cache key of one cell: the options that change its numbers, in the form sweeps have always used (the
        single-method key at repeat 0), so that caches of earlier sweeps stay valid. The float row is the same for
        every method."""
        d = {"format": self.format, "granularity": self.granularity, "method": "minmax" if float_row else method,
             "method_opts": () if float_row else tuple(opts), "fold_bn": self.fold_bn, "n": self.n,
             "seed": self.seed + repeat, "speed": self.speed,
             "eval": asdict(replace(self.eval, seed=self.eval.seed + repeat))}
        if not float_row:
            for name, default in CALIBRATION_DEFAULTS.items():  # keys of sweeps made before these options stay valid
                if getattr(self, name) != default:
                    d[name] = getattr(self, name)
        if mixed:
            d.update({"mixed": self.mixed, "mixed_choices": list(self.mixed_choices), "proxy_n": self.proxy_n})
        return hashlib.sha256(json.dumps(d, sort_keys=True, default=list).encode()).hexdigest()[:12]

    def key(self) -> str:
        name, opts = self.method_list()[0]
        return self.cell_key(name, opts)


def parse_bits(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(b) for b in text.split(",") if b.strip())
    except ValueError:
        raise GanqError(f"--bits must be comma-separated integers like 32,8,4,3, got {text!r}") from None


@dataclass(frozen=True)
class ModelRef:
    model: str
    dataset: str
    name: str
    arch: str = ""


def parse_models(models: list[str], dataset: str | None) -> list[ModelRef]:
    """MODEL, or MODEL@DATASET when models come from different data sets; --dataset applies to those without @."""
    refs = []
    for m in models:
        path_part, _, ds = m.partition("@")
        path = resolve_model(path_part)
        if not path.is_file():
            raise GanqError(f"{path}: no such file")
        spec = Generator(path).spec
        ds = ds or dataset or spec.dataset
        if not ds:
            raise GanqError(f"{m}: its spec names no data set; write {m}@DATASET or give --dataset")
        refs.append(ModelRef(str(path), ds, path.stem, spec.arch))
    names = [r.name for r in refs]
    if len(set(names)) != len(names):
        raise GanqError(f"two models share the name {max(names, key=names.count)!r}; rename one")
    return refs


def _json_default(o):
    if isinstance(o, (np.integer,)):
        return int(o)
    if isinstance(o, (np.floating,)):
        return float(o)
    raise TypeError(type(o))


def _speed(path: Path, threads: int | None = None, batch: int = 64) -> float:
    """onnxruntime images/s at batch 64 in this process (a few timed runs; `ganq bench` is the careful tool)."""
    from ganq.runtime.bench import BenchJob, run_job as bench_job
    import os
    return bench_job(BenchJob(str(path), batch, threads=threads or os.cpu_count() or 1, warmup=2,
                              repeat=5))["images_per_s"]


@dataclass(frozen=True)
class Job:
    """One row: a model at one width (or its mixed-precision plan) with one method, every repeat."""
    model: ModelRef
    method: str           # the label: 'fp32' for the float row, else the method spec
    name: str
    opts: tuple
    bits: int | None      # None: the mixed-precision row
    net: str              # the feature network (a path or zoo:NAME)
    prefix: str           # cache/<prefix>-<cell key>-<suffix>


@dataclass(frozen=True)
class Context:
    """What every job reads: the settings and paths every worker sees."""
    settings: SweepSettings
    out: str
    data_root: str | None
    threads: int | None = None   # onnxruntime threads per job (None: its default; 'worker': the Dask worker's)


def _job_threads(ctx: Context):
    if ctx.threads != "worker":
        return ctx.threads
    try:
        from distributed import get_worker

        w = get_worker()
        return int(getattr(w, "nthreads", None) or w.state.nthreads)
    except Exception:  # not on a Dask worker, or an API without nthreads: onnxruntime's default
        return None


def _cache_path(job: Job, ctx: Context, repeat: int) -> Path:
    s = ctx.settings
    key = s.cell_key(job.name, job.opts, repeat, float_row=job.bits == FLOAT_BITS, mixed=job.bits is None)
    return Path(ctx.out) / "cache" / f"{job.prefix.replace('{key}', key)}-{'mixed' if job.bits is None else job.bits}.npz"


def _file_tag(job: Job) -> str:
    if job.bits == FLOAT_BITS or (job.name == "minmax" and not job.opts):
        return ""
    opts = "-" + hashlib.sha256(json.dumps(job.opts).encode()).hexdigest()[:6] if job.opts else ""
    return f"-{job.name}{opts}"


def _mixed_file(job: Job, ctx: Context) -> tuple[Path, dict | None]:
    """The mixed-precision file of a job and its report: made once (cached as JSON beside the rows), then reused."""
    from ganq.mixed import MixedOptions, OutOfReach, mixed_quantize

    s = ctx.settings
    out = Path(ctx.out)
    tag = f"{_file_tag(job)}{'-bn' if s.recalibrate_bn else ''}"
    qpath = out / "models" / f"{job.model.name}-mixed{tag}-{s.format}.onnx"
    rep_path = _cache_path(job, ctx, 0).with_suffix(".json")
    try:
        rep = json.loads(rep_path.read_text())
        if rep.get("error") or (qpath.exists() and hashlib.sha256(qpath.read_bytes()).hexdigest() == rep["sha256"]):
            return qpath, rep
    except (OSError, ValueError, KeyError, AttributeError, TypeError):
        pass  # not made yet, or damaged: made again
    options = _quantize_options(job, s, s.mixed_choices[0])
    try:
        rep = mixed_quantize(job.model.model, qpath, options,
                             MixedOptions(target=s.mixed, bits_choices=s.mixed_choices, proxy_n=s.proxy_n,
                                          verify_n=s.n, seed=s.seed),
                             job.model.dataset, job.net, ctx.data_root, cache=out / "cache" / "features",
                             compare_uniform=False, threads=_job_threads(ctx))
    except OutOfReach as e:  # a finding about the model, kept (other errors stop the sweep and cache nothing)
        rep = {"error": str(e)}
        write_text_atomic(rep_path, json.dumps(rep) + "\n")
        return qpath, rep
    rep = {k: rep[k] for k in ("avg_bits", "bytes_file", "rounds", "plan", "layers", "fp32", "verified")}
    rep["sha256"] = hashlib.sha256(qpath.read_bytes()).hexdigest()
    for layer in rep["layers"]:
        layer["by_bits"] = {str(b): v for b, v in layer["by_bits"].items()}
    write_text_atomic(rep_path, json.dumps(rep, default=_json_default) + "\n")
    return qpath, rep


def _quantize_options(job: Job, s: SweepSettings, bits: int) -> QuantizeOptions:
    float_row = bits == FLOAT_BITS
    return QuantizeOptions(bits=bits, method="minmax" if float_row else job.name, method_opts=() if float_row
                           else job.opts, granularity=s.granularity, format=s.format, fold_bn=s.fold_bn,
                           recalibrate_bn=s.recalibrate_bn and not float_row, calibration=s.calibration,
                           calibration_seed=s.calibration_seed)


def run_job(job: Job, ctx: Context) -> dict:
    """Quantize (or reuse), then measure every repeat through evaluate's `measure`, each cached on its own; returns
    {'row': the row over repeats, 'grid': repeat 0's first images} or {'row': None, 'error': ...} for a mixed
    target out of reach. Runs in this process, a worker process or a Dask worker alike."""
    from ganq.evaluate import measure

    s = ctx.settings
    out = Path(ctx.out)
    cells = [_cache_path(job, ctx, r) for r in range(s.repeats)]
    got = [_read_cell(c, job.bits, job.model.name) if c.exists() else None for c in cells]
    threads = _job_threads(ctx)
    if any(g is None for g in got):
        qrep = None
        if job.bits is None:
            qpath, mixed = _mixed_file(job, ctx)
            if mixed.get("error"):
                return {"row": None, "error": mixed["error"], "job": job}
        else:
            tag = f"{_file_tag(job)}{'-bn' if s.recalibrate_bn and job.bits != FLOAT_BITS else ''}"
            qpath = out / "models" / f"{job.model.name}-{job.bits}bit{tag}-{s.format}.onnx"
            # 32 bits: a float copy (BatchNorm folded if asked), with the same size report as the others
            qrep = quantize_file(job.model.model, qpath, _quantize_options(job, s, job.bits))
            mixed = None
        net = FeatureNet(job.net, threads=threads)
        gen = Generator(qpath, threads=threads)
        fc = FeatureCache(out / "cache" / "features")
        sizes = qrep or _sizes(qpath)
        for r, cell in enumerate(cells):
            if got[r] is not None:
                continue
            opts = replace(s.eval, seed=s.eval.seed + r)
            real = fc.real(net, job.model.dataset, opts.real_split, s.n, s.seed + r, ctx.data_root)
            t0 = time.perf_counter()
            metrics, images = measure(gen, net, real, opts)
            row = {"model": job.model.name, "dataset": job.model.dataset,
                   "bits": round(mixed["avg_bits"], 3) if mixed else job.bits, "kind": "mixed" if mixed else "uniform",
                   "method": job.method, "method_opts": dict(job.opts), "format": s.format,
                   "granularity": s.granularity, "fold_bn": s.fold_bn,
                   "recalibrate_bn": s.recalibrate_bn and job.bits != FLOAT_BITS, "seed": s.seed + r, "quantize_seconds": (qrep or {}).get("seconds"), "file": str(qpath),
                   **{k: sizes[k] for k in ("bytes_file", "bytes_ideal", "bytes_fp32", "bytes_gzip")},
                   **{k: v for k, v in metrics.items() if k not in ("n_fake", "feature_dim")},
                   "seconds": round(time.perf_counter() - t0, 2)}
            if mixed:
                row["plan"] = {t: v["bits"] for t, v in mixed["plan"]["tensors"].items()}
                row["mixed_target"] = s.mixed
            row["images_per_s"] = _speed(qpath, threads) if s.speed and r == 0 else None
            grid = images[:GRID]
            buf = io.BytesIO()
            np.savez(buf, row=np.array(json.dumps(row, default=_json_default)), grid=grid)
            write_bytes_atomic(cell, buf.getvalue())
            got[r] = (row, grid)
    per = [g[0] for g in got]
    for r, p in enumerate(per):  # rows cached before methods, repeats and kinds were recorded
        p.setdefault("kind", "uniform")
        p["method"] = job.method
        p["seed"] = s.seed + r
    return {"row": aggregate(per), "grid": got[0][1], "job": job}


def _sizes(qpath: Path) -> dict:
    """File sizes of an already written model (the mixed row's), as quantize_file reports them."""
    import gzip

    from ganq.onnx_io import load_model, read_quant
    data = qpath.read_bytes()
    q = read_quant(load_model(qpath, external_data=False)) or {}
    return {"bytes_file": len(data), "bytes_ideal": q.get("bytes_ideal"), "bytes_fp32": q.get("bytes_fp32"),
            "bytes_gzip": len(gzip.compress(data, 9, mtime=0))}


def aggregate(per_seed: list[dict]) -> dict:
    """The row over repeats: each metric's mean, its standard deviation over seeds (ddof 1) in `spread` (None for
    one repeat), the per-seed values in `per_seed`; everything else from the first repeat."""
    from ganq.evaluate.catalogue import METRICS

    row = dict(per_seed[0])
    row["repeats"] = len(per_seed)
    row["seeds"] = [p.get("seed") for p in per_seed]
    row["spread"], row["per_seed"] = {}, [{m: p.get(m) for m in METRICS} for p in per_seed]
    for m in list(METRICS) + ["inception_score_real"]:
        vals = [p.get(m) for p in per_seed]
        if any(v is None for v in vals):
            row["spread"][m] = None
            continue
        row[m] = float(np.mean(vals))
        row["spread"][m] = float(np.std(vals, ddof=1)) if len(vals) > 1 else None
    row["seconds"] = round(sum(p.get("seconds") or 0 for p in per_seed), 2)
    return row


def plan_jobs(refs: list[ModelRef], settings: SweepSettings, features: str | None):
    """Every row of the sweep, in report order (per model the float row, then each method's widths and its mixed
    row), and the feature networks they use, loaded once each: (jobs, {net_ref: FeatureNet})."""
    jobs, nets = [], {}
    for ref in refs:
        g = Generator(ref.model)
        net_ref = resolve_features(features, ref.dataset, g.spec.image_shape)
        if net_ref not in nets:
            nets[net_ref] = FeatureNet(net_ref)
        net = nets[net_ref]
        if g.spec.image_shape != net.image_shape:
            raise GanqError(f"{ref.model} makes {'x'.join(map(str, g.spec.image_shape))} images but {ref.dataset}'s "
                            f"feature network takes {'x'.join(map(str, net.image_shape))}")
        prefix = (f"{ref.name}-{ref.dataset}-{{key}}-{net.sha256[:12]}-"
                  f"{hashlib.sha256(Path(ref.model).read_bytes()).hexdigest()[:12]}")
        if FLOAT_BITS in settings.bits:
            jobs.append(Job(ref, "fp32", "minmax", (), FLOAT_BITS, net_ref, prefix))
        for label, (name, opts) in zip(settings.labels(), settings.method_list()):
            jobs += [Job(ref, label, name, opts, b, net_ref, prefix) for b in settings.bits if b != FLOAT_BITS]
            if settings.mixed:
                jobs.append(Job(ref, label, name, opts, None, net_ref, prefix))
    return jobs, nets


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


def connect(scheduler: str):
    """A Dask client for tcp://HOST:PORT, or one line saying why not."""
    try:
        from distributed import Client
    except ImportError:
        raise GanqError("--scheduler needs Dask's distributed: pip install 'ganq[cluster]'") from None
    try:
        return Client(scheduler, timeout="10s", set_as_default=False)
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


def _read_cell(cache: Path, bits, name: str):
    """(row, grid) of a cached cell, or None (with one warning) when the entry does not load or does not fit.
    bits None: a mixed-precision cell."""
    try:
        with np.load(cache, allow_pickle=False) as z:
            row, grid = json.loads(str(z["row"])), z["grid"]
        if not isinstance(row, dict):
            raise ValueError("not a row")
        fits = row.get("kind") == "mixed" if bits is None else row.get("bits") == bits
        if (fits and row.get("model") == name
                and isinstance(row.get("fid"), (int, float)) and grid.dtype == np.uint8 and grid.ndim == 4):
            return row, grid
    except Exception:  # truncated, random or foreign bytes: np.load and json raise many types
        pass
    from ganq.errors import warn
    warn(f"{cache}: corrupt or foreign sweep cache entry; discarded and recomputed")
    cache.unlink(missing_ok=True)
    return None


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
        with ProcessPoolExecutor(workers, mp_context=mp.get_context("spawn")) as pool:
            futs = {pool.submit(run_job, j, ctx): j for j in jobs}
            done = {}
            for i, fut in enumerate(done_futures(futs), 1):
                done[futs[fut]] = fut.result()
                tick(i, len(jobs), _label(futs[fut]))
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


def _csv_columns() -> list[str]:
    """Every metric with its spread over the seeds (`_seed_std`); IS and KID also keep their own within-run std."""
    from ganq.evaluate.catalogue import METRICS

    metrics = [c for m in METRICS for c in (m, f"{m}_seed_std")]
    return (["model", "dataset", "method", "kind", "bits", "format", "granularity", "fold_bn", "recalibrate_bn",
             "repeats"] + metrics + ["inception_score_std", "kid_std", "inception_score_real", "bytes_file",
                                     "bytes_ideal", "bytes_gzip", "bytes_fp32", "images_per_s", "file"])


def write_tables(out: Path, rows: list[dict], settings: SweepSettings, refs: list[ModelRef], failed=()) -> None:
    """results.json (with the mixed rows out of reach under `failed`), results.csv and the folder's marker."""
    write_text_atomic(out / "results.json", json.dumps(
        {"settings": asdict(settings), "models": [asdict(r) for r in refs], "rows": rows, "failed": list(failed)},
        indent=1, default=_json_default) + "\n")
    buf = io.StringIO()
    w = csv.DictWriter(buf, _csv_columns(), extrasaction="ignore")
    w.writeheader()
    w.writerows({**r, **{f"{m}_seed_std": v for m, v in (r.get("spread") or {}).items()}} for r in rows)
    write_text_atomic(out / "results.csv", buf.getvalue())
    write_text_atomic(out / "sweep.json", json.dumps({"ganq": "sweep", "settings_key": settings.key()}) + "\n")
