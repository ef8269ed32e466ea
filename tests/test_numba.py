"""The numba backend's own promises: memory, streamed kernels, acceleration, fast-math.

(Agreement with the numpy reference, primitive by primitive and whole solves, is in
``test_conformance.py``.)
"""

from __future__ import annotations

import tracemalloc
import warnings

import numpy as np
import pytest

import sinklabel
from sinklabel import _driver
from sinklabel._accel import Anderson
from sinklabel.backends import get_backend
from sinklabel.problems import make_scores

pytest.importorskip("numba")
from sinklabel.backends import _numba  # noqa: E402

B = get_backend("numba")
KINDS = ("realistic", "collapsed", "neginf")


def solve(S, lam=25.0, **kw):
    kw.setdefault("balanced", False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", sinklabel.ConvergenceWarning)
        return sinklabel.solve(S, lam, backend="numba", **kw)


def peak_bytes(fn):
    """Peak of numpy (tracemalloc-visible) allocations during ``fn()``, and its result."""
    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        base = tracemalloc.get_traced_memory()[0]
        out = fn()
        return tracemalloc.get_traced_memory()[1] - base, out
    finally:
        tracemalloc.stop()


# -- memory ---------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_stored_solve_allocates_one_kernel_and_streamed_none(dtype):
    S = make_scores(40_000, 100, kind="collapsed", seed=4, dtype=dtype)
    solve(S, tol=1e-1, kernel="stored"), solve(S, tol=1e-1, kernel="streamed")  # compile first
    stored, res = peak_bytes(lambda: solve(S, kernel="stored"))
    assert res.converged
    # the kernel (same dtype as S) and vectors of length N and K, nothing else N x K: at
    # most 12 float64 N-vectors at once (the masses, the frame and its rise since the
    # build, the best point, a sweep's u and the host work on them); one more N x K
    # float32 array would be 50 of them here
    n_vec = 8 * S.shape[0]
    assert S.nbytes <= stored <= S.nbytes + 12 * n_vec
    streamed, res2 = peak_bytes(lambda: solve(S, kernel="streamed"))
    assert res2.converged
    assert streamed <= 0.15 * S.nbytes


def test_validation_and_labels_allocate_no_matrix():
    S = make_scores(40_000, 100, seed=5)
    g = np.zeros(100)
    B.scan(S), B.argmax(S, 25.0, g)  # compile
    labels = np.zeros(40_000, np.int64)
    for fn in (lambda: B.scan(S), lambda: B.argmax(S, 25.0, g), lambda: B.gather(S, labels)):
        used, _ = peak_bytes(fn)
        assert used <= 0.05 * S.nbytes


def test_float16_scores_get_a_float32_kernel():
    S = make_scores(3000, 30, seed=6, dtype=np.float16)
    res = solve(S)
    ref = solve(S.astype(np.float32))
    assert res.converged and np.mean(res.labels == ref.labels) >= 0.99


# -- the streamed kernel ------------------------------------------------------------------------
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_streamed_matches_stored(kind, dtype):
    S = make_scores(5000, 50, kind=kind, seed=7, dtype=dtype)
    stored = solve(S, kernel="stored", tol=1e-5)
    streamed = solve(S, kernel="streamed", tol=1e-5)
    assert stored.converged and streamed.converged
    assert np.mean(stored.labels == streamed.labels) >= 0.999
    assert streamed.objective == pytest.approx(stored.objective, rel=1e-5)
    # the same plan: potentials agree up to the gauge (a constant moved between u and v)
    dv = streamed.log_v - stored.log_v
    finite = np.isfinite(dv)
    assert np.ptp(dv[finite]) <= 0.05


def test_streamed_scores_are_left_untouched_and_multi_head_works():
    S = np.stack([make_scores(2000, 20, seed=s) for s in (8, 9)])
    before = S.copy()
    res = solve(S, kernel="streamed")
    assert res.converged and res.labels.shape == (2, 2000)
    np.testing.assert_array_equal(S, before)


def test_auto_streams_when_the_kernel_would_not_fit(monkeypatch):
    S = make_scores(3000, 30, seed=10)
    calls = []
    real = type(B).stream_sweep

    def spy(self, *args):
        calls.append(1)
        return real(self, *args)

    monkeypatch.setattr(type(B), "stream_sweep", spy)
    solve(S)
    assert not calls  # plenty of memory: stored
    monkeypatch.setattr(_driver, "_available_memory", lambda: S.nbytes)
    res = solve(S)
    assert calls and res.converged


def test_kernel_option_errors():
    S = make_scores(300, 5, seed=11)
    with pytest.raises(ValueError, match="`kernel` must be 'auto', 'stored' or 'streamed'; got 'disk'"):
        sinklabel.solve(S, kernel="disk")
    with pytest.raises(ValueError, match="`acceleration` must be 'newton', 'anderson' or None; got 'sor'"):
        sinklabel.solve(S, acceleration="sor")
    pytest.importorskip("torch")
    with pytest.raises(ValueError, match="`kernel='streamed'` is not supported by backend 'torch'"):
        sinklabel.solve(S, backend="torch", kernel="streamed")


# -- acceleration ---------------------------------------------------------------------------
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("acceleration", ["anderson", "newton"])
def test_acceleration_never_worse_than_plain(kind, dtype, acceleration):
    S = make_scores(2000, 20, kind=kind, seed=12, dtype=dtype)
    for lam in (1.0, 10.0, 25.0, 100.0):
        plain = solve(S, lam, acceleration=None)
        fast = solve(S, lam, acceleration=acceleration)
        assert plain.converged and fast.converged
        assert fast.n_iter <= plain.n_iter
        if lam >= 25:
            assert 3 * fast.n_iter <= plain.n_iter  # the point of it
        assert fast.error <= 1e-3


@pytest.mark.parametrize("acceleration", ["anderson", "newton"])
def test_acceleration_converges_at_lam_1000_where_plain_does_not(acceleration):
    S = make_scores(3000, 30, seed=0)
    plain = solve(S, 1000.0, acceleration=None, max_iter=3000)
    fast = solve(S, 1000.0, max_iter=3000, acceleration=acceleration)
    assert not plain.converged
    assert fast.converged and fast.error <= 1e-3


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_newton_reaches_anderson_s_plan_in_fewer_sweeps(kind, dtype):
    # the same fixed point (potentials up to the constant both sides may carry), far fewer
    # evaluations once the error is below Newton's start
    S = make_scores(20000, 100, kind=kind, seed=5, dtype=dtype)
    a = solve(S, 25.0, acceleration="anderson", tol=1e-6)
    n = solve(S, 25.0, acceleration="newton", tol=1e-6)
    assert a.converged and n.converged and n.error <= 1e-6
    shift = np.mean(n.log_v - a.log_v)
    # at error 1e-6 a cluster whose points are all sure of it has its potential known to
    # ~1e-6 / (its curvature), here up to 2e-4
    np.testing.assert_allclose(n.log_v - shift, a.log_v, atol=1e-3)
    np.testing.assert_allclose(n.log_u + shift, a.log_u, atol=1e-3)
    assert 2 * n.n_iter <= a.n_iter


def test_newton_only_where_its_k_by_k_solve_is_cheap():
    # K^2 > 16 N: the host's K x K solve would outweigh the sweeps it saves; Anderson's
    # iterations exactly
    S = make_scores(600, 100, seed=7)
    assert 100**2 > 16 * 600
    a = solve(S, 25.0, acceleration="anderson")
    n = solve(S, 25.0, acceleration="newton")
    assert a.n_iter == n.n_iter
    np.testing.assert_array_equal(a.log_v, n.log_v)
    S = make_scores(1000, 40, seed=7)  # 1600 <= 16000: Newton
    assert solve(S, 25.0, acceleration="newton").n_iter < solve(S, 25.0, acceleration="anderson").n_iter


def test_newton_objective_is_the_semi_dual(monkeypatch):
    # the F each Newton step is judged by: sum_i c_i logsumexp_k(lam S_ik + x_k) - r . x at
    # the point swept, whatever frame the kernel holds (absorptions happen on the way)
    from sinklabel import _accel

    S = make_scores(3000, 20, kind="collapsed", seed=6, dtype=np.float64)
    lam, seen, pending = 25.0, [], []
    observe, step = _accel.Newton.observe, _accel.Newton.step

    def spy_observe(self, objective, W, mass):
        pending.append(objective)
        return observe(self, objective, W, mass)

    def spy_step(self, x, gx, err, mix=True, record=True):
        if pending:
            seen.append((pending.pop(), np.array(x)))
        return step(self, x, gx, err, mix, record)

    monkeypatch.setattr(_accel.Newton, "observe", spy_observe)
    monkeypatch.setattr(_accel.Newton, "step", spy_step)
    res = solve(S, lam, tol=1e-8)
    assert res.converged and len(seen) >= 3
    c, r = np.full(3000, 1 / 3000), np.full(20, 1 / 20)
    for F, x in seen:
        z = lam * S + x
        top = z.max(axis=1)
        want = c @ (top + np.log(np.exp(z - top[:, None]).sum(axis=1))) - r @ x
        assert abs(F - want) <= 1e-9 * (1 + abs(want))


def test_newton_hands_over_to_anderson_when_its_steps_fail():
    from sinklabel._accel import Newton

    # a model where every Newton step raises F and the error: three in a row, then Anderson
    active = np.ones(3, dtype=bool)
    r = np.full(3, 1 / 3)
    mixer = Newton(active, r, memory=3)
    x = np.zeros(3)
    gx = x + np.array([0.1, -0.1, 0.0])
    assert mixer.step(x, gx, err=0.5) is not None and mixer.wants_curvature  # engaged below start
    W = np.diag([0.1, 0.1, 0.1])
    mass = np.array([0.4, 0.3, 0.3])
    F = 1.0
    for attempt in range(3):
        mixer.observe(F, W, mass)
        nxt = mixer.step(x, gx, err=0.5)
        assert np.all(np.isfinite(nxt))
        F, x = F + 1.0, nxt  # the next point is worse in F and in the error
    assert mixer.rejects == 2 and mixer.enabled  # the first step judged nothing
    mixer.observe(F, W, mass)
    mixer.step(x, gx, err=0.6)
    assert not mixer.enabled and not mixer.wants_curvature and mixer.rejects == 3


@pytest.mark.parametrize("with_scipy", [True, False])
def test_newton_solve_is_the_lu_answer_and_refuses_indefinite_matrices(with_scipy, monkeypatch):
    import builtins

    from sinklabel._accel import spd_solve

    if with_scipy:
        pytest.importorskip("scipy")
    else:  # as on an install without scipy: numpy's LU
        real_import = builtins.__import__

        def no_scipy(name, *args, **kwargs):
            if name.startswith("scipy"):
                raise ImportError(name)
            return real_import(name, *args, **kwargs)

        monkeypatch.setattr(builtins, "__import__", no_scipy)
    rng = np.random.default_rng(5)
    G = rng.normal(size=(40, 60))
    A = G @ G.T / 60 + 1e-3 * np.eye(40)
    b = rng.normal(size=40)
    want = np.linalg.solve(A, b)
    np.testing.assert_allclose(spd_solve(A.copy(), b), want, rtol=1e-9, atol=1e-12)
    singular = np.zeros((3, 3))
    with pytest.raises(np.linalg.LinAlgError):
        spd_solve(singular, np.ones(3))
    if with_scipy:  # Cholesky also refuses an indefinite matrix (LU would solve it)
        with pytest.raises(np.linalg.LinAlgError):
            spd_solve(np.diag([1.0, -1.0, 2.0]), np.ones(3))


def test_explicit_check_every_turns_acceleration_off():
    S = make_scores(2000, 20, seed=13)
    plain = solve(S, acceleration=None, check_every=5)
    both = solve(S, check_every=5)
    assert both.n_iter == plain.n_iter


def test_anderson_leaves_inactive_clusters_alone_and_restarts():
    active = np.array([True, False, True])
    mixer = Anderson(active, memory=3)
    x = np.array([0.0, -np.inf, 0.0])
    for step in range(4):
        gx = x + np.array([0.5, 0.0, -0.5]) * 0.5**step
        gx[1] = -np.inf
        nxt = mixer.step(x, gx, err=0.5**step)
        assert nxt[1] == -np.inf and np.all(np.isfinite(nxt[active]))
        x = nxt
    # a proposal whose residual is far worse than the best: back to the best's successor
    bad = mixer.step(x, x + np.array([50.0, 0.0, -50.0]), err=10.0)
    assert mixer.restarted and mixer.restarts == 1
    assert np.all(np.isfinite(bad[active]))


# -- fast-math keeps NaN and inf --------------------------------------------------------------
def test_exp_is_accurate_and_keeps_special_values():
    x = np.linspace(-700, 700, 20001)
    got = np.array([_numba._exp(v) for v in x])
    np.testing.assert_allclose(got, np.exp(x), rtol=4e-16 * 8)
    x32 = np.linspace(-87, 88, 5001).astype(np.float32)
    got32 = np.array([_numba._expf(v) for v in x32])
    np.testing.assert_allclose(got32, np.exp(x32.astype(np.float64)), rtol=3e-7)
    assert np.isnan(_numba._exp(np.nan)) and np.isnan(_numba._expf(np.float32(np.nan)))
    assert _numba._exp(-np.inf) == 0.0 and _numba._expf(np.float32(-np.inf)) == 0.0
    assert _numba._exp(1000.0) == np.inf and _numba._expf(np.float32(100.0)) == np.inf


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("serial", [True, False])
def test_non_finite_values_survive_the_fused_passes(dtype, serial, monkeypatch):
    monkeypatch.setattr(_numba, "_SERIAL_MAX", 1 << 40 if serial else 0)
    n, k = 600, 16
    K = np.random.default_rng(0).random((n, k)).astype(dtype)
    v, c = np.ones(k), np.full(n, 1.0 / n)
    for bad in (np.nan, np.inf):
        Kb = K.copy()
        Kb[123, 7] = bad
        u, acc = B.sweep(Kb, v, c)
        assert not (B.all_finite(u) and B.all_finite(acc))
    Kz = K.copy()
    Kz[200] = 0.0  # a row that underflowed: u = c / 0
    u, _ = B.sweep(Kz, v, c)
    assert not B.all_finite(u)
    S = make_scores(n, k, seed=14, dtype=dtype)
    a, col = B.log_sweep(S, 25.0, np.zeros(k), np.log(c))
    Sb = S.copy()
    Sb[17, 3] = np.nan
    a_next, mass = B.stream_sweep(Sb, 25.0, a, col * 0, c)
    assert not (B.all_finite(a_next) and B.all_finite(mass))
    assert B.scan(Sb).nan_at == (17, 3)


def test_serial_and_parallel_paths_agree(monkeypatch):
    S = make_scores(3000, 40, kind="neginf", seed=15)
    c = np.full(3000, 1 / 3000)
    g = np.random.default_rng(1).normal(0, 2, 40)
    out = {}
    for serial in (True, False):
        monkeypatch.setattr(_numba, "_SERIAL_MAX", 1 << 40 if serial else 0)
        a, lse = B.log_sweep(S, 25.0, g, np.log(c))
        K = B.build_kernel(S, 25.0, a, g)
        u, acc = B.sweep(K, np.ones(40), c)
        a2, mass = B.stream_sweep(S, 25.0, a, g, c)
        W = B.sweep_hessian(K, np.ones(40), c, 1e-3)[2]
        W2 = B.stream_sweep_hessian(S, 25.0, a, g, c, 1e-3)[2]
        out[serial] = (a, lse, K, u, acc, a2, mass, *B.argmax(S, 25.0, g), B.scan(S).dead_cols, W, W2)
    for x, y in zip(out[True], out[False]):
        np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-12)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("kind", KINDS)
def test_streamed_curvature_is_the_stored_one(dtype, kind):
    # the streamed sweep's curvature is that of the plan exp(lam S + a + g) it evaluates:
    # the same rows, the same W as the reference over that kernel, and its own sweep's masses
    from tests.test_conformance import curvature_ref

    S = make_scores(900, 30, kind=kind, seed=16, dtype=dtype)
    c = np.full(900, 1 / 900)
    g = np.random.default_rng(2).normal(0, 2, 30)
    a, _ = B.log_sweep(S, 25.0, g, np.log(c))
    a = a + np.random.default_rng(3).normal(0, 0.5, 900)  # rows off by a little, as between sweeps
    a_next, mass, W = B.stream_sweep_hessian(S, 25.0, a, g, c, 1e-3)
    a_ref, mass_ref = B.stream_sweep(S, 25.0, a, g, c)
    np.testing.assert_array_equal(a_next, a_ref)
    np.testing.assert_array_equal(mass, mass_ref)
    E = np.exp(25.0 * S.astype(np.float64) + a[:, None] + g)
    tol = 1e-5 if dtype == np.float32 else 1e-12
    np.testing.assert_allclose(W, curvature_ref(E, np.ones(30), c, 1e-3), rtol=0, atol=tol * np.abs(W).max())


# -- the primitives of issue 12 ------------------------------------------------------------------
def test_expf64_is_accurate_never_subnormal_and_keeps_special_values():
    x = np.linspace(-87, 88.3, 20001)
    got = np.array([_numba._expf64(v) for v in x], dtype=np.float64)
    np.testing.assert_allclose(got, np.exp(x), rtol=2e-7)
    low = np.array([_numba._expf64(v) for v in np.linspace(-120, -87.0001, 101)])
    assert (low == 0).all()  # no subnormal results below the float32 normal range
    assert np.isnan(_numba._expf64(np.nan)) and _numba._expf64(-np.inf) == 0.0
    assert _numba._expf64(np.inf) == np.inf and _numba._expf64(100.0) == np.inf


@pytest.mark.parametrize("serial", [True, False])
def test_sweep_of_extreme_scalings_matches_float64(serial, monkeypatch):
    """The float32 operands are rescaled by powers of two inside the sweep (no subnormal
    products): u and acc still match a float64 sweep of the same kernel."""
    monkeypatch.setattr(_numba, "_SERIAL_MAX", 1 << 40 if serial else 0)
    rng = np.random.default_rng(3)
    n, k = 4000, 37
    K = np.exp(rng.uniform(-86, 0, (n, k))).astype(np.float32)
    K[rng.random((n, k)) < 0.3] = 0.0
    K[:, 0] = np.exp(rng.uniform(-5, 0, n)).astype(np.float32)  # every row has mass
    v = np.exp(rng.uniform(-30, 30, k))
    c = rng.random(n) / n
    u, acc = B.sweep(K, v, c)
    K64 = K.astype(np.float64)
    u_ref = c / (K64 @ v.astype(np.float32).astype(np.float64))
    np.testing.assert_allclose(u, u_ref, rtol=2e-6)
    np.testing.assert_allclose(acc, u_ref @ K64, rtol=2e-6)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("serial", [True, False])
def test_rescale_kernel_matches_the_generic_default(dtype, serial, monkeypatch):
    from sinklabel.backends._base import Backend

    monkeypatch.setattr(_numba, "_SERIAL_MAX", 1 << 40 if serial else 0)
    rng = np.random.default_rng(5)
    n, k = 700, 23
    K = np.exp(rng.uniform(-80, 5, (n, k))).astype(dtype)
    K[rng.random((n, k)) < 0.2] = 0.0
    row, col = rng.normal(0, 20, n), rng.normal(0, 20, k)
    row[0] = 200.0  # overflows float32: inf (the driver then rescues)
    got, ref = K.copy(), K.copy()
    assert B.rescale_kernel(got, row, col) is got
    Backend.rescale_kernel(get_backend("numpy"), ref, row, col)
    np.testing.assert_allclose(got, ref, rtol=1e-6 if dtype == np.float32 else 1e-13)
    assert ((got == 0) == (ref == 0)).all() and ((got == 0) | (got >= np.exp(B.exp_floor(dtype)))).all()
    assert (got[K == 0] == 0).all()  # zeros stay zeros
    if dtype == np.float32:
        assert np.isinf(got[0][K[0] > 1e-30]).any()


@pytest.mark.parametrize("serial", [True, False])
def test_log_sweep_resolves_columns_nobody_likes(serial, monkeypatch):
    """Columns whose mass one exp per entry cannot hold (below e^-680 of the rows' top
    entries) are summed again exactly: the same column log-masses as the reference."""
    monkeypatch.setattr(_numba, "_SERIAL_MAX", 1 << 40 if serial else 0)
    S = make_scores(2000, 12, kind="collapsed", seed=8)
    c = np.full(2000, 1 / 2000)
    g = np.zeros(12)
    g[3] = -2000.0  # a cluster 2000 below the others: every row's entry under e^-700
    g[5] = -np.inf  # an inactive cluster
    a, lse = B.log_sweep(S, 40.0, g, np.log(c))
    a0, lse0 = get_backend("numpy").log_sweep(S, 40.0, g, np.log(c))
    assert lse[3] < -680 and lse[5] == -np.inf
    np.testing.assert_allclose(a, a0, rtol=1e-12, atol=1e-10)
    np.testing.assert_allclose(lse[lse0 > -np.inf], lse0[lse0 > -np.inf], rtol=1e-12, atol=1e-9)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("lam", [25.0, 100.0, 1000.0])
def test_absorption_in_place_keeps_the_error_honest(kind, lam, monkeypatch):
    """Absorptions rescale the stored kernel in place (or rebuild it from the scores): the
    error reported is that of the full plan of the returned potentials, recomputed here
    in the log domain from the scores (rows exact, columns within tol)."""
    calls = {"rescale_kernel": 0, "rescale_sweep": 0, "build_kernel": 0, "log_sweep": 0}
    for name in calls:
        fn = getattr(B, name)

        def spy(*args, _fn=fn, _name=name, **kw):
            calls[_name] += 1
            return _fn(*args, **kw)

        monkeypatch.setattr(B, name, spy)
    S = make_scores(6000, 40, kind=kind, seed=9)
    res = solve(S, lam, kernel="stored", max_iter=3000)
    assert res.converged
    h = res.heads[0]
    Y = S.astype(np.float64) * lam + h.log_u[:, None] + h.log_v[None, :]
    rows = np.exp(np.logaddexp.reduce(Y, axis=1))
    cols = np.exp(np.logaddexp.reduce(Y, axis=0))
    np.testing.assert_allclose(rows, 1 / 6000, rtol=2e-5)
    assert np.abs(cols * 40 - 1).max() <= h.error * (1 + 1e-3) + 2e-5 <= 1e-3 * (1 + 1e-3) + 2e-5
    if lam == 25.0:  # absorbed in place at least once, in a sweep's read
        assert calls["rescale_sweep"] >= 1


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_partial_rebuild_in_parallel_matches_numpy(dtype):
    # more rows than the serial limit: the parallel row-list kernel, in place
    from sinklabel.backends._numba import _SERIAL_MAX

    n, k = 2 * _SERIAL_MAX // 100 + 7, 100
    S = make_scores(n, k, kind="neginf", seed=9, dtype=dtype)
    rng = np.random.default_rng(0)
    a, b = rng.normal(0, 2, n) - 25.0, rng.normal(0, 2, k)
    rows = np.sort(rng.choice(n, n // 2, replace=False)).astype(np.int64)
    B, ref = get_backend("numba"), get_backend("numpy")
    K = np.full((n, k), 7.0, dtype=dtype)
    out = B.build_rows(S, 25.0, a, b, K, rows)
    assert out is K
    want = np.full((n, k), 7.0, dtype=dtype)
    want[rows] = ref.build_kernel(S[rows], 25.0, a[rows], b)
    np.testing.assert_allclose(K, want, rtol=2e-6 if dtype == np.float32 else 1e-12, atol=0)


@pytest.mark.parametrize("k", [1, 7, 128, 300])
def test_argmax_first_of_ties_across_blocks_as_numpy(k):
    # the compiled argmax reduces blocks of 128 entries: the first maximum must win across
    # and within blocks, rows of -inf give 0, -inf columns of g never win
    rng = np.random.default_rng(k)
    n = 400
    S = rng.integers(-3, 3, (n, k)).astype(np.float32)  # many exact ties
    S[::7] = -np.inf
    S[1::11, -1] = 50.0  # the maximum in the last (partial) block
    S[2::13, 0] = 50.0
    S[2::13, -1] = 50.0  # tied first and last: the first
    g = rng.integers(-2, 2, k).astype(np.float64)
    if k > 3:
        g[3] = -np.inf
    labels, picked = get_backend("numba").argmax(S, 25.0, g)
    labels_ref, picked_ref = get_backend("numpy").argmax(S, 25.0, g)
    np.testing.assert_array_equal(labels, labels_ref)
    np.testing.assert_array_equal(picked, picked_ref)
