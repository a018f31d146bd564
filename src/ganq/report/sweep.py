"""Sweep bit widths over generators: quantize, generate from the same latents, score, time; cache each result."""

from __future__ import annotations

import csv
import hashlib
import io
import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from ganq._io import write_text_atomic
from ganq.errors import GanqError
from ganq.evaluate.metrics import sq_radii
from ganq.evaluate import EvalOptions, FeatureCache, FeatureNet, real_images, resolve_features, score
from ganq.quantize import FLOAT_BITS, QuantizeOptions, quantize_file
from ganq.quantize.formats import FORMATS
from ganq.quantize.decoders import GRANULARITIES, MAX_BITS
from ganq.runtime import Generator, resolve_model

DEFAULT_BITS = (32, 8, 7, 6, 5, 4, 3)
GRID = 16  # samples per cell of fig-samples (4 x 4)


CALIBRATION_DEFAULTS = {"recalibrate_bn": False, "calibration": 1024, "calibration_seed": 0}


@dataclass(frozen=True)
class SweepSettings:
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
        from ganq.quantize.methods import make_method

        from ganq.errors import check_range

        check_range("--calibration", self.calibration, 1, 1_000_000)
        check_range("--calibration-seed", self.calibration_seed, 0, 2 ** 31 - 1)
        m = make_method(self.method, dict(self.method_opts))
        if self.recalibrate_bn and m.name == "ocs":
            raise GanqError("--recalibrate-bn does not combine with method ocs (it changes the layers' input shapes)")
        for b in self.bits:
            if b != FLOAT_BITS:
                m.check_bits(b)

    def key(self) -> str:
        d = asdict(self)
        d.pop("bits")  # each width is cached on its own, so adding widths reuses the others
        for name, default in CALIBRATION_DEFAULTS.items():  # keys of sweeps made before these options stay valid
            if d[name] == default:
                d.pop(name)
        return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()[:12]


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


def parse_models(models: list[str], dataset: str | None) -> list[ModelRef]:
    """MODEL, or MODEL@DATASET when models come from different data sets; --dataset applies to those without @."""
    refs = []
    for m in models:
        path_part, _, ds = m.partition("@")
        path = resolve_model(path_part)
        if not path.is_file():
            raise GanqError(f"{path}: no such file")
        ds = ds or dataset
        if not ds:
            ds = Generator(path).spec.dataset
            if not ds:
                raise GanqError(f"{m}: its spec names no data set; write {m}@DATASET or give --dataset")
        name = path.stem
        refs.append(ModelRef(str(path), ds, name))
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


def _speed(path: Path, batch: int = 64) -> float:
    """onnxruntime images/s at batch 64 in this process (a few timed runs; `ganq bench` is the careful tool)."""
    from ganq.runtime.bench import BenchJob, run_job
    import os
    return run_job(BenchJob(str(path), batch, threads=os.cpu_count() or 1, warmup=2, repeat=5))["images_per_s"]


def run_sweep(refs: list[ModelRef], settings: SweepSettings, out: str | Path, features: str | None = None,
              data_root=None, progress=None) -> dict:
    """Every (model, bits) result, computed or read from out/cache; writes nothing but the cache and models/."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise GanqError(f"{out}: exists and is not a folder")
    marker = out / "sweep.json"
    fresh = not out.exists() or not any(out.iterdir())
    if not fresh and not is_sweep(out):
        raise GanqError(f"{out}: folder exists and holds no ganq sweep; choose another --out")
    try:
        return _run(refs, settings, out, features, data_root, progress, fresh, marker)
    except BaseException:
        # a failed or interrupted first attempt that cached nothing leaves nothing behind
        if fresh and out.is_dir() and not any((out / "cache").glob("*.npz")):
            import shutil
            shutil.rmtree(out, ignore_errors=True)
        raise


def is_sweep(out: Path) -> bool:
    try:
        return json.loads((out / "sweep.json").read_text()).get("ganq") == "sweep"
    except (OSError, ValueError, AttributeError):
        return False


def _read_cell(cache: Path, bits: int, name: str):
    """(row, grid) of a cached cell, or None (with one warning) when the entry does not load or does not fit."""
    try:
        with np.load(cache, allow_pickle=False) as z:
            row, grid = json.loads(str(z["row"])), z["grid"]
        if (isinstance(row, dict) and row.get("bits") == bits and row.get("model") == name
                and isinstance(row.get("fid"), (int, float)) and grid.dtype == np.uint8 and grid.ndim == 4):
            return row, grid
    except Exception:  # truncated, random or foreign bytes: np.load and json raise many types
        pass
    from ganq.errors import warn
    warn(f"{cache}: corrupt or foreign sweep cache entry; discarded and recomputed")
    cache.unlink(missing_ok=True)
    return None


def _run(refs, settings, out, features, data_root, progress, fresh, marker) -> dict:
    out.mkdir(parents=True, exist_ok=True)
    if fresh or not marker.exists():
        # the marker comes first, so that an interrupted first sweep is resumed, not refused
        write_text_atomic(marker, json.dumps({"ganq": "sweep", "state": "running"}) + "\n")
    (out / "cache").mkdir(parents=True, exist_ok=True)
    (out / "models").mkdir(exist_ok=True)
    eval_opts = settings.eval
    feature_cache = FeatureCache(out / "cache" / "features")
    nets: dict[str, FeatureNet] = {}
    rows, samples, reals = [], {}, {}
    for ref in refs:
        g = Generator(ref.model)
        net_ref = resolve_features(features, ref.dataset, g.spec.image_shape)
        if net_ref not in nets:
            nets[net_ref] = FeatureNet(net_ref)
        net = nets[net_ref]
        if g.spec.image_shape != net.image_shape:
            raise GanqError(f"{ref.model} makes {'x'.join(map(str, g.spec.image_shape))} images but {ref.dataset}'s "
                            f"feature network takes {'x'.join(map(str, net.image_shape))}")
        real = None
        key = f"{settings.key()}-{net.sha256[:12]}-{hashlib.sha256(Path(ref.model).read_bytes()).hexdigest()[:12]}"
        for bits in settings.bits:
            if progress:
                progress(ref.name, bits)
            cache = out / "cache" / f"{ref.name}-{ref.dataset}-{key}-{bits}.npz"
            cell = _read_cell(cache, bits, ref.name) if cache.exists() else None
            if cell is not None:
                row, grid = cell
            else:
                if real is None:
                    real = feature_cache.real(net, ref.dataset, eval_opts.real_split, settings.n, settings.seed,
                                              data_root)
                    real_radii = sq_radii(real[1], (eval_opts.k, eval_opts.dc_k))  # the same for every width
                tag = "" if settings.method == "minmax" and not settings.method_opts else f"-{settings.method}"
                tag += "-bn" if settings.recalibrate_bn else ""
                qpath = out / "models" / f"{ref.name}-{bits}bit{tag}-{settings.format}.onnx"
                # 32 bits: a float copy (BatchNorm folded if asked), with the same size report as the others
                qrep = quantize_file(ref.model, qpath, QuantizeOptions(
                    bits=bits, method=settings.method, method_opts=settings.method_opts,
                    granularity=settings.granularity,
                    format=settings.format, fold_bn=settings.fold_bn, recalibrate_bn=settings.recalibrate_bn,
                    calibration=settings.calibration, calibration_seed=settings.calibration_seed))
                t0 = time.perf_counter()
                gen = Generator(qpath)
                images = gen.generate(settings.n, settings.seed, eval_opts.batch)
                logits, feats = net(images, eval_opts.batch)
                metrics = score(logits, feats, real[0], real[1], eval_opts, real_radii)
                row = {"model": ref.name, "dataset": ref.dataset, "bits": bits, "method": settings.method,
                       "method_opts": dict(settings.method_opts), "format": settings.format,
                       "granularity": settings.granularity, "fold_bn": settings.fold_bn,
                       "recalibrate_bn": settings.recalibrate_bn, "quantize_seconds": qrep.get("seconds"),
                       "file": str(qpath),
                       "bytes_file": qrep["bytes_file"], "bytes_ideal": qrep["bytes_ideal"],
                       "bytes_fp32": qrep["bytes_fp32"], "bytes_gzip": qrep["bytes_gzip"],
                       **{k: v for k, v in metrics.items()},
                       "class_histogram": (np.bincount(logits.argmax(1), minlength=logits.shape[1]).tolist()
                                           if logits is not None else []),
                       "seconds": round(time.perf_counter() - t0, 2)}
                row["images_per_s"] = _speed(qpath) if settings.speed else None
                grid = images[:GRID]
                buf = io.BytesIO()
                np.savez(buf, row=np.array(json.dumps(row, default=_json_default)), grid=grid)
                from ganq._io import write_bytes_atomic
                write_bytes_atomic(cache, buf.getvalue())
            rows.append(row)
            samples[(ref.name, bits)] = grid
        if ref.name not in reals:
            reals[ref.name] = real_images(ref.dataset, GRID, eval_opts.real_split, settings.seed + 1, data_root)
    return {"rows": rows, "samples": samples, "reals": reals}


CSV_COLUMNS = ["model", "dataset", "bits", "method", "format", "granularity", "fold_bn", "inception_score", "inception_score_std", "fid", "kid",
               "kid_std", "precision", "recall", "realism_precision", "realism_recall", "density", "coverage",
               "inception_score_real", "bytes_file", "bytes_ideal", "bytes_gzip", "bytes_fp32", "images_per_s", "file"]


def write_tables(out: Path, rows: list[dict], settings: SweepSettings, refs: list[ModelRef]) -> None:
    write_text_atomic(out / "results.json", json.dumps(
        {"settings": asdict(settings), "models": [asdict(r) for r in refs], "rows": rows},
        indent=1, default=_json_default) + "\n")
    buf = io.StringIO()
    w = csv.DictWriter(buf, CSV_COLUMNS, extrasaction="ignore")
    w.writeheader()
    w.writerows(rows)
    write_text_atomic(out / "results.csv", buf.getvalue())
    write_text_atomic(out / "sweep.json", json.dumps({"ganq": "sweep", "settings_key": settings.key()}) + "\n")
