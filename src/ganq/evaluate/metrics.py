"""Metrics as pure numpy functions: features -> statistics -> score.

Argument order everywhere: (fake, real) -- the GENERATED set first, as torch-fidelity's features_1.
Features are numpy.ndarray([N, D]) of float32 or float64; distances are computed in float64, in row blocks.
"""

from __future__ import annotations

import numpy as np

from ganq.errors import GanqError

BLOCK = 2048


def _as2d(x: np.ndarray, name: str) -> np.ndarray:
    x = np.asarray(x)
    if x.ndim != 2 or x.shape[0] < 2:
        raise GanqError(f"{name}: expected features [N >= 2, D], got shape {x.shape}")
    return x.astype(np.float64, copy=False)


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
    log_p = x - x.max(axis=1, keepdims=True)
    log_p = log_p - np.log(np.exp(log_p).sum(axis=1, keepdims=True))
    p = np.exp(log_p)
    scores = []
    for i in range(splits):
        lo, hi = i * n // splits, (i + 1) * n // splits
        q = p[lo:hi].mean(axis=0, keepdims=True)
        scores.append(float(np.exp((p[lo:hi] * (log_p[lo:hi] - np.log(q))).sum(axis=1).mean())))
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


def fid(fake: np.ndarray, real: np.ndarray) -> float:
    return fid_from_stats(gaussian_stats(fake), gaussian_stats(real))


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


class _Points:
    """float64 points with their float32 copy and squared norms."""

    def __init__(self, x: np.ndarray):
        self.x64 = np.ascontiguousarray(x, dtype=np.float64)
        self.x32 = self.x64.astype(np.float32)
        self.n64 = np.einsum("ij,ij->i", self.x64, self.x64)
        self.n32 = self.n64.astype(np.float32)
        self.m32 = -2.0 * self.x32  # -2 b: exact in floating point, saves a pass per block

    def __len__(self):
        return len(self.x64)


def _d2_f32(a: _Points, rows: slice, b: _Points) -> np.ndarray:
    """float32 [rows, len(b)] squared distances (may be slightly negative near 0)."""
    d2 = a.x32[rows] @ b.m32.T
    d2 += a.n32[rows, None]
    d2 += b.n32[None, :]
    return d2


def _exact_pairs(a: _Points, ia: np.ndarray, b: _Points, ib: np.ndarray) -> np.ndarray:
    """float64 squared distances of the pairs (a[ia], b[ib]), by the same expansion as the float64 path."""
    out = np.empty(len(ia))
    for s in range(0, len(ia), 4096):
        i, j = ia[s:s + 4096], ib[s:s + 4096]
        out[s:s + 4096] = a.n64[i] + b.n64[j] - 2.0 * np.einsum("ij,ij->i", a.x64[i], b.x64[j])
    return np.maximum(out, 0.0)


def _exact_rows(a: _Points, ia: np.ndarray, b: _Points) -> np.ndarray:
    """float64 [len(ia), len(b)] squared distances of whole rows."""
    if len(ia) == 0:
        return np.zeros((0, len(b)))
    d2 = a.x64[ia] @ b.x64.T
    d2 *= -2.0
    d2 += a.n64[ia, None]
    d2 += b.n64[None, :]
    return np.maximum(d2, 0.0)


def sq_radii(x: np.ndarray, ks: tuple[int, ...], points: _Points | None = None) -> np.ndarray:
    """float64 [len(ks), N]: squared distance of each point to its k-th nearest neighbour (itself excluded).

    float32 products find, per row, every neighbour that can be among the kmax + 1 nearest; those few distances are
    then computed in float64, so the radii equal the float64 computation's."""
    x = _as2d(x, "features")
    for k in ks:
        if not 1 <= k < len(x):
            raise GanqError(f"k must be in [1, {len(x) - 1}] for {len(x)} samples, got {k}")
    p = points or _Points(x)
    kmax, tol = max(ks), _tol(x.shape[1])
    out = np.empty((len(ks), len(p)))
    nmax = p.n32.max()
    for i in range(0, len(p), BLOCK):
        rows = slice(i, min(i + BLOCK, len(p)))
        d2 = _d2_f32(p, rows, p)
        vk = np.partition(d2, kmax, axis=1)[:, kmax]
        limit = vk + 2 * tol * (p.n32[rows] + nmax)  # any true kmax+1-nearest has its float32 value below this
        rr, cc = np.nonzero(d2 <= limit[:, None])
        exact = _exact_pairs(p, rr + i, p, cc)
        exact[rr + i == cc] = 0.0
        order = np.lexsort((exact, rr))
        rr, exact = rr[order], exact[order]
        starts = np.searchsorted(rr, np.arange(d2.shape[0]))
        for n, k in enumerate(ks):
            out[n, rows] = exact[starts + k]
    return out


def manifold_metrics(fake: np.ndarray, real: np.ndarray, k: int = 3, strict: bool = False,
                     realism_variant: str = "paper", dc_k: int = 5, real_sq_radii: np.ndarray | None = None) -> dict:
    """Every k-NN metric from one pass over each distance matrix (real-real, fake-fake, fake-real), streamed in row
    blocks (memory O(block x N)). Products in float32; every decision within float32's error of its threshold is
    re-made in float64, and each realism maximum is recomputed in float64, so the results equal precision_recall,
    realism (both directions, averaged) and density_coverage.

    real_sq_radii: sq_radii(real, (k, dc_k)), to reuse across calls with the same real set."""
    if realism_variant not in ("paper", "official"):
        raise GanqError(f"realism variant must be paper or official, got {realism_variant!r}")
    fake, real = _as2d(fake, "fake"), _as2d(real, "real")
    if fake.shape[1] != real.shape[1]:
        raise GanqError(f"feature widths differ: fake {fake.shape[1]}, real {real.shape[1]}")
    fp, rp = _Points(fake), _Points(real)
    r2_real, r2_dc = (sq_radii(real, (k, dc_k), rp) if real_sq_radii is None else real_sq_radii)
    (r2_fake,) = sq_radii(fake, (k,), fp)

    def weights(r2):
        # paper: max r/d = sqrt(max r^2/d^2); official: max r^2/d^2 with radii above the median dropped
        return np.where(r2 > np.median(r2), 0.0, r2) if realism_variant == "official" else r2

    w_real, w_fake = weights(r2_real), weights(r2_fake)
    r2_real32, r2_dc32, r2_fake32 = (v.astype(np.float32) for v in (r2_real, r2_dc, r2_fake))
    w_real32, w_fake32 = w_real.astype(np.float32), w_fake.astype(np.float32)
    tol = _tol(fake.shape[1])
    tau_all = np.float32(tol * (fp.n32.max() + rp.n32.max()))

    margin_fake = np.empty(len(fp), np.float32)       # min_j d2 - r2_real_j
    tau_fake = np.empty(len(fp), np.float32)
    margin_real = np.full(len(rp), np.inf, np.float32)  # min_i d2 - r2_fake_i
    nearest = np.full(len(rp), np.inf, np.float32)
    arg_fake = np.empty(len(fp), np.int64)             # realism argmax per fake
    best_real = np.full(len(rp), -1.0, np.float32)
    arg_real = np.zeros(len(rp), np.int64)
    density_sure, amb_i, amb_j = 0, [], []
    for i in range(0, len(fp), BLOCK):
        rows = slice(i, min(i + BLOCK, len(fp)))
        d2 = _d2_f32(fp, rows, rp)
        tau = np.float32(tol * (fp.n32[rows].max() + rp.n32.max()))
        t = np.subtract(d2, r2_real32[None, :])
        margin_fake[rows] = t.min(axis=1)
        tau_fake[rows] = tau
        np.subtract(d2, r2_dc32[None, :], out=t)
        density_sure += int(np.count_nonzero(t < -tau))
        band = np.abs(t, out=t) <= tau
        hit = np.flatnonzero(band.any(axis=1))  # a fast reduction first: few rows hold near-ties
        bi, bj = np.nonzero(band[hit])
        amb_i.append(hit[bi] + i)
        amb_j.append(bj)
        np.subtract(d2, r2_fake32[rows, None], out=t)
        np.minimum(margin_real, t.min(axis=0), out=margin_real)
        np.minimum(nearest, d2.min(axis=0), out=nearest)
        np.maximum(d2, np.float32(1e-30), out=d2)
        np.divide(w_real32[None, :], d2, out=t)
        arg_fake[rows] = t.argmax(axis=1)
        np.divide(w_fake32[rows, None], d2, out=t)
        col = t.argmax(axis=0)
        val = t[col, np.arange(t.shape[1])]
        better = val > best_real
        best_real[better], arg_real[better] = val[better], col[better] + i

    cmp = np.less if strict else np.less_equal
    # precision: rows whose nearest margin is within float32's error are decided in float64
    in_real = margin_fake < 0 if strict else margin_fake <= 0
    amb = np.flatnonzero(np.abs(margin_fake) <= tau_fake)
    for s in range(0, len(amb), 256):
        idx = amb[s:s + 256]
        in_real[idx] = cmp(_exact_rows(fp, idx, rp), r2_real[None, :]).any(axis=1)
    # recall and coverage: real columns near their thresholds, in float64 against every fake sample
    covered = margin_real < 0 if strict else margin_real <= 0
    cov = nearest < r2_dc32
    amb_cols = np.flatnonzero((np.abs(margin_real) <= tau_all) | (np.abs(nearest - r2_dc32) <= tau_all))
    for s in range(0, len(amb_cols), 256):
        idx = amb_cols[s:s + 256]
        d2 = _exact_rows(rp, idx, fp)
        covered[idx] = cmp(d2, r2_fake[None, :]).any(axis=1)
        cov[idx] = d2.min(axis=1) < r2_dc[idx]
    # density: pairs near their radius, in float64
    ai, aj = np.concatenate(amb_i), np.concatenate(amb_j)
    density_count = density_sure + int(np.count_nonzero(_exact_pairs(fp, ai, rp, aj) < r2_dc[aj]))
    # realism: each maximum recomputed in float64 at its (float32) argmax
    realism_fake = w_real[arg_fake] / np.maximum(_exact_pairs(fp, np.arange(len(fp)), rp, arg_fake), 1e-300)
    realism_real = w_fake[arg_real] / np.maximum(_exact_pairs(fp, arg_real, rp, np.arange(len(rp))), 1e-300)
    if realism_variant == "paper":
        realism_fake, realism_real = np.sqrt(realism_fake), np.sqrt(realism_real)
    return {"precision": float(in_real.mean()), "recall": float(covered.mean()),
            "realism_precision": float(realism_fake.mean()), "realism_recall": float(realism_real.mean()),
            "density": float(density_count / (dc_k * len(fake))), "coverage": float(cov.mean())}
