"""Compiled (numba) kernels for the k-NN metrics: one read of each float32 distance tile does every reduction.

A tile is P = A @ B.T from BLAS (float32); the kernels form d2 = |a|^2 + |b|^2 - 2 P on the fly, so the distances are
never stored as an array of their own. Decisions that float32 cannot make (within `tol` of a threshold) are left
to the float64 code in metrics.py; these kernels only report where they are.
"""

from __future__ import annotations

import numba as nb
import numpy as np

_OPTS = dict(cache=True, nogil=True, error_model="numpy")
# reassociation lets LLVM vectorise the float32 counts (exact integers, in any order); contraction allows FMA, which
# only makes a float32 distance more exact. No flag that assumes away inf or NaN.
_FAST = {"reassoc", "nsz", "contract"}


@nb.njit(**_OPTS)
def _insert(vals, idx, v, j):
    """Insert v (with index j) into the ascending list vals, dropping its last entry."""
    p = len(vals) - 1
    while p > 0 and vals[p - 1] > v:
        vals[p] = vals[p - 1]
        idx[p] = idx[p - 1]
        p -= 1
    vals[p] = v
    idx[p] = j


_BLOCK = 32  # columns whose values are first only counted below the threshold (a vectorised pass), then inserted
# Inner loops index 0-based views (pr[c], not p[r, col0 + c]): numba's negative-index wraparound on an index it
# cannot prove non-negative keeps LLVM from vectorising the loop (4x slower).


@nb.njit(fastmath=_FAST, **_OPTS)
def topm_rows(lo, hi, p, row0, col0, n_row, n_col, topv, topi):
    """Merge rows lo..hi of the tile into each row's ascending top-M list (running top-M per point)."""
    cols = p.shape[1]
    m = topv.shape[1]
    two, one, zero = np.float32(2.0), np.float32(1.0), np.float32(0.0)
    nc = n_col[col0:col0 + cols]
    for r in range(lo, hi):
        g = row0 + r
        vals, idx = topv[g], topi[g]
        na = n_row[g]
        pr = p[r]
        thr = vals[m - 1]
        for c0 in range(0, cols, _BLOCK):
            c1 = min(cols, c0 + _BLOCK)
            below = zero
            for c in range(c0, c1):
                below += one if na + nc[c] - two * pr[c] < thr else zero
            if below > zero:
                for c in range(c0, c1):
                    v = na + nc[c] - two * pr[c]
                    if v < thr:
                        _insert(vals, idx, v, col0 + c)
                        thr = vals[m - 1]


@nb.njit(fastmath=_FAST, **_OPTS)
def topm_cols(lo, hi, p, row0, col0, n_row, n_col, topv, topi, thr):
    """Merge columns lo..hi of the tile into the column points' top-M lists (the transposed half of a symmetric
    tile). thr: each point's current M-th value, kept beside topv so that the scan reads it contiguously."""
    rows = p.shape[0]
    m = topv.shape[1]
    width = hi - lo
    two, one, zero = np.float32(2.0), np.float32(1.0), np.float32(0.0)
    nc = n_col[col0 + lo:col0 + hi]
    th = thr[col0 + lo:col0 + hi]
    for r in range(rows):
        na = n_row[row0 + r]
        pr = p[r, lo:hi]
        for c0 in range(0, width, _BLOCK):
            c1 = min(width, c0 + _BLOCK)
            below = zero
            for c in range(c0, c1):
                below += one if na + nc[c] - two * pr[c] < th[c] else zero
            if below > zero:
                for c in range(c0, c1):
                    v = na + nc[c] - two * pr[c]
                    if v < th[c]:
                        g = col0 + lo + c
                        _insert(topv[g], topi[g], v, row0 + r)
                        th[c] = topv[g, m - 1]


@nb.njit(**_OPTS)
def _dot64(a, b):
    s = 0.0
    for t in range(a.shape[0]):
        s += np.float64(a[t]) * np.float64(b[t])
    return s


@nb.njit(**_OPTS)
def norms64(lo, hi, x, out):
    """out[i] = |x_i|^2 in float64, for rows lo..hi."""
    for i in range(lo, hi):
        out[i] = _dot64(x[i], x[i])


@nb.njit(**_OPTS)
def exact_radii(lo, hi, x, n64, topv, topi, slack, ks, out, overflow):
    """Squared k-th neighbour distances in float64 from each point's float32 top-M list, for rows lo..hi.

    Every neighbour whose float32 value is within slack of the kmax-th is recomputed in float64 (the point itself is
    0); the list must reach past that band, else overflow[i] is set and the row is left to the caller."""
    m = topv.shape[1]
    kmax = 0
    for k in ks:
        kmax = max(kmax, k)
    d = np.empty(m)
    for i in range(lo, hi):
        limit = topv[i, kmax] + slack[i]
        if topv[i, m - 1] <= limit:
            overflow[i] = True
            continue
        cnt = 0
        while cnt < m and topv[i, cnt] <= limit:
            cnt += 1
        for c in range(cnt):
            j = topi[i, c]
            d[c] = 0.0 if j == i else max(n64[i] + n64[j] - 2.0 * _dot64(x[i], x[j]), 0.0)
        e = np.sort(d[:cnt])
        for n in range(len(ks)):
            out[n, i] = e[ks[n]]


@nb.njit(fastmath=_FAST, **_OPTS)
def cross(lo, hi, p, row0, n_fake, n_real, r2_real, r2_dc, w_real, r2_fake, w_fake, tol,
          prec, dens_sure, dens_band, arg_fake, col_counts, col_best, col_arg, scratch):
    """Every reduction of rows lo..hi of a fake-vs-real tile (rows: fake row0.., columns: all real), one read of it.
    Each thread passes its own col_counts [4, n_real], col_best, col_arg and scratch.

    A decision d2 < r2 is sure when it holds by more than float32's error t = tol (|a|^2 + |b|^2), open when within
    it (the caller re-makes those in float64).
    Per fake row: prec (2 inside some real ball of radius r2_real, 1 open, 0 outside), density counts (sure, open)
    against r2_dc, argmax of w_real / d2 (realism). Per real column, into the chunk's own col_* rows: counts of fake
    balls (radius r2_fake) that surely hold it and that may (recall), of fake samples surely and maybe closer than
    r2_dc (coverage); max and argmax of w_fake / d2.
    Counts are float32 (exact below 2^24) and updates are selects, so that LLVM vectorises the inner loop."""
    cols = p.shape[1]
    two, one, zero = np.float32(2.0), np.float32(1.0), np.float32(0.0)
    tiny = np.float32(1e-30)
    rec_sure, rec_open = col_counts[0], col_counts[1]
    cov_sure, cov_open = col_counts[2], col_counts[3]
    cb, ca, q = col_best, col_arg, scratch
    qi = q.view(np.int32)  # w / d2 >= 0, so its bits order as the values do
    for r in range(lo, hi):
        g = row0 + r
        pr = p[r]
        na, rf, wf = n_fake[g], r2_fake[g], w_fake[g]
        gf = np.float32(g)
        p_sure, p_open, d_sure, d_open = zero, zero, zero, zero
        for j in range(cols):
            nab = na + n_real[j]
            d = nab - two * pr[j]
            t = tol * nab
            e = d - r2_real[j]
            p_sure += one if e < -t else zero
            p_open += one if e <= t else zero
            e = d - r2_dc[j]
            d_sure += one if e < -t else zero
            d_open += one if e <= t else zero
            cov_sure[j] += one if e < -t else zero
            cov_open[j] += one if e <= t else zero
            e = d - rf
            rec_sure[j] += one if e < -t else zero
            rec_open[j] += one if e <= t else zero
        for j in range(cols):  # realism in a loop of its own: with it in the first one, LLVM vectorises neither
            d = na + n_real[j] - two * pr[j]
            inv = one / max(d, tiny)
            q[j] = w_real[j] * inv
            v = wf * inv
            better = v > cb[j]
            cb[j] = v if better else cb[j]
            ca[j] = gf if better else ca[j]
        prec[g] = 2 if p_sure > 0 else (1 if p_open > 0 else 0)
        dens_sure[g] = np.int64(d_sure)
        dens_band[g] = np.int64(d_open - d_sure)
        top = np.int32(-1)
        for j in range(cols):
            top = max(top, qi[j])
        for j in range(cols):
            if qi[j] == top:
                arg_fake[g] = j
                break


@nb.njit(**_OPTS)
def exact_pairs(lo, hi, xa, na, ia, xb, nb_, ib, out):
    """out[s] = float64 squared distance of the pair (xa[ia[s]], xb[ib[s]]), for s in lo..hi."""
    for s in range(lo, hi):
        i, j = ia[s], ib[s]
        out[s] = max(na[i] + nb_[j] - 2.0 * _dot64(xa[i], xb[j]), 0.0)


def split(n: int, parts: int) -> list[tuple[int, int]]:
    """parts near-equal (lo, hi) ranges of range(n), none empty."""
    parts = max(1, min(parts, n))
    bounds = [n * i // parts for i in range(parts + 1)]
    return [(bounds[i], bounds[i + 1]) for i in range(parts)]


def _warm():
    """Load (or, on first use after install, compile) every kernel for float32 features, at import: numba's own
    start-up and the cache loads cost about 0.7 s, paid here once rather than inside the first metric call, like
    the import of any library with compiled code. float64 features load their variants on first use."""
    f32, n = np.float32, 8
    x = np.zeros((n, 2), f32)
    v, z, i64 = np.zeros(n, f32), np.zeros(n), np.zeros(n, np.int64)
    p = np.zeros((n, n), f32)
    topv, topi = np.full((n, 3), np.inf, f32), np.zeros((n, 3), np.int64)
    topm_rows(0, n, p, 0, 0, v, v, topv, topi)
    topm_cols(0, n, p, 0, 0, v, v, topv, topi, np.full(n, np.inf, f32))
    norms64(0, n, x, z)
    exact_radii(0, n, x, z, topv, topi, v, np.array([1]), np.zeros((1, n)), np.zeros(n, np.bool_))
    cross(0, n, p, 0, v, v, v, v, v, v, v, f32(1e-5), np.zeros(n, np.int8), i64, i64.copy(), i64.copy(),
          np.zeros((4, n), f32), v.copy(), v.copy(), v.copy())
    exact_pairs(0, n, x, z, i64, x, z, i64, z.copy())


_warm()
