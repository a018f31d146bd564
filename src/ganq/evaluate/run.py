"""One evaluation: generate from seeded latents, extract features, score every metric against the real features."""

from __future__ import annotations

import json
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np

from ganq.errors import GanqError
from ganq.evaluate import metrics
from ganq.evaluate.features import FeatureNet
from ganq.evaluate.options import EvalOptions
from ganq.evaluate.sources import FeatureCache, default_features, resolve_features
from ganq.onnx_io import ground_truth


def score_steps(n_fake: int, n_real: int, real_sq_radii_given: bool = False) -> int:
    """How many times score() advances its progress callback."""
    return 3 + metrics.manifold_steps(n_fake, n_real, real_sq_radii_given)


def score(fake_logits, fake_feats, real_logits, real_feats, opts: EvalOptions, real_sq_radii=None,
          progress=None) -> dict:
    """Every metric from features (fake first). real_sq_radii: metrics.sq_radii(real_feats, (opts.k, opts.dc_k)),
    to reuse when many fake sets meet the same real set. progress: called with 1 per step (score_steps)."""
    tick = progress or (lambda m: None)
    out = {"inception_score": None, "inception_score_std": None, "inception_score_real": None}  # a network without logits (vgg16) has no IS
    if fake_logits is not None and real_logits is not None:
        out.update(metrics.inception_score(fake_logits, shuffle=opts.shuffle))
        out["inception_score_real"] = metrics.inception_score(real_logits, shuffle=opts.shuffle)["inception_score"]
    tick(1)
    out["fid"] = metrics.fid(fake_feats, real_feats)
    tick(1)
    subset = min(opts.kid_subset_size, len(fake_feats), len(real_feats))
    out.update(metrics.kid(fake_feats, real_feats, subsets=opts.kid_subsets, subset_size=subset))
    tick(1)
    out.update(metrics.manifold_metrics(fake_feats, real_feats, k=opts.k, strict=opts.strict,
                                        realism_variant=opts.realism, dc_k=opts.dc_k, real_sq_radii=real_sq_radii,
                                        progress=progress))
    return out


def evaluate(model: str | Path, dataset: str | None = None, features: str | Path | None = None,
             opts: EvalOptions | None = None, data_root=None, cache: str | Path | None = None,
             provider: str = "cpu", threads: int | None = None, progress=None, reference: str | Path | None = None,
             per_class: bool = False, ground_truth: bool | None = None) -> dict:
    """Generate opts.n images from `model`, compare with opts.n real images of `dataset` on `features` (images of
    another size or channel count resized, the filter reported). reference: the fp32 generator it came from, for
    PSNR / SSIM to it on the same inputs; per_class: intra-class FID of a conditional generator; ground_truth: an
    image-to-image generator's PSNR / SSIM to the source images its inputs were made from (super-resolution), with
    bicubic upsampling's PSNR, SSIM and FID beside them (None: as the spec's extra says, on for ganq's sr2x).

    progress: called as progress(stage, total) when each stage starts (real features, generate, fake features,
    metrics); it returns a callable that is called with the units done as they are done."""
    from ganq.runtime import Generator

    opts = opts or EvalOptions()
    t0 = time.perf_counter()
    g = Generator(model, provider, threads, data_root=data_root)
    ref = Generator(reference, provider, threads, data_root=data_root) if reference is not None else None
    if ref is not None:
        check_reference(g, ref, model, reference)
    if per_class and not g.spec.inputs_of("label"):
        raise GanqError(f"{model}: --per-class needs a conditional generator (a label input); its spec has none")
    if ground_truth is None:
        ground_truth = bool(g.spec.extra.get("ground_truth")) and g.spec.family == "image-to-image"
    if ground_truth and g.spec.family != "image-to-image":
        raise GanqError(f"{model}: --ground-truth needs an image-to-image generator; its spec has no image input")
    dataset = dataset or g.spec.dataset
    if not dataset and ref is not None and g.spec.family == "image-to-image":
        return fidelity_only(g, ref, opts, progress, t0)
    if not dataset:
        more = (" (or, for an image-to-image generator, --reference for its fidelity to fp32 alone)"
                if g.spec.family == "image-to-image" else "")
        raise GanqError(f"{model}: its spec names no data set; give --dataset{more}")
    net = FeatureNet(resolve_features(features, dataset, g.spec.image_shape), provider, threads)

    def stage(name, total):
        return progress(name, total) if progress else None

    fc = FeatureCache(cache)
    entry = fc.entry(net, dataset, opts.real_split, opts.n, opts.seed, data_root)
    cached = entry[0].exists()
    tick = stage("real features (cached)" if cached else "real features", 1 if cached else opts.n)
    real_logits, real_feats = fc.real(net, dataset, opts.real_split, opts.n, opts.seed, data_root,
                                      None if cached else tick, entry)
    if cached and tick:
        tick(1)
    out, fake = measure(g, net, (real_logits, real_feats), opts, progress=progress)
    if ref is not None:
        from ganq.evaluate.fidelity import fidelity

        want = ref.generate(opts.n, opts.seed, opts.batch, stage("fp32 reference", opts.n))
        out.update(fidelity(fake, want))
        out["reference"] = str(ref.path)
    if per_class:
        out.update(intra_class(g, net, entry[1], opts, stage))
    if ground_truth:
        out.update(against_ground_truth(g, net, fake, (real_logits, real_feats), opts, data_root, stage))
    out["resize"] = net.resize_note(g.spec.image_shape)
    out["family"] = g.spec.family
    import json as _json
    quant = g.metadata.get("ganq.quant")
    out.update({"model": str(g.path), "dataset": dataset, "features": str(net.path),
                "features_kind": net.info.get("kind"), "n_real": int(len(real_feats)),
                "k": opts.k, "options": asdict(opts),
                "quantization": _json.loads(quant) if quant else None,
                "seconds": round(time.perf_counter() - t0, 2)})
    return out


def measure(g, net: FeatureNet, real, opts: EvalOptions, real_sq_radii=None, progress=None):
    """What `ganq evaluate` measures, for a loaded generator and feature network: opts.n images from latents of
    opts.seed, scored against real = (logits, features). The sweep measures through this too. Returns (metrics with
    n_fake, feature_dim and the fake class histogram; the images). progress: as evaluate's."""
    def stage(name, total):
        return progress(name, total) if progress else None

    real_logits, real_feats = real
    fake = g.generate(opts.n, opts.seed, opts.batch, stage("generate", opts.n))
    fake_logits, fake_feats = net(fake, opts.batch, stage("fake features", opts.n))
    out = score(fake_logits, fake_feats, real_logits, real_feats, opts, real_sq_radii,
                progress=stage("metrics", score_steps(len(fake_feats), len(real_feats), real_sq_radii is not None)))
    fake_classes = (np.bincount(fake_logits.argmax(1), minlength=fake_logits.shape[1]) if fake_logits is not None
                    else np.zeros(0, int))
    out.update({"n_fake": int(len(fake_feats)), "feature_dim": int(fake_feats.shape[1]),
                "class_histogram": fake_classes.tolist()})
    return out, fake


def fidelity_only(g, ref, opts: EvalOptions, progress, t0) -> dict:
    """PSNR / SSIM of an image-to-image generator to its fp32 reference, with no target images to compare to."""
    from ganq.evaluate.catalogue import METRICS
    from ganq.evaluate.fidelity import fidelity

    def stage(name, total):
        return progress(name, total) if progress else None
    got = g.generate(opts.n, opts.seed, opts.batch, stage("generate", opts.n))
    want = ref.generate(opts.n, opts.seed, opts.batch, stage("fp32 reference", opts.n))
    quant = g.metadata.get("ganq.quant")
    out = {m: None for m in METRICS}
    out.update({"inception_score_std": None, "inception_score_real": None, **fidelity(got, want),
                "model": str(g.path), "reference": str(ref.path), "dataset": None, "features": None,
                "family": g.spec.family, "n_fake": opts.n, "n_real": 0, "options": asdict(opts),
                "quantization": json.loads(quant) if quant else None,
                "seconds": round(time.perf_counter() - t0, 2)})
    return out


def against_ground_truth(g, net: FeatureNet, fake, real, opts: EvalOptions, data_root, stage) -> dict:
    """PSNR / SSIM of the generated images to the images their inputs were made from, and the same for bicubic
    upsampling of the inputs (PIL's antialiased bicubic, the filter that made them), with its FID."""
    from ganq.data.resize import resize_images
    from ganq.evaluate.fidelity import psnr, ssim

    target, small = ground_truth(g.spec, opts.n, opts.seed, data_root)
    bicubic = resize_images(small, g.spec.height, g.spec.width, g.spec.channels)
    _, feats = net(bicubic, opts.batch, stage("bicubic features", opts.n))
    return {"psnr_gt": psnr(fake, target), "ssim_gt": ssim(fake, target),
            "bicubic_psnr_gt": psnr(bicubic, target), "bicubic_ssim_gt": ssim(bicubic, target),
            "bicubic_fid": metrics.fid(feats, real[1])}


def check_reference(g, ref, model, reference) -> None:
    """The reference must be a float generator with the same inputs and output as the quantized one."""
    if ref.metadata.get("ganq.quant"):
        raise GanqError(f"--reference {reference}: is a quantized file; give the fp32 generator it came from")
    if ref.spec.all_inputs != g.spec.all_inputs or ref.spec.image_shape != g.spec.image_shape:
        raise GanqError(f"--reference {reference}: its spec's inputs or image shape differ from {model}'s; it is "
                        "not the generator this file came from")


def intra_class(g, net: FeatureNet, ds, opts: EvalOptions, stage) -> dict:
    """FID per class of a conditional generator: the images of label c against the real images of class c (the
    generator's label c is taken as the data set's class c), as many of each as the real split holds of the class
    and at most opts.n / classes; the mean over classes is the intra-class FID."""
    (lab,) = g.spec.inputs_of("label")  # ds: the real split, as the feature cache loaded it
    classes = lab.classes
    per = opts.n // classes
    if per < 10:
        raise GanqError(f"--per-class needs --n of at least {10 * classes} ({classes} classes x 10 images)")
    tick = stage("per-class FID", classes)
    fids = []
    for c in range(classes):
        have = np.flatnonzero(ds.labels == c)
        if len(have) < 10:
            raise GanqError(f"{ds.name} {opts.real_split} holds {len(have)} images of class {c}; the generator has "
                            f"{classes} classes")
        m = min(per, len(have))
        real = ds.images[np.sort(np.random.default_rng(opts.seed + c).choice(have, m, replace=False))]
        fake = g.generate(m, opts.seed + 1000 + c, opts.batch, labels=np.full(m, c))
        _, rf = net(real, opts.batch)
        _, ff = net(fake, opts.batch)
        fids.append(metrics.fid(ff, rf))
        if tick:
            tick(1)
    return {"intra_fid": float(np.mean(fids)), "fid_per_class": [float(f) for f in fids],
            "n_per_class": int(per)}


def load_features(path: str | Path, what: str) -> np.ndarray:
    """A real, finite [N, D] array from a .npy file, never unpickled. The header is checked against the file's size
    before anything is allocated, so a header that lies cannot ask for more memory than the file holds."""
    path = Path(path)
    if not path.is_file():
        raise GanqError(f"{path}: no such file")
    size = path.stat().st_size
    try:
        with open(path, "rb") as fh:
            if fh.read(4) == b"PK\x03\x04" or path.suffix == ".npz":
                raise GanqError(f"{path}: is a .npz archive; give one .npy array for the {what}")
            fh.seek(0)
            version = np.lib.format.read_magic(fh)
            read = {(1, 0): np.lib.format.read_array_header_1_0, (2, 0): np.lib.format.read_array_header_2_0}
            if version not in read:
                raise ValueError(f"unsupported .npy version {version}")
            shape, fortran, dtype = read[version](fh, max_header_size=10_000)
            offset = fh.tell()
    except GanqError:
        raise
    except Exception as e:  # numpy's header parser raises ValueError, EOFError, SyntaxError, ...
        raise GanqError(f"{path}: not a .npy array ({type(e).__name__}: {str(e).splitlines()[0][:100]})") from None
    if dtype.hasobject or dtype.kind not in "iuf":
        kind = "complex" if dtype.kind == "c" else str(dtype)
        raise GanqError(f"{path}: {what} must be real numbers (integers or floats), got {kind}")
    if len(shape) != 2:
        raise GanqError(f"{path}: {what} must be a [N, D] array, got shape {list(shape)}")
    need = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if offset + need != size:
        raise GanqError(f"{path}: the header promises {shape[0]}x{shape[1]} {dtype} ({need:,} bytes) but the file "
                        f"holds {size - offset:,}")
    x = np.fromfile(path, dtype=dtype, offset=offset).reshape(shape, order="F" if fortran else "C")
    if x.size == 0:
        raise GanqError(f"{path}: {what} are empty ({list(shape)})")
    if not np.all(np.isfinite(x)):
        raise GanqError(f"{path}: {what} hold NaN or infinity")
    return x


def metrics_from_arrays(fake: np.ndarray, real: np.ndarray, fake_logits=None, real_logits=None,
                        opts: EvalOptions | None = None) -> dict:
    """Every metric from saved feature arrays (fake first); IS when logits are given."""
    opts = opts or EvalOptions(n=max(10, min(len(fake), len(real))))
    for name, lg, ft in (("fake", fake_logits, fake), ("real", real_logits, real)):
        if lg is not None and (lg.ndim != 2 or len(lg) != len(ft)):
            raise GanqError(f"{name} logits have {len(lg)} rows for {len(ft)} feature rows; they must match")
        if lg is not None and lg.shape[1] < 2:
            raise GanqError(f"{name} logits need at least 2 classes for an Inception Score, got {lg.shape[1]}")
    if max(float(np.abs(fake).max()), float(np.abs(real).max())) > 1e15:
        raise GanqError("feature values beyond 1e15: their squares overflow the metrics' float64 sums; "
                        "these are not feature vectors")
    if fake.shape[1] != real.shape[1]:
        raise GanqError(f"feature widths differ: fake {fake.shape[1]}, real {real.shape[1]}")
    if max(opts.k, opts.dc_k) >= min(len(fake), len(real)):
        raise GanqError(f"k = {max(opts.k, opts.dc_k)} needs more samples than {min(len(fake), len(real))}")
    kid_size = min(opts.kid_subset_size, len(fake), len(real))
    o = EvalOptions(**{**asdict(opts), "kid_subset_size": kid_size})
    out = score(fake_logits, fake, real_logits if real_logits is not None else fake_logits, real, o)
    if real_logits is None:
        out["inception_score_real"] = None
    return {**out, "n_fake": int(len(fake)), "n_real": int(len(real)), "k": opts.k}


__all__ = ["measure", "metrics_from_arrays", "load_features", "EvalOptions", "evaluate", "score", "FeatureCache", "FeatureNet", "metrics", "default_features"]


def check_request(model, out, force: bool, threads) -> None:
    """What `ganq evaluate` checks before any work: the --out policy and the thread count's range."""
    from ganq.onnx_io import check_threads

    if out is not None:
        from ganq._io import check_out
        from ganq.onnx_io import resolve_model
        check_out(out, force, [resolve_model(model)])
    check_threads(threads)


def metrics_from_files(fake, real, logits_fake=None, logits_real=None, k: int = 3, strict: bool = False,
                       realism: str = "paper", shuffle: bool = True) -> dict:
    """Every metric from .npy feature (and logit) files, generated first."""
    f, r = load_features(fake, "fake features"), load_features(real, "real features")
    lf = load_features(logits_fake, "fake logits") if logits_fake else None
    lr = load_features(logits_real, "real logits") if logits_real else None
    opts = EvalOptions(n=max(10, min(len(f), len(r))), k=k, strict=strict, realism=realism, shuffle=shuffle)
    return metrics_from_arrays(f, r, lf, lr, opts)
