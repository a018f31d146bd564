"""Metrics: closed-form answers, properties, and the reference implementations (prdc, torch-fidelity) as oracles."""

import numpy as np
import pytest

from ganq.errors import GanqError
from ganq.evaluate import metrics as M


def _clouds(n=300, d=16, shift=0.0, seed=0):
    rng = np.random.default_rng(seed)
    return rng.standard_normal((n, d)).astype(np.float32) + np.float32(shift)


# --- closed forms ----------------------------------------------------------------------------------------------

def test_inception_score_closed_forms():
    assert M.inception_score(np.zeros((100, 10)))["inception_score"] == pytest.approx(1.0)  # uniform predictions
    confident = np.full((1000, 10), -50.0)
    confident[np.arange(1000), np.arange(1000) % 10] = 50.0  # balanced one-hot
    r = M.inception_score(confident, shuffle=False)
    assert r["inception_score"] == pytest.approx(10.0, rel=1e-9) and r["inception_score_std"] == pytest.approx(0.0, abs=1e-9)


def test_fid_closed_forms():
    x = _clouds()
    assert M.fid(x, x) == pytest.approx(0.0, abs=1e-6)
    mu = np.zeros(3)
    # two Gaussians with the same covariance: FID = |mu1 - mu2|^2
    assert M.fid_from_stats((mu + 2, np.eye(3)), (mu, np.eye(3))) == pytest.approx(12.0)
    # zero means, covariances a^2 I and b^2 I: FID = D (a - b)^2
    assert M.fid_from_stats((mu, 4 * np.eye(3)), (mu, np.eye(3))) == pytest.approx(3.0)


def test_precision_recall_closed_forms():
    x = _clouds()
    assert M.precision_recall(x, x) == {"precision": 1.0, "recall": 1.0}
    far = M.precision_recall(x, _clouds(shift=1000.0))
    assert far == {"precision": 0.0, "recall": 0.0}
    assert M.density_coverage(x, _clouds(shift=1000.0)) == {"density": 0.0, "coverage": 0.0}
    # mode collapse: every fake sample within 1e-3 of one real sample -> precision 1, recall 1/N (that sample)
    collapsed = x[0] + 1e-3 * _clouds(20, 16, 0.0, 9)
    r = M.precision_recall(collapsed, x)
    assert r["precision"] == 1.0 and r["recall"] == pytest.approx(1 / len(x))


def test_knn_radii_closed_form():
    pts = np.array([[0.0], [1.0], [3.0], [7.0]])
    assert M.knn_radii(pts, k=1).tolist() == [1.0, 1.0, 2.0, 4.0]
    assert M.knn_radii(pts, k=2).tolist() == [3.0, 2.0, 3.0, 6.0]


def test_realism_closed_form():
    real = np.array([[0.0], [1.0], [3.0], [7.0]])
    radii = M.knn_radii(real, k=1)  # 1, 1, 2, 4
    fake = np.array([[2.0], [100.0]])
    want = [max(r / abs(2.0 - c) for r, c in zip(radii, real[:, 0])),
            max(r / abs(100.0 - c) for r, c in zip(radii, real[:, 0]))]
    assert np.allclose(M.realism(fake, real, k=1), want)
    # official: squared, radii above the median (1.5) dropped -> only the two radius-1 balls count
    off = M.realism(fake, real, k=1, variant="official")
    assert np.allclose(off, [1.0, 1 / 99 ** 2])


def test_inclusive_vs_strict_membership():
    real = np.array([[0.0], [1.0], [2.0], [3.0]])
    fake = np.array([[4.0], [5.0], [6.0], [7.0]])
    # radius of real 3.0 (k=1) is 1.0; fake 4.0 lies exactly on that sphere
    assert M.precision_recall(fake, real, k=1)["precision"] == 0.25
    assert M.precision_recall(fake, real, k=1, strict=True)["precision"] == 0.0


def test_bad_shapes():
    with pytest.raises(GanqError, match="expected features"):
        M.precision_recall(np.zeros(5), np.zeros((5, 2)))
    with pytest.raises(GanqError, match="k must be"):
        M.knn_radii(np.zeros((3, 2)), k=3)
    with pytest.raises(GanqError, match="subset size"):
        M.kid(np.zeros((10, 2)), np.zeros((10, 2)))


# --- oracles ---------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("seed", [0, 1])
def test_against_prdc(seed):
    import prdc  # the reference implementation is a dev dependency: missing, this test fails rather than skips
    fake, real = _clouds(400, 8, 0.3, seed), _clouds(500, 8, 0.0, seed + 10)
    want = prdc.compute_prdc(real_features=real, fake_features=fake, nearest_k=5)
    got = {**M.precision_recall(fake, real, k=5, strict=True), **M.density_coverage(fake, real, k=5)}
    for key in ("precision", "recall", "density", "coverage"):
        assert got[key] == pytest.approx(want[key], abs=1e-12), key


def _tf():
    torch = pytest.importorskip("torch")  # torch-fidelity needs torch (the train extra); with it, it must be there
    import torch_fidelity  # noqa: F401
    return torch


def test_inception_score_against_torch_fidelity():
    torch = _tf()
    from torch_fidelity.metric_isc import isc_features_to_metric

    logits = np.random.default_rng(3).standard_normal((1000, 10)).astype(np.float32) * 3
    for shuffle in (True, False):
        want = isc_features_to_metric(torch.from_numpy(logits), splits=10, shuffle=shuffle, rng_seed=2020)
        got = M.inception_score(logits, shuffle=shuffle)
        assert got["inception_score"] == pytest.approx(want["inception_score_mean"], rel=1e-10)
        assert got["inception_score_std"] == pytest.approx(want["inception_score_std"], rel=1e-7)


def test_fid_and_precision_recall_against_torch_fidelity():
    torch = _tf()
    from torch_fidelity.metric_fid import fid_features_to_statistics, fid_statistics_to_metric
    from torch_fidelity.metric_prc import calculate_precision_recall_full

    fake, real = _clouds(600, 12, 0.5, 4), _clouds(700, 12, 0.0, 5)
    want = fid_statistics_to_metric(fid_features_to_statistics(torch.from_numpy(fake.astype(np.float64))),
                                    fid_features_to_statistics(torch.from_numpy(real.astype(np.float64))), False)
    assert M.fid(fake, real) == pytest.approx(want["frechet_inception_distance"], rel=1e-6)
    p, r = calculate_precision_recall_full(torch.from_numpy(fake.astype(np.float64)),
                                           torch.from_numpy(real.astype(np.float64)), neighborhood=3)
    got = M.precision_recall(fake, real, k=3)
    assert (got["precision"], got["recall"]) == pytest.approx((p, r), abs=1e-6)  # torch-fidelity means in float32


def test_kid_against_torch_fidelity():
    torch = _tf()
    from torch_fidelity.metric_kid import kid_features_to_metric

    fake, real = _clouds(1200, 16, 0.2, 6), _clouds(1100, 16, 0.0, 7)
    want = kid_features_to_metric(torch.from_numpy(fake.astype(np.float64)), torch.from_numpy(real.astype(np.float64)),
                                  kid_subsets=20, kid_subset_size=500, kid_degree=3, kid_gamma=None, kid_coef0=1,
                                  rng_seed=2020, verbose=False, kid_kernel="poly", kid_kernel_poly_degree=3,
                                  kid_kernel_poly_gamma=None, kid_kernel_poly_coef0=1)
    got = M.kid(fake, real, subsets=20, subset_size=500)
    assert got["kid"] == pytest.approx(want["kernel_inception_distance_mean"], rel=1e-6)
    assert got["kid_std"] == pytest.approx(want["kernel_inception_distance_std"], rel=1e-6)


def test_argument_order_is_fake_then_real():
    fake, real = _clouds(200, 4, 0.0, 1)[:20], _clouds(200, 4, 0.0, 2)
    pr = M.precision_recall(fake, real)
    swapped = M.precision_recall(real, fake)
    assert pr["precision"] == swapped["recall"] and pr["recall"] == swapped["precision"]
    assert pr["precision"] > pr["recall"]  # 20 fakes inside the real cloud cover little of it


@pytest.mark.parametrize("strict,variant", [(False, "paper"), (True, "official")])
def test_manifold_metrics_equal_the_single_ones(strict, variant):
    fake, real = _clouds(300, 6, 0.4, 11), _clouds(350, 6, 0.0, 12)
    got = M.manifold_metrics(fake, real, k=3, strict=strict, realism_variant=variant, dc_k=5)
    pr = M.precision_recall(fake, real, 3, strict)
    assert (got["precision"], got["recall"]) == (pr["precision"], pr["recall"])
    assert {k: got[k] for k in ("density", "coverage")} == M.density_coverage(fake, real, 5)
    assert got["realism_precision"] == pytest.approx(M.realism(fake, real, 3, variant).mean(), rel=1e-12)
    assert got["realism_recall"] == pytest.approx(M.realism(real, fake, 3, variant).mean(), rel=1e-12)


# --- the streaming k-NN pass (numba kernels, float32 products re-checked in float64) --------------------------------

def _single(fake, real, k, strict, variant, dc_k=5):
    """The float64 one-metric-at-a-time functions: what manifold_metrics must equal."""
    return {**M.precision_recall(fake, real, k, strict), **M.density_coverage(fake, real, dc_k),
            "realism_precision": float(M.realism(fake, real, k, variant).mean()),
            "realism_recall": float(M.realism(real, fake, k, variant).mean())}


def _assert_same(got, want):
    for key in ("precision", "recall", "density", "coverage"):
        assert got[key] == want[key], key
    for key in ("realism_precision", "realism_recall"):
        assert got[key] == pytest.approx(want[key], rel=1e-12), key


@pytest.mark.parametrize("tile,cross_rows", [(64, 50), (100, 333), (1000, 7)])
def test_manifold_metrics_in_many_bands(tile, cross_rows):
    # bands smaller than the sets: the running top-k lists merge across bands, rows and columns split over threads
    fake, real = _clouds(420, 10, 0.3, 21), _clouds(390, 10, 0.0, 22)
    for strict, variant in ((False, "paper"), (True, "official")):
        got = M.manifold_metrics(fake, real, 3, strict, variant, 5, tile=tile, cross_rows=cross_rows)
        _assert_same(got, _single(fake, real, 3, strict, variant))


def test_sq_radii_with_more_ties_than_the_list_holds():
    # 30 copies of one point: its top-(k+1+EXTRA) list fills with zeros and overflows -> full float64 rows
    x = np.vstack([np.zeros((30, 3)), _clouds(200, 3, 5.0, 23).astype(np.float64)])
    got = M.sq_radii(x, (3, 5), tile=64)
    want = np.stack([M.knn_radii(x, 3), M.knn_radii(x, 5)]) ** 2  # (sqrt then square: equal to rounding)
    np.testing.assert_allclose(got, want, rtol=1e-12, atol=0)
    assert np.all(got[:, :30] == 0.0)


from hypothesis import given, settings  # noqa: E402  (a dev dependency: missing, this file fails rather than skips)
from hypothesis import strategies as st  # noqa: E402


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 2 ** 31 - 1), side=st.integers(2, 12), n_fake=st.integers(12, 90),
       n_real=st.integers(12, 90), strict=st.booleans(), tile=st.sampled_from([16, 33, 4096]))
def test_manifold_metrics_on_integer_grids(seed, side, n_fake, n_real, strict, tile):
    # small integer grids: exact ties and duplicates everywhere, every distance exact in float32 and float64, so
    # each decision that sits exactly on a radius must come out as the float64 functions make it
    rng = np.random.default_rng(seed)
    fake = rng.integers(0, side, (n_fake, 3)).astype(np.float32)
    real = rng.integers(0, side, (n_real, 3)).astype(np.float32)
    got = M.manifold_metrics(fake, real, 3, strict, "paper", 5, tile=tile, cross_rows=tile)
    _assert_same(got, _single(fake, real, 3, strict, "paper"))
    np.testing.assert_allclose(M.sq_radii(real, (3, 5), tile=tile),
                               np.stack([M.knn_radii(real, 3), M.knn_radii(real, 5)]) ** 2, rtol=1e-12, atol=0)


def test_manifold_metrics_against_prdc_and_torch_fidelity():
    # the function `ganq evaluate` uses, on float32 features, against both references on the same features
    import prdc
    fake, real = _clouds(700, 24, 0.2, 31), _clouds(650, 24, 0.0, 32)
    got = M.manifold_metrics(fake, real, k=5, strict=True, dc_k=5, tile=128, cross_rows=100)
    want = prdc.compute_prdc(real_features=real, fake_features=fake, nearest_k=5)
    for key in ("precision", "recall", "density", "coverage"):
        assert got[key] == pytest.approx(want[key], abs=1e-12), key
    torch = _tf()
    from torch_fidelity.metric_prc import calculate_precision_recall_full
    p, r = calculate_precision_recall_full(torch.from_numpy(fake), torch.from_numpy(real), neighborhood=3)
    got = M.manifold_metrics(fake, real, k=3, tile=128, cross_rows=100)
    assert (got["precision"], got["recall"]) == pytest.approx((p, r), abs=1e-6)


def test_manifold_metrics_in_a_forked_child():
    # the kernels' thread pool is per process: a child forked after the parent used it must not wait on dead threads
    import multiprocessing as mp
    fake, real = _clouds(300, 8, 0.2, 41), _clouds(280, 8, 0.0, 42)
    want = M.manifold_metrics(fake, real, tile=64, cross_rows=64)  # the parent's pool now exists
    ctx = mp.get_context("fork")
    with ctx.Pool(1) as pool:
        got = pool.apply_async(M.manifold_metrics, (fake, real), {"tile": 64, "cross_rows": 64}).get(timeout=120)
    assert got == want


def test_inception_score_of_logits_so_far_apart_that_probabilities_underflow():
    """Logits of magnitude 1e308 (finite; their differences are not) make some p(y|x) exactly 0: IS stays finite (0 log 0 = 0), one-hot
    predictions of 10 balanced classes give IS = 10."""
    from ganq.evaluate.metrics import inception_score

    x = np.full((1000, 10), -1e308)
    x[np.arange(1000), np.arange(1000) % 10] = 1e308  # x - max overflows to -inf
    r = inception_score(x, shuffle=False)
    assert np.isfinite(r["inception_score"]) and abs(r["inception_score"] - 10.0) < 1e-9
