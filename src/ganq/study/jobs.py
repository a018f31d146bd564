"""The sweep's jobs: one row = a model x method x width (or its mixed-precision plan) with every repeat, each repeat
a cache entry of its own; run here, in a worker process or on a Dask worker alike."""

from __future__ import annotations

import functools
import hashlib
import io
import json
import time
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from ganq._io import json_default as _json_default, write_bytes_atomic, write_text_atomic
from ganq.evaluate import FeatureCache, FeatureNet, resolve_features
from ganq.quantize import FLOAT_BITS, QuantizeOptions, quantize_file
from ganq.runtime import Generator
from ganq.study.settings import GRID, ModelRef, SweepSettings

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
    granularity: str = ""  # one of the sweep's granularities ("": its first)

    def gran(self, s: SweepSettings) -> str:
        return self.granularity or s.granularities()[0]


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
    key = s.cell_key(job.name, job.opts, repeat, float_row=job.bits == FLOAT_BITS, mixed=job.bits is None,
                     granularity=job.gran(s))
    return Path(ctx.out) / "cache" / f"{job.prefix.replace('{key}', key)}-{'mixed' if job.bits is None else job.bits}.npz"


def _file_tag(job: Job) -> str:
    gran = f"-{job.granularity.replace(':', '')}" if job.granularity and job.bits != FLOAT_BITS else ""
    if job.bits == FLOAT_BITS or (job.name == "minmax" and not job.opts):
        return gran
    opts = "-" + hashlib.sha256(json.dumps(job.opts).encode()).hexdigest()[:6] if job.opts else ""
    return f"-{job.name}{opts}{gran}"


def _mixed_file(job: Job, ctx: Context) -> tuple[Path, dict | None]:
    """The mixed-precision file of a job and its report: made once (cached as JSON beside the rows), then reused."""
    from ganq.study.mixed import MixedOptions, OutOfReach, mixed_quantize

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
                           else job.opts, granularity=job.gran(s), format=s.format, fold_bn=s.fold_bn,
                           recalibrate_bn=s.recalibrate_bn and not float_row, calibration=s.calibration,
                           calibration_seed=s.calibration_seed)


def run_job(job: Job, ctx: Context) -> dict:
    """Quantize (or reuse), then measure every repeat through evaluate's `measure`, each cached on its own; returns
    {'row': the row over repeats, 'grid': repeat 0's first images} or {'row': None, 'error': ...} for a mixed
    target out of reach. Runs in this process, a worker process or a Dask worker alike."""
    from ganq.evaluate.run import measure

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
            qrep = quantize_file(job.model.model, qpath, _quantize_options(job, s, job.bits), data_root=ctx.data_root)
            mixed = None
        net = FeatureNet(job.net, threads=threads)
        gen = Generator(qpath, threads=threads, data_root=ctx.data_root)

        fc = FeatureCache(out / "cache" / "features")
        sizes = qrep or _sizes(qpath)
        for r, cell in enumerate(cells):
            if got[r] is not None:
                continue
            opts = replace(s.eval, seed=s.eval.seed + r)
            real = fc.real(net, job.model.dataset, opts.real_split, s.n, s.seed + r, ctx.data_root)
            t0 = time.perf_counter()
            metrics, images = measure(gen, net, real, opts)
            if job.bits != FLOAT_BITS:  # fidelity to fp32: the same inputs through the float generator
                from ganq.evaluate.fidelity import fidelity
                metrics.update(fidelity(images, _fp32_images(str(job.model.model), opts.n, opts.seed, opts.batch,
                                                             threads, ctx.data_root)))
            metrics.update(family_metrics(gen, net, images, opts, job.model.dataset, ctx.data_root))
            row = {"model": job.model.name, "dataset": job.model.dataset,
                   "bits": round(mixed["avg_bits"], 3) if mixed else job.bits, "kind": "mixed" if mixed else "uniform",
                   "method": job.method, "method_opts": dict(job.opts), "format": s.format,
                   "granularity": job.gran(s), "fold_bn": s.fold_bn,
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


def family_metrics(gen, net, images, opts, dataset, data_root) -> dict:
    """What a family's generator is judged by beyond the distribution metrics: a super-resolution generator's PSNR
    and SSIM to the ground truth, a conditional one's intra-class FID."""
    out = {}
    if gen.spec.family == "image-to-image" and gen.spec.extra.get("ground_truth"):
        from ganq.evaluate.fidelity import psnr, ssim
        from ganq.onnx_io import ground_truth

        target, _ = ground_truth(gen.spec, opts.n, opts.seed, data_root)
        out.update({"psnr_gt": psnr(images, target), "ssim_gt": ssim(images, target)})
    if gen.spec.inputs_of("label") and dataset:
        from ganq.evaluate.run import intra_class

        ds = _real_split(dataset, opts.real_split, data_root)
        out["intra_fid"] = intra_class(gen, net, ds, opts, lambda name, total: None)["intra_fid"]
    return out


@functools.lru_cache(maxsize=2)
def _real_split(dataset: str, split: str, data_root):
    """A data set's split, read once per process for all the conditional cells that need its labels."""
    from ganq import data

    return data.load(dataset, split, data_root)


@functools.lru_cache(maxsize=2)
def _fp32_images(model: str, n: int, seed: int, batch: int, threads, data_root=None) -> np.ndarray:
    """The fp32 generator's images at one seed, made once per process for all the cells that compare with them."""
    return Generator(model, threads=threads, data_root=data_root).generate(n, seed, batch)


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
    extra = ["inception_score_real", "psnr_fp32", "ssim_fp32", "psnr_gt", "ssim_gt", "intra_fid"]
    row["spread"], row["per_seed"] = {}, [{m: p.get(m) for m in list(METRICS) + extra[1:]} for p in per_seed]
    for m in list(METRICS) + extra:
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
        net = nets[net_ref]  # images of another shape are resized by the feature network (its resize_note)
        prefix = (f"{ref.name}-{ref.dataset}-{{key}}-{net.sha256[:12]}-"
                  f"{hashlib.sha256(Path(ref.model).read_bytes()).hexdigest()[:12]}")
        if FLOAT_BITS in settings.bits:
            jobs.append(Job(ref, "fp32", "minmax", (), FLOAT_BITS, net_ref, prefix))
        for i, gran in enumerate(settings.granularities()):
            g = "" if i == 0 else gran  # the first granularity's rows keep their labels, files and cache keys
            for label, (name, opts) in zip(settings.labels(), settings.method_list()):
                label = f"{label} @{gran}" if g else label
                jobs += [Job(ref, label, name, opts, b, net_ref, prefix, g) for b in settings.bits
                         if b != FLOAT_BITS]
                if settings.mixed:
                    jobs.append(Job(ref, label, name, opts, None, net_ref, prefix, g))
    return jobs, nets


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


