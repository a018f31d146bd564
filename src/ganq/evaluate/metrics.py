"""Metrics as pure numpy functions: features -> statistics -> score.

Argument order everywhere: (fake, real) -- the GENERATED set first, as torch-fidelity's features_1.
Features are numpy.ndarray([N, D]) of float32 or float64; distances are computed in float64, in row blocks.
"""

from __future__ import annotations

import os

import numpy as np

from ganq.errors import GanqError

BLOCK = 2048


def _as2d(x: np.ndarray, name: str) -> np.ndarray:
    return _check(x, name).astype(np.float64, copy=False)


def _blocks(a: np.ndarray, b: np.ndarray, block: int = BLOCK):
    """Yield (row offset, euclidean distances [rows, len(b)]) for row blocks of a (float64, clipped at 0)."""
    b2 = np.einsum("ij,ij->i", b, b)
    for i in range(0, len(a), block):
        rows = a[i:i + block]
        d2 = np.einsum("ij,ij->i", rows, rows)[:, None] + b2[None, :] - 2.0 * rows @ b.T
        yield i, np.sqrt(np.maximum(d2, 0.0))


def knn_radii(x: np.ndarray, k: int = 3) -> np.ndarray:
    """float64 [N]: distance of each point to its k-th nearest neighbour, the point itself excluded."""
    x = _as2d(x, "features")
    if not 1 <= k < len(x):
        raise GanqError(f"k must be in [1, {len(x) - 1}] for {len(x)} samples, got {k}")
    radii = np.empty(len(x))
    for i, d in _blocks(x, x):
        # the (k+1)-th smallest, the point itself being the 0-th (distance 0), as prdc and torch-fidelity do
        radii[i:i + len(d)] = np.partition(d, k, axis=1)[:, k]
    return radii


def _inside(points: np.ndarray, centres: np.ndarray, radii: np.ndarray, strict: bool) -> np.ndarray:
    """bool [len(points)]: is each point inside any centre's ball?"""
    hit = np.zeros(len(points), dtype=bool)
    for i, d in _blocks(points, centres):
        inside = d < radii[None, :] if strict else d <= radii[None, :]
        hit[i:i + len(d)] = inside.any(axis=1)
    return hit


def precision_recall(fake: np.ndarray, real: np.ndarray, k: int = 3, strict: bool = False) -> dict:
    """k-NN precision and recall (Kynkäänniemi et al. 2019).

    precision: share of fake samples inside the real manifold (union of balls around real samples, radius = distance
    to the k-th nearest real neighbour); recall: share of real samples inside the fake manifold. Membership is
    inclusive (<=) as in the paper's code and torch-fidelity; strict=True gives prdc's <."""
    fake, real = _as2d(fake, "fake"), _as2d(real, "real")
    precision = _inside(fake, real, knn_radii(real, k), strict).mean()
    recall = _inside(real, fake, knn_radii(fake, k), strict).mean()
    return {"precision": float(precision), "recall": float(recall)}


def realism(fake: np.ndarray, real: np.ndarray, k: int = 3, variant: str = "paper") -> np.ndarray:
    """float64 [len(fake)]: realism score of each fake sample against the real manifold.

    paper:    max_i radius_i / d(g, r_i)  (Kynkäänniemi et al. 2019, eq. 3)
    official: max_i radius_i^2 / d(g, r_i)^2 with radii above their median set to 0 (the authors' code)."""
    if variant not in ("paper", "official"):
        raise GanqError(f"realism variant must be paper or official, got {variant!r}")
    fake, real = _as2d(fake, "fake"), _as2d(real, "real")
    radii = knn_radii(real, k)
    if variant == "official":
        radii = np.where(radii > np.median(radii), 0.0, radii) ** 2
    out = np.empty(len(fake))
    for i, d in _blocks(fake, real):
        if variant == "official":
            d = d * d
        out[i:i + len(d)] = np.max(radii[None, :] / (d + 1e-18), axis=1)
    return out


def density_coverage(fake: np.ndarray, real: np.ndarray, k: int = 5) -> dict:
    """Density and coverage (Naeem et al. 2020), as prdc computes them (strict <)."""
    fake, real = _as2d(fake, "fake"), _as2d(real, "real")
    radii = knn_radii(real, k)
    count = 0
    nearest_fake = np.empty(len(real))
    for i, d in _blocks(real, fake):
        count += int((d < radii[i:i + len(d), None]).sum())
        nearest_fake[i:i + len(d)] = d.min(axis=1)
    return {"density": float(count / (k * len(fake))), "coverage": float((nearest_fake < radii).mean())}


def inception_score(logits: np.ndarray, splits: int = 10, shuffle: bool = True, seed: int = 2020) -> dict:
    """Inception Score as torch-fidelity >= 0.4.0: logits [N, classes]; samples shuffled with RandomState(seed),
    softmax in float64, `splits` chunks sliced at i*N//splits, mean and std (ddof 0) of exp(mean KL(p(y|x) || p(y)))."""
    x = _as2d(logits, "logits")
    n = len(x)
    if not 1 <= splits <= n:
        raise GanqError(f"splits must be in [1, {n}], got {splits}")
    if shuffle:
        x = x[np.random.RandomState(seed).permutation(n)]
    with np.errstate(over="ignore"):  # logits of magnitude ~1e308: their differences overflow to -inf, p to 0
        log_p = x - x.max(axis=1, keepdims=True)
    log_p = log_p - np.log(np.exp(log_p).sum(axis=1, keepdims=True))
    p = np.exp(log_p)
    scores = []
    for i in range(splits):
        lo, hi = i * n // splits, (i + 1) * n // splits
        q = p[lo:hi].mean(axis=0, keepdims=True)
        with np.errstate(divide="ignore", invalid="ignore"):  # 0 * log 0 = 0 (logits so far apart that p underflows)
            kl = np.where(p[lo:hi] > 0, p[lo:hi] * (log_p[lo:hi] - np.log(q)), 0.0)
        scores.append(float(np.exp(kl.sum(axis=1).mean())))
    return {"inception_score": float(np.mean(scores)), "inception_score_std": float(np.std(scores))}


def gaussian_stats(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(mean [D], covariance [D, D]) in float64, the statistics FID compares."""
    x = _as2d(features, "features")
    return x.mean(axis=0), np.cov(x, rowvar=False)


def fid_from_stats(stats_fake, stats_real) -> float:
    """Fréchet distance of two Gaussians, with tr sqrt(S1 S2) from the eigenvalues as torch-fidelity does."""
    (mu1, s1), (mu2, s2) = stats_fake, stats_real
    diff = mu1 - mu2
    tr_covmean = np.sum(np.sqrt(np.linalg.eigvals(s1 @ s2).astype(np.complex128)).real)
    return float(diff @ diff + np.trace(s1) + np.trace(s2) - 2.0 * tr_covmean)


MATRIX_BOUND = 2 * 2 ** 30  # bytes of the largest float64 matrix a metric may build (FID's D x D or N1 x N2)


def fid(fake: np.ndarray, real: np.ndarray) -> float:
    """FID of two feature sets. With more feature dimensions than samples the D x D covariances are never built:
    S = A^T A with A the centred samples / sqrt(N - 1), so tr S = ||A||_F^2 and tr sqrt(S1 S2) is the nuclear norm
    of A1 A2^T (N1 x N2): the same number, within memory O(N1 N2 + N D). Either way the largest matrix must fit
    MATRIX_BOUND, else one GanqError says so."""
    fake, real = _as2d(fake, "fake"), _as2d(real, "real")
    (n1, d), n2 = fake.shape, len(real)
    low_rank = d > max(n1, n2)
    need = 8 * (n1 * n2 if low_rank else d * d)
    if need > MATRIX_BOUND:
        raise GanqError(f"FID of {n1} x {d} and {n2} x {d} features needs a {need / 2 ** 30:.1f} GiB matrix, more "
                        f"than the {MATRIX_BOUND / 2 ** 30:.0f} GiB bound; use fewer samples or narrower features")
    if not low_rank:
        return fid_from_stats(gaussian_stats(fake), gaussian_stats(real))
    mu1, mu2 = fake.mean(axis=0), real.mean(axis=0)
    a = (fake - mu1) / np.sqrt(max(n1 - 1, 1))
    b = (real - mu2) / np.sqrt(max(n2 - 1, 1))
    nuclear = float(np.linalg.svd(a @ b.T, compute_uv=False).sum())
    diff = mu1 - mu2
    return float(diff @ diff + np.einsum("ij,ij->", a, a) + np.einsum("ij,ij->", b, b) - 2.0 * nuclear)


def _mmd2_unbiased(k_xx, k_xy, k_yy) -> float:
    m = len(k_xx)
    sum_xx = k_xx.sum() - np.trace(k_xx)
    sum_yy = k_yy.sum() - np.trace(k_yy)
    return float((sum_xx + sum_yy) / (m * (m - 1)) - 2.0 * k_xy.sum() / (m * m))


def kid(fake: np.ndarray, real: np.ndarray, subsets: int = 100, subset_size: int = 1000, degree: int = 3,
        coef0: float = 1.0, gamma: float | None = None, seed: int = 2020) -> dict:
    """Kernel Inception Distance as torch-fidelity: polynomial kernel (x.y * gamma + coef0)^degree with
    gamma = 1/D, `subsets` subsets of `subset_size` drawn without replacement by RandomState(seed) (fake, then
    real, per subset), unbiased MMD^2; mean and std (ddof 0)."""
    fake, real = _as2d(fake, "fake"), _as2d(real, "real")
    if subset_size > min(len(fake), len(real)):
        raise GanqError(f"KID subset size {subset_size} is larger than the samples ({len(fake)} fake, "
                        f"{len(real)} real); lower --kid-subset-size")
    gamma = 1.0 / fake.shape[1] if gamma is None else gamma
    rng = np.random.RandomState(seed)
    mmds = np.empty(subsets)

    def kern(a, b):
        base = a @ b.T
        base *= gamma
        base += coef0
        out = base.copy()
        for _ in range(degree - 1):  # repeated products: far faster than a float power
            out *= base
        return out

    for s in range(subsets):
        f = fake[rng.choice(len(fake), subset_size, replace=False)]
        r = real[rng.choice(len(real), subset_size, replace=False)]
        mmds[s] = _mmd2_unbiased(kern(f, f), kern(f, r), kern(r, r))
    return {"kid": float(mmds.mean()), "kid_std": float(mmds.std())}


def _tol(dim: int) -> float:
    """Relative bound on float32's error in |a|^2 + |b|^2 - 2 a.b (in units of |a|^2 + |b|^2), with the usual
    sqrt(D) growth of a dot product's rounding error; decisions inside it are re-made in float64."""
    return 1e-5 * max(1.0, float(np.sqrt(dim / 64.0)))


TILE = 1024        # rows of a distance band (float32 [TILE, N]: 40 MB at N = 10,000)
CROSS_ROWS = 1024  # fake rows per fake-vs-real band
EXTRA = 3          # neighbours kept beyond the k-th, so that float32 near-ties stay in the list


_POOL = None


def _threads() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def _parallel(jobs):
    """Run [(fn, args), ...] on the thread pool (the kernels release the GIL) and wait for all."""
    global _POOL
    if len(jobs) == 1:
        fn, args = jobs[0]
        fn(*args)
        return
    if _POOL is None or _POOL[0] != os.getpid():  # a forked child inherits the pool but not its threads
        from concurrent.futures import ThreadPoolExecutor
        _POOL = (os.getpid(), ThreadPoolExecutor(_threads(), thread_name_prefix="ganq-knn"))
    for f in [_POOL[1].submit(fn, *args) for fn, args in jobs]:
        f.result()


def _check(x: np.ndarray, name: str) -> np.ndarray:
    """[N >= 2, D] float32 or float64, C-contiguous, without an upcast (float32 features stay float32)."""
    x = np.asarray(x)
    if x.ndim != 2 or x.shape[0] < 2:
        raise GanqError(f"{name}: expected features [N >= 2, D], got shape {x.shape}")
    if x.dtype not in (np.float32, np.float64):
        x = x.astype(np.float64)
    return np.ascontiguousarray(x)


class _Points:
    """Points in their own precision (float64 rechecks read them), a float32 view or copy for the products, and
    squared norms in float64 and float32."""

    def __init__(self, x: np.ndarray):
        from ganq.evaluate import _knn
        self.x = _check(x, "features")
        self.x32 = self.x if self.x.dtype == np.float32 else self.x.astype(np.float32)
        self.n64 = np.empty(len(self.x))
        _parallel([(_knn.norms64, (lo, hi, self.x, self.n64)) for lo, hi in _knn.split(len(self.x), _threads())])
        self.n32 = self.n64.astype(np.float32)

    def __len__(self):
        return len(self.x)


def _exact_pairs(a: _Points, ia: np.ndarray, b: _Points, ib: np.ndarray) -> np.ndarray:
    """float64 squared distances of the pairs (a[ia], b[ib])."""
    from ganq.evaluate import _knn
    ia, ib = np.ascontiguousarray(ia, np.int64), np.ascontiguousarray(ib, np.int64)
    out = np.empty(len(ia))
    _parallel([(_knn.exact_pairs, (lo, hi, a.x, a.n64, ia, b.x, b.n64, ib, out))
               for lo, hi in _knn.split(len(ia), _threads())])
    return out


def _exact_rows(a: _Points, ia: np.ndarray, b: _Points) -> np.ndarray:
    """float64 [len(ia), len(b)] squared distances of whole rows (b cast to float64 a slice at a time)."""
    out = np.empty((len(ia), len(b)))
    if len(ia) == 0:
        return out
    rows = a.x[ia].astype(np.float64)
    for s in range(0, len(b), 4096):
        cols = slice(s, min(s + 4096, len(b)))
        d2 = rows @ b.x[cols].astype(np.float64).T
        d2 *= -2.0
        d2 += a.n64[ia, None]
        d2 += b.n64[None, cols]
        out[:, cols] = np.maximum(d2, 0.0)
    return out


def _exact_row_batches(a: _Points, ia: np.ndarray, b: _Points, batch: int = 256):
    """(rows, float64 [len(rows), len(b)] squared distances) for the rows ia of a, a batch at a time."""
    for s in range(0, len(ia), batch):
        idx = ia[s:s + batch]
        yield idx, _exact_rows(a, idx, b)


def _tiles(n: int, tile: int) -> int:
    return -(-n // tile)


def manifold_steps(n_fake: int, n_real: int, real_radii_given: bool = False, tile: int = TILE,
                   cross_rows: int = CROSS_ROWS) -> int:
    """How many times manifold_metrics calls its progress callback (one per distance band)."""
    return (0 if real_radii_given else _tiles(n_real, tile)) + _tiles(n_fake, tile) + -(-n_fake // cross_rows)


def sq_radii(x: np.ndarray, ks: tuple[int, ...], points: _Points | None = None, tile: int = TILE,
             progress=None) -> np.ndarray:
    """float64 [len(ks), N]: squared distance of each point to its k-th nearest neighbour (itself excluded).

    One pass over the upper triangle of the float32 distance matrix in bands of rows (rows i0.., columns i0..),
    each band feeding the running top-(kmax + 1 + EXTRA) lists of its rows and of its columns; then every neighbour
    within float32's error of the kmax-th is recomputed in float64, so the radii equal the float64 computation's. A
    list too short to reach past that margin (many exact ties) sends its row to a full float64 row instead."""
    from ganq.evaluate import _knn
    p = points or _Points(x)
    n = len(p)
    for k in ks:
        if not 1 <= k < n:
            raise GanqError(f"k must be in [1, {n - 1}] for {n} samples, got {k}")
    kmax = max(ks)
    m = min(n, kmax + 1 + EXTRA)
    topv = np.full((n, m), np.inf, np.float32)
    topi = np.full((n, m), -1, np.int64)
    thr = np.full(n, np.inf, np.float32)
    threads = _threads()
    buf = np.empty(min(tile, n) * n, np.float32)
    for i0 in range(0, n, tile):
        rows = p.x32[i0:i0 + tile]
        b = len(rows)
        prod = buf[:b * (n - i0)].reshape(b, n - i0)  # rows i0..i0+b against columns i0..n
        np.matmul(rows, p.x32[i0:].T, out=prod)
        if b < n - i0:  # the transposed half (columns past the diagonal block) first: its thresholds live in thr
            _parallel([(_knn.topm_cols, (b + lo, b + hi, prod, i0, i0, p.n32, p.n32, topv, topi, thr))
                       for lo, hi in _knn.split(n - i0 - b, threads)])
        _parallel([(_knn.topm_rows, (lo, hi, prod, i0, i0, p.n32, p.n32, topv, topi))
                   for lo, hi in _knn.split(b, threads)])
        if progress:
            progress(1)
    tol = _tol(p.x.shape[1])
    slack = (2 * tol * (p.n64 + p.n64.max())).astype(np.float32)
    out = np.empty((len(ks), n))
    overflow = np.zeros(n, dtype=bool)
    ks_arr = np.asarray(ks, dtype=np.int64)
    _parallel([(_knn.exact_radii, (lo, hi, p.x, p.n64, topv, topi, slack, ks_arr, out, overflow))
               for lo, hi in _knn.split(n, threads)])
    todo = np.flatnonzero(overflow)
    for idx, d2 in _exact_row_batches(p, todo, p):
        d2[np.arange(len(idx)), idx] = 0.0
        out[:, idx] = np.partition(d2, ks_arr, axis=1)[:, ks_arr].T
    return out


def manifold_metrics(fake: np.ndarray, real: np.ndarray, k: int = 3, strict: bool = False,
                     realism_variant: str = "paper", dc_k: int = 5, real_sq_radii: np.ndarray | None = None,
                     tile: int = TILE, cross_rows: int = CROSS_ROWS, progress=None) -> dict:
    """Every k-NN metric from one pass over each distance matrix: the real-real and fake-fake ones by their upper
    triangles (running top-k lists for the radii), the fake-real one once, every reduction of a tile in one read of
    it (compiled kernels, ganq.evaluate._knn). Memory O(tile x N), never an N x N matrix.

    Products in float32; every decision within float32's error of its threshold is re-made in float64, and each
    realism maximum is recomputed in float64, so the results equal precision_recall, realism (both directions,
    averaged) and density_coverage.

    real_sq_radii: sq_radii(real, (k, dc_k)), to reuse across calls with the same real set.
    progress: called with 1 after each tile (manifold_steps says how many)."""
    from ganq.evaluate import _knn
    if realism_variant not in ("paper", "official"):
        raise GanqError(f"realism variant must be paper or official, got {realism_variant!r}")
    fake, real = _check(fake, "fake"), _check(real, "real")
    if fake.shape[1] != real.shape[1]:
        raise GanqError(f"feature widths differ: fake {fake.shape[1]}, real {real.shape[1]}")
    if max(len(fake), len(real)) >= 2 ** 24:
        raise GanqError("at most 16,777,215 samples per set (counts and indices are float32 in the kernels)")
    fp, rp = _Points(fake), _Points(real)
    nf, nr = len(fp), len(rp)
    r2_real, r2_dc = (sq_radii(real, (k, dc_k), rp, tile, progress) if real_sq_radii is None else real_sq_radii)
    (r2_fake,) = sq_radii(fake, (k,), fp, tile, progress)

    def weights(r2):
        # paper: max r/d = sqrt(max r^2/d^2); official: max r^2/d^2 with radii above the median dropped
        return np.where(r2 > np.median(r2), 0.0, r2) if realism_variant == "official" else r2

    w_real, w_fake = weights(r2_real), weights(r2_fake)
    f32 = [np.ascontiguousarray(v, np.float32) for v in (r2_real, r2_dc, w_real, r2_fake, w_fake)]
    tol = np.float32(_tol(fake.shape[1]))  # float32's error bound on a d2 is tol (|a|^2 + |b|^2)

    chunks = _threads()
    prec = np.empty(nf, np.int8)            # 2: inside the real manifold, 1: within float32's error, 0: outside
    dens_sure = np.empty(nf, np.int64)      # j with d2 < r2_dc_j beyond float32's error
    dens_band = np.empty(nf, np.int64)      # j with d2 within float32's error of r2_dc_j
    arg_fake = np.empty(nf, np.int64)       # realism argmax per fake
    col_counts = np.zeros((chunks, 4, nr), np.float32)  # per row chunk: recall sure/open, coverage sure/open
    col_best = np.full((chunks, nr), -1.0, np.float32)
    col_arg = np.zeros((chunks, nr), np.float32)        # row index, exact in float32 below 2^24
    scratch = np.empty((chunks, nr), np.float32)
    buf = np.empty(min(cross_rows, nf) * nr, np.float32)
    for i0 in range(0, nf, cross_rows):
        rows = fp.x32[i0:i0 + cross_rows]
        prod = buf[:len(rows) * nr].reshape(len(rows), nr)
        np.matmul(rows, rp.x32.T, out=prod)
        _parallel([(_knn.cross, (lo, hi, prod, i0, fp.n32, rp.n32, *f32, tol, prec, dens_sure, dens_band, arg_fake,
                                 col_counts[t], col_best[t], col_arg[t], scratch[t]))
                   for t, (lo, hi) in enumerate(_knn.split(len(rows), chunks))])
        if progress:
            progress(1)
    counts = col_counts.sum(axis=0)
    rec = np.where(counts[0] > 0, 2, np.where(counts[1] > 0, 1, 0))
    cover = np.where(counts[2] > 0, 2, np.where(counts[3] > 0, 1, 0))
    arg_real = col_arg[col_best.argmax(axis=0), np.arange(nr)].astype(np.int64)

    cmp = np.less if strict else np.less_equal
    # precision: rows with a decision within float32's error are decided in float64
    in_real = prec == 2
    for idx, d2 in _exact_row_batches(fp, np.flatnonzero(prec == 1), rp):
        in_real[idx] = cmp(d2, r2_real[None, :]).any(axis=1)
    # recall and coverage: real columns near their thresholds, in float64 against every fake sample
    covered, cov = rec == 2, cover == 2
    for idx, d2 in _exact_row_batches(rp, np.flatnonzero((rec == 1) | (cover == 1)), fp):
        covered[idx] = cmp(d2, r2_fake[None, :]).any(axis=1)
        cov[idx] = d2.min(axis=1) < r2_dc[idx]
    # density: rows holding a near-tie are counted again in float64
    density = dens_sure.copy()
    for idx, d2 in _exact_row_batches(fp, np.flatnonzero(dens_band), rp):
        density[idx] = np.count_nonzero(d2 < r2_dc[None, :], axis=1)
    # realism: each maximum recomputed in float64 at its (float32) argmax
    # (the same 1e-18 guard as realism(): on the distance for the paper's score, on its square for the official one)
    d2_fake = _exact_pairs(fp, np.arange(nf), rp, arg_fake)
    d2_real = _exact_pairs(fp, arg_real, rp, np.arange(nr))
    if realism_variant == "paper":
        realism_fake = np.sqrt(w_real[arg_fake]) / (np.sqrt(d2_fake) + 1e-18)
        realism_real = np.sqrt(w_fake[arg_real]) / (np.sqrt(d2_real) + 1e-18)
    else:
        realism_fake = w_real[arg_fake] / (d2_fake + 1e-18)
        realism_real = w_fake[arg_real] / (d2_real + 1e-18)
    return {"precision": float(in_real.mean()), "recall": float(covered.mean()),
            "realism_precision": float(realism_fake.mean()), "realism_recall": float(realism_real.mean()),
            "density": float(density.sum() / (dc_k * nf)), "coverage": float(cov.mean())}
