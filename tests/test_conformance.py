"""One conformance test for every registered backend, against the numpy reference.

Each backend is fed the same problems in its own array library; primitives and whole
solves must agree with ``backend="numpy"``. Backends whose dependencies are missing
skip; those needing a GPU skip without one.
"""

import numpy as np
import pytest

import sinklabel
from sinklabel._arrays import to_host
from sinklabel.backends import BACKENDS, BackendNotAvailable, get_backend
from sinklabel.backends._base import Backend
from sinklabel.problems import make_scores

REF = get_backend("numpy")


def _backend(name):
    try:
        return get_backend(name)
    except BackendNotAvailable as exc:
        pytest.skip(str(exc))


def to_library(x, library):
    if library == "numpy":
        return x
    if library == "torch":
        import torch

        return torch.from_numpy(np.ascontiguousarray(x))
    if library == "cupy":
        cupy = pytest.importorskip("cupy")
        return cupy.asarray(x)
    raise AssertionError(library)


host = to_host  # any backend's array on the host (sinklabel._arrays: the one conversion)


NAMES = sorted(BACKENDS)
PROBLEMS = [("realistic", 301, 7), ("collapsed", 256, 13), ("neginf", 199, 5)]


def curvature_ref(Kmat, v, c, thr):
    """``sum_i c_i p_i p_i^T`` over each row's ``p_ik > thr`` (``> 1 / HESSIAN_CAP`` in rows
    with more than HESSIAN_CAP such entries), row by row in float64."""
    from sinklabel.backends._base import HESSIAN_CAP

    W = np.zeros((Kmat.shape[1],) * 2)
    for row, ci in zip(Kmat.astype(np.float64), c):
        p = row * v / (row @ v)
        keep = p > thr
        if keep.sum() > HESSIAN_CAP:
            keep = p > 1.0 / HESSIAN_CAP
        q = np.where(keep, p, 0.0)
        W += ci * np.outer(q, q)
    return W


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_curvature_keeps_at_most_the_cap_per_row(name, dtype):
    # rows with 5 heavy entries (0.15 each) and 95 light ones (above thr = 1e-3): more than
    # HESSIAN_CAP entries pass thr, so only those above 1 / HESSIAN_CAP (the heavy ones) count
    from sinklabel.backends._base import HESSIAN_CAP

    B = _backend(name)
    n, k = 64, 100
    rng = np.random.default_rng(3)
    K_np = np.full((n, k), 0.25 / 95)
    for i in range(n):
        K_np[i, rng.choice(k, 5, replace=False)] = 0.15
    K_np = K_np.astype(dtype)
    like = to_library(K_np, B.library)
    v, c = np.ones(k), np.full(n, 1.0 / n)
    u, acc, W = B.sweep_hessian(like, B.from_numpy(v, like=like), B.from_numpy(c, like=like), 1e-3)
    assert 95 + 5 > HESSIAN_CAP > 5 and 0.25 / 95 < 1.0 / HESSIAN_CAP < 0.15
    ref = curvature_ref(K_np, v, c, 1e-3)
    np.testing.assert_allclose(W, ref, rtol=0, atol=1e-6 * np.abs(ref).max())
    np.testing.assert_allclose(np.diag(W).sum(), 5 * 0.15**2, rtol=1e-5)  # heavy entries only
    # the contract's default (dense products: what a GPU backend runs) on the same rows
    _, _, W_dense = Backend.sweep_hessian(B, like, B.from_numpy(v, like=like), B.from_numpy(c, like=like), 1e-3)
    np.testing.assert_allclose(W_dense, ref, rtol=0, atol=1e-6 * np.abs(ref).max())



@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("kind,n,k", PROBLEMS)
def test_primitives_match_numpy(name, dtype, kind, n, k):
    B = _backend(name)
    S_np = make_scores(n, k, kind=kind, seed=n, dtype=dtype)
    S = to_library(S_np, B.library)
    rng = np.random.default_rng(k)
    g = rng.normal(0, 3, k)
    log_c = np.full(n, -np.log(n))
    a_ref, lse_ref = REF.log_sweep(S_np, 25.0, g, log_c)
    a, lse = B.log_sweep(S, 25.0, B.from_numpy(g, like=S), B.from_numpy(log_c, like=S))
    np.testing.assert_allclose(host(a), a_ref, rtol=1e-9, atol=1e-9)
    np.testing.assert_allclose(host(lse), lse_ref, rtol=1e-9, atol=1e-9)

    K_ref = REF.build_kernel(S_np, 25.0, a_ref, g)
    Kmat = B.build_kernel(S, 25.0, B.from_numpy(a_ref, like=S), B.from_numpy(g, like=S))
    assert host(Kmat).dtype == K_ref.dtype
    np.testing.assert_allclose(
        host(Kmat), K_ref, rtol=2e-6 if dtype == np.float32 else 1e-12, atol=0
    )

    # the log step that writes its kernel: the same a and column masses, and the kernel of
    # that frame (a, g) as build_kernel makes it
    a2, lse2, K2 = B.log_sweep_build(S, 25.0, B.from_numpy(g, like=S), B.from_numpy(log_c, like=S))
    np.testing.assert_allclose(host(a2), a_ref, rtol=1e-9, atol=1e-9)
    np.testing.assert_allclose(host(lse2), lse_ref, rtol=1e-9, atol=1e-9)
    assert host(K2).dtype == K_ref.dtype
    np.testing.assert_allclose(host(K2), K_ref, rtol=2e-6 if dtype == np.float32 else 1e-12, atol=0)

    # a partial rebuild: the rows asked for come from the scores in the new frame, the
    # others stay as they were (here: zeros)
    rows = np.sort(rng.choice(n, max(1, n // 7), replace=False)).astype(np.int64)
    a3 = a_ref + rng.normal(0, 1, n)
    K3 = B.build_rows(
        S, 25.0, B.from_numpy(a3, like=S), B.from_numpy(g, like=S), 0 * Kmat, rows
    )
    want = np.zeros_like(K_ref)
    want[rows] = REF.build_kernel(S_np[rows], 25.0, a3[rows], g)
    np.testing.assert_allclose(host(K3), want, rtol=2e-6 if dtype == np.float32 else 1e-12, atol=0)

    v = np.exp(rng.normal(0, 1, k))
    c = np.full(n, 1.0 / n)
    u_ref, acc_ref = REF.sweep(K_ref, v, c)
    u, acc = B.sweep(Kmat, B.from_numpy(v, like=S), B.from_numpy(c, like=S))
    tol = 1e-5 if dtype == np.float32 else 1e-12
    np.testing.assert_allclose(host(u), u_ref, rtol=tol)
    np.testing.assert_allclose(host(acc), acc_ref, rtol=tol)

    # the sweep that gathers the rows' curvature for a Newton step: the same sweep, and
    # W = sum_i c_i p_i p_i^T over the entries p_ik > thr, in float64 on the host
    for thr in (1e-3, 0.0):
        u5, acc5, W = B.sweep_hessian(Kmat, B.from_numpy(v, like=S), B.from_numpy(c, like=S), thr)
        np.testing.assert_allclose(host(u5), u_ref, rtol=tol)
        np.testing.assert_allclose(host(acc5), acc_ref, rtol=tol)
        assert isinstance(W, np.ndarray) and W.dtype == np.float64 and W.shape == (k, k)
        np.testing.assert_allclose(W, curvature_ref(K_ref, v, c, thr), rtol=0, atol=tol * np.abs(W).max())

    # an absorption and the next sweep in one: the kernel rescaled as rescale_kernel does
    # it (in place) but for the rows kept (rebuilt in the new frame already), and the
    # sweep of the rescaled kernel
    row_log, col_log = rng.normal(0, 2, n), rng.normal(0, 2, k)
    keep = np.sort(rng.choice(n, n // 9, replace=False)).astype(np.int64)
    K4 = B.build_kernel(S, 25.0, B.from_numpy(a_ref, like=S), B.from_numpy(g, like=S))
    u4, acc4 = B.rescale_sweep(
        K4, B.from_numpy(row_log, like=S), B.from_numpy(col_log, like=S),
        B.from_numpy(v, like=S), B.from_numpy(c, like=S), keep,
    )  # fmt: skip
    K4_ref = REF.rescale_kernel(K_ref.copy(), row_log, col_log)
    K4_ref[keep] = K_ref[keep]
    # the rescale alone, rows `keep` left as they are
    K5 = B.rescale_kernel(
        B.build_kernel(S, 25.0, B.from_numpy(a_ref, like=S), B.from_numpy(g, like=S)),
        B.from_numpy(row_log, like=S), B.from_numpy(col_log, like=S), keep,
    )  # fmt: skip
    np.testing.assert_allclose(host(K5), K4_ref, rtol=2e-6 if dtype == np.float32 else 1e-12, atol=0)
    np.testing.assert_allclose(host(K4), K4_ref, rtol=2e-6 if dtype == np.float32 else 1e-12, atol=0)
    u4_ref, acc4_ref = REF.sweep(K4_ref, v, c)
    np.testing.assert_allclose(host(u4), u4_ref, rtol=tol)
    np.testing.assert_allclose(host(acc4), acc4_ref, rtol=tol)
    # the same absorption inside the sweep that gathers the curvature
    K6 = B.build_kernel(S, 25.0, B.from_numpy(a_ref, like=S), B.from_numpy(g, like=S))
    rescale = (B.from_numpy(row_log, like=S), B.from_numpy(col_log, like=S), keep)
    u6, acc6, W6 = B.sweep_hessian(K6, B.from_numpy(v, like=S), B.from_numpy(c, like=S), 1e-3, rescale)
    np.testing.assert_allclose(host(K6), K4_ref, rtol=2e-6 if dtype == np.float32 else 1e-12, atol=0)
    np.testing.assert_allclose(host(u6), u4_ref, rtol=tol)
    np.testing.assert_allclose(host(acc6), acc4_ref, rtol=tol)
    np.testing.assert_allclose(W6, curvature_ref(K4_ref, v, c, 1e-3), rtol=0, atol=tol * np.abs(W6).max())

    labels, picked = B.argmax(S, 25.0, B.from_numpy(g, like=S))
    labels, picked = host(labels), host(picked)
    labels_ref, picked_ref = REF.argmax(S_np, 25.0, g)
    np.testing.assert_array_equal(labels, labels_ref)
    np.testing.assert_array_equal(picked, picked_ref)
    assert picked.dtype == np.float64
    np.testing.assert_array_equal(picked, S_np[np.arange(n), labels].astype(np.float64))
    np.testing.assert_array_equal(
        host(B.gather(S, B.from_numpy(labels, like=S))), REF.gather(S_np, labels)
    )

    scan, scan_ref = B.scan(S), REF.scan(S_np)
    assert (scan.nan_at, scan.posinf_at, scan.dead_row) == (
        scan_ref.nan_at,
        scan_ref.posinf_at,
        scan_ref.dead_row,
    )
    np.testing.assert_array_equal(scan.dead_cols, scan_ref.dead_cols)
    finite = S_np[np.isfinite(S_np)]
    assert scan.max_abs == scan_ref.max_abs == float(np.abs(finite).max())
    assert scan.neginf == scan_ref.neginf == bool(np.isneginf(S_np).any()) == (kind == "neginf")


@pytest.mark.parametrize("name", NAMES)
def test_scan_extent_on_random_patterns(name):
    """The scan's max |S| over the finite entries (the lam limit) and its -inf flag against
    numpy on random patterns: no -inf, some, almost all, all; with NaN and +inf (ignored by
    the extent), float32 and float64, one row up to several chunks."""
    B = _backend(name)
    rng = np.random.default_rng(0)
    for t in range(40):
        n, k = int(rng.integers(1, 3000 if t % 4 == 0 else 300)), int(rng.integers(1, 40))
        S = rng.normal(size=(n, k)) * rng.choice([1.0, 1e3])
        S[rng.random((n, k)) < rng.choice([0.0, 0.3, 0.99, 1.0])] = -np.inf
        if t % 3 == 0:
            S[rng.integers(n), rng.integers(k)] = rng.choice([np.nan, np.inf])
        for X in (S, S.astype(np.float32)):
            finite = X[np.isfinite(X)]
            want = float(np.abs(finite).max()) if finite.size else 0.0
            scan = B.scan(to_library(X, B.library))
            assert scan.neginf == bool(np.isneginf(X).any())
            assert scan.max_abs == want, (t, n, k, X.dtype)


@pytest.mark.parametrize("name", NAMES)
def test_scan_finds_bad_entries_like_numpy(name):
    B = _backend(name)
    S_np = make_scores(300, 6, seed=1)
    S_np[17, 3] = np.nan
    S_np[250, 1] = np.inf
    S_np[40, :] = -np.inf
    S_np[:, 5] = -np.inf
    scan, ref = B.scan(to_library(S_np, B.library)), REF.scan(S_np)
    assert (
        (scan.nan_at, scan.posinf_at, scan.dead_row)
        == ((17, 3), (250, 1), 40)
        == (ref.nan_at, ref.posinf_at, ref.dead_row)
    )
    np.testing.assert_array_equal(scan.dead_cols, [5])


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("kind,n,k", PROBLEMS)
@pytest.mark.parametrize("lam", [10.0, 25.0])
def test_solve_matches_numpy(name, dtype, kind, n, k, lam):
    B = _backend(name)
    S_np = make_scores(n, k, kind=kind, seed=k, dtype=dtype)
    ref = sinklabel.solve(S_np, lam, backend="numpy")
    res = sinklabel.solve(to_library(S_np, B.library), lam, backend=name)
    assert res.backend == name and res.converged == ref.converged
    h, r = res.heads[0], ref.heads[0]
    assert h.error <= 1e-3
    # different accumulation orders: potentials agree to the tolerance, labels up to near-ties
    lv, rv = host(h.log_v), r.log_v
    np.testing.assert_allclose(lv - lv.max(), rv - rv.max(), atol=5e-3 * lam)
    labels = host(h.labels)
    assert labels.dtype == np.int64
    assert np.mean(labels == r.labels) >= 0.99
    assert abs(h.objective - r.objective) <= 1e-3 * abs(r.objective)


@pytest.mark.parametrize("name", NAMES)
def test_outputs_follow_the_input_library(name):
    B = _backend(name)
    S = to_library(make_scores(200, 4, seed=0), B.library)
    res = sinklabel.solve(S, 25.0, backend=name)
    for x in (res.labels, res.heads[0].log_u, res.heads[0].log_v):
        assert type(x) is type(S)
