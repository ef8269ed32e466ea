"""The mathematics of the solver: marginals, invariances, POT, the exact LP, warm starts, heads."""

import logging
import warnings

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import sinklabel
from sinklabel.problems import make_scores

from .conftest import assert_marginals

ot = pytest.importorskip("ot")


@st.composite
def problems(draw):
    k = draw(st.integers(2, 7))
    n = draw(st.integers(4 * k, 80))
    seed = draw(st.integers(0, 2**31))
    lam = draw(st.sampled_from([1.0, 5.0, 10.0, 25.0]))
    alpha = draw(st.sampled_from([0.5, 1.0, 3.0]))
    S = np.log(np.random.default_rng(seed).dirichlet(np.full(k, alpha), size=n))
    return S, lam, seed


@settings(max_examples=40, deadline=None)
@given(problems())
def test_marginals_hold_to_tolerance(prob):
    S, lam, _ = prob
    res = sinklabel.solve(S, lam, tol=1e-4, max_iter=20000)
    assert res.converged
    assert_marginals(S, lam, res.heads[0], 1e-4)
    assert res.labels.shape == (S.shape[0],) and res.labels.dtype == np.int64


# as for permutations: the iterates' covariance is tested, so a draw stopped at max_iter counts too
@pytest.mark.filterwarnings("ignore::sinklabel.ConvergenceWarning")
@settings(max_examples=30, deadline=None)
@given(problems())
def test_row_shift_changes_nothing(prob):
    S, lam, seed = prob
    shift = np.random.default_rng(seed).normal(0, 5, size=(S.shape[0], 1))
    # plain Sinkhorn: its iterates are exactly shift-covariant; accelerated ones agree
    # only to the tolerance, and on near-degenerate draws (N = 20, lam 25) tol 1e-6 pins
    # a flat direction of the potentials to ~5e-3 only
    a = sinklabel.solve(S, lam, tol=1e-6, max_iter=200000, acceleration=None)
    b = sinklabel.solve(S + shift, lam, tol=1e-6, max_iter=200000, acceleration=None)
    np.testing.assert_allclose(a.log_v - a.log_v.max(), b.log_v - b.log_v.max(), atol=1e-3)
    np.testing.assert_allclose(
        a.log_u, b.log_u + lam * shift[:, 0] - (a.log_v.max() - b.log_v.max()), atol=1e-3
    )
    _same_labels_up_to_ties(S, lam, a, b)


def _same_labels_up_to_ties(S, lam, a, b):
    """Labels agree except where the two best clusters are within 1e-6 relative."""
    diff = np.flatnonzero(a.labels != b.labels)
    X = lam * S + a.log_v
    for i in diff:
        assert abs(X[i, a.labels[i]] - X[i, b.labels[i]]) < 1e-3


# covariance of the iterates is what is tested, so a slow draw that stops at max_iter (and warns)
# still has to permute exactly
@pytest.mark.filterwarnings("ignore::sinklabel.ConvergenceWarning")
@settings(max_examples=30, deadline=None)
@given(problems())
def test_permutations_permute_the_answer(prob):
    S, lam, seed = prob
    rng = np.random.default_rng(seed + 1)
    pi = rng.permutation(S.shape[0])
    sigma = rng.permutation(S.shape[1])
    # plain Sinkhorn, as in the row-shift test: covariant iterates, not just answers
    a = sinklabel.solve(S, lam, tol=1e-6, max_iter=200000, acceleration=None)
    b = sinklabel.solve(S[pi][:, sigma], lam, tol=1e-6, max_iter=200000, acceleration=None)
    np.testing.assert_allclose(b.log_v - b.log_v.max(), (a.log_v - a.log_v.max())[sigma], atol=1e-3)
    relabelled = sigma[b.labels]  # b's label j is cluster sigma[j] of a
    assert np.mean(relabelled == a.labels[pi]) > 0.97


@pytest.mark.parametrize("lam", [1.0, 5.0, 10.0])
def test_agrees_with_pot_sinkhorn(lam):
    S = make_scores(300, 8, seed=3, dtype=np.float64)
    n, k = S.shape
    P = ot.sinkhorn(
        np.full(n, 1 / n), np.full(k, 1 / k), -S, 1 / lam, stopThr=1e-12, numItermax=100000
    )
    res = sinklabel.solve(S, lam, tol=1e-8, max_iter=100000, balanced=False)
    Q = np.exp(lam * S + res.log_u[:, None] + res.log_v[None, :])
    np.testing.assert_allclose(Q, P, rtol=1e-5, atol=1e-10)
    np.testing.assert_array_equal(res.labels, P.argmax(1))


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("n", [60, 61])
def test_large_lam_labels_match_the_exact_lp(seed, n):
    from sinklabel.exact import solve_exact

    S = np.log(np.random.default_rng(seed).dirichlet(np.ones(4), size=n))
    ex = solve_exact(S)
    res = sinklabel.solve(S, 100.0, tol=1e-5, max_iter=200000, balanced=False)
    assert res.converged
    # as lam grows the plan tends to the LP vertex: the argmax is the LP labelling, up to
    # the one point that N % K != 0 splits and near-ties
    assert np.mean(res.labels == ex.labels) >= (0.98 if n % 4 == 0 else 0.95)
    assert abs(res.objective - ex.objective) <= 0.015 * abs(ex.objective)


def test_lam_25_objective_close_to_exact():
    from sinklabel.exact import solve_exact

    for kind in ["realistic", "collapsed", "neginf"]:
        S = make_scores(2001, 20, kind=kind, seed=11)
        ex = solve_exact(S)
        res = sinklabel.solve(S, 25.0)
        assert abs(res.objective - ex.objective) <= 0.02 * abs(ex.objective), kind


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("kind", ["realistic", "collapsed", "neginf"])
@pytest.mark.parametrize("lam", [1.0, 25.0, 1000.0])
def test_never_nan_and_honest(kind, dtype, lam):
    S = make_scores(1003, 17, kind=kind, seed=5, dtype=dtype)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        res = sinklabel.solve(S, lam, max_iter=3000)
    h = res.heads[0]
    assert np.isfinite(h.log_u).all() and np.isfinite(h.log_v).all()
    assert np.isfinite(h.errors).all()
    assert h.labels.min() >= 0 and h.labels.max() < S.shape[1]
    assert not np.isneginf(S[np.arange(S.shape[0]), h.labels]).any()
    conv_warnings = [w for w in caught if issubclass(w.category, sinklabel.ConvergenceWarning)]
    assert len(conv_warnings) == (0 if h.converged else 1)
    assert h.converged == (h.error <= 1e-3)
    # the reported error is the plan's true error, converged or not
    assert_marginals(S, lam, h, max(h.error, 1e-3))


def test_collapsed_clusters_in_float32_get_their_share():
    # every point gives cluster 0 a log-probability near -40: lam*S ~ -1000, far below exp's range
    rng = np.random.default_rng(0)
    S = np.log(rng.dirichlet(np.ones(5), size=500)).astype(np.float32)
    S[:, 0] = -40.0 + rng.normal(0, 1, 500).astype(np.float32)
    res = sinklabel.solve(S, 25.0)
    assert res.converged
    assert abs(res.sizes[0] - 100) <= 10
    assert_marginals(S, 25.0, res.heads[0], 1e-3)


def test_prior_and_weights():
    S = make_scores(900, 3, seed=2, dtype=np.float64)
    prior = np.array([0.5, 0.3, 0.2])
    w = np.random.default_rng(1).uniform(0.5, 2, 900)
    res = sinklabel.solve(S, 10.0, prior=prior, weights=w, tol=1e-6)
    assert_marginals(S, 10.0, res.heads[0], 1e-6, c=w / w.sum(), r=prior)
    sizes = sinklabel.solve(S, 10.0, prior=np.array([450, 270, 180])).heads[0].target_sizes
    np.testing.assert_array_equal(sizes, [450, 270, 180])


def test_zero_prior_cluster_gets_nobody():
    S = make_scores(300, 4, seed=2, dtype=np.float64)
    res = sinklabel.solve(S, 10.0, prior=np.array([0.5, 0.5, 0.0, 0.0]), tol=1e-6)
    assert res.sizes[2] == 0 and res.sizes[3] == 0
    assert np.isneginf(res.log_v[2:]).all()
    assert_marginals(S, 10.0, res.heads[0], 1e-6, r=np.array([0.5, 0.5, 0, 0]))


def test_zero_weight_points_are_still_labelled():
    S = make_scores(200, 4, seed=4, dtype=np.float64)
    w = np.ones(200)
    w[:10] = 0
    res = sinklabel.solve(S, 10.0, weights=w)
    assert np.isneginf(res.log_u[:10]).all()
    assert (res.labels[:10] >= 0).all()


def test_warm_start_cuts_iterations():
    S = make_scores(5000, 50, seed=1)
    noise = np.random.default_rng(2).normal(0, 0.05, S.shape).astype(np.float32)
    S2 = S + noise
    cold = sinklabel.solve(S2, 25.0)
    first = sinklabel.solve(S, 25.0)
    warm = sinklabel.solve(S2, 25.0, init=first)
    assert warm.converged and cold.converged
    assert warm.n_iter * 2 <= cold.n_iter, (warm.n_iter, cold.n_iter)
    assert np.mean(warm.labels == cold.labels) > 0.99
    # the same start as bare potentials, and rescaled when lam changes
    assert sinklabel.solve(S2, 25.0, init=first.log_v).n_iter == warm.n_iter
    assert sinklabel.solve(S2, 50.0, init=first).converged


def test_multi_head_equals_separate_solves():
    heads = [make_scores(800, k, seed=k) for k in (5, 9, 12)]
    res = sinklabel.solve(heads, 25.0)
    assert res.multi_head and len(res.heads) == 3
    assert res.labels.shape == (3, 800)
    for t, S in enumerate(heads):
        one = sinklabel.solve(S, 25.0)
        np.testing.assert_array_equal(res.heads[t].labels, one.labels)
        np.testing.assert_allclose(res.heads[t].log_v, one.log_v)
        assert res.heads[t].n_iter == one.n_iter
    stacked = np.stack([make_scores(500, 6, seed=s) for s in range(2)])
    res3 = sinklabel.solve(stacked, 25.0)
    assert res3.labels.shape == (2, 500)
    assert isinstance(res3.log_v, tuple) and len(res3.log_v) == 2
    warm = sinklabel.solve(stacked, 25.0, init=res3)
    assert warm.n_iter < res3.n_iter


def test_assign_returns_the_labels():
    S = make_scores(400, 4, seed=9)
    np.testing.assert_array_equal(sinklabel.assign(S, 25.0), sinklabel.solve(S, 25.0).labels)


def test_result_is_frozen_and_reports():
    res = sinklabel.solve(make_scores(100, 4, seed=0), 10.0)
    with pytest.raises(AttributeError):
        res.labels = None
    text = res.report()
    assert "converged" in text and res.backend in text
    assert res.wall_time > 0 and res.backend in sinklabel.available_backends()


def test_non_convergence_warns_once_and_says_so():
    S = make_scores(500, 10, seed=0)
    with pytest.warns(sinklabel.ConvergenceWarning, match="max_iter=3"):
        res = sinklabel.solve(S, 25.0, max_iter=3)
    assert not res.converged and res.n_iter == 3
    assert res.heads[0].error > 1e-3


def test_infeasible_support_is_refused_and_never_reported_converged():
    # clusters 0 and 1 can only take point 0, but each needs 1/3 of the mass
    S = np.full((6, 3), -np.inf)
    S[:, 2] = 0.0
    S[0, :] = 0.0
    # the front door decides feasibility before any sweep
    with pytest.raises(ValueError, match=r"cluster"):
        sinklabel.solve(S, 10.0, max_iter=500)
    # the iteration itself (what runs where no process sees the whole pattern, across
    # ranks) stops at max_iter and never claims convergence
    from sinklabel._iteration import iterate
    from sinklabel.backends import get_backend

    B = get_backend("numpy")
    sol = iterate(B, S, 10.0, np.full(6, 1 / 6), np.full(3, 1 / 3), np.zeros(3), 1e-3, 500, 1, memory=6)
    assert not sol.converged and sol.n_iter == 500
    assert np.isfinite(sol.errors).all() and sol.error > 1e-3


def test_callback_sees_every_check_and_logging_is_opt_in(caplog):
    """callback(info) at every convergence check: the errors the result reports, in order;
    INFO records on the "sinklabel" logger, one per check, only when asked for."""
    import dataclasses
    import logging

    S = [make_scores(300, 5, seed=1), make_scores(300, 7, seed=2)]
    seen = []
    with caplog.at_level(logging.INFO, logger="sinklabel"):
        res = sinklabel.solve(S, lam=10, tol=1e-4, callback=seen.append)
    for t, h in enumerate(res.heads):
        mine = [i for i in seen if i.head == t]
        assert [i.error for i in mine] == list(h.errors)
        assert [i.n_iter for i in mine][-1] == h.n_iter
        assert all(i.n_heads == 2 and i.tol == 1e-4 and i.max_iter == 5000 for i in mine)
    assert [i.head for i in seen] == sorted(i.head for i in seen)  # heads one after another
    with pytest.raises(dataclasses.FrozenInstanceError):
        seen[0].error = 0.0
    records = [r for r in caplog.records if r.name == "sinklabel" and r.levelno == logging.INFO]
    assert len(records) == len(seen) and "head 2/2" in records[-1].getMessage()
    plain = sinklabel.solve(S, lam=10, tol=1e-4)
    assert [h.errors.tolist() for h in plain.heads] == [h.errors.tolist() for h in res.heads]
    with pytest.raises(TypeError, match="`callback` must be callable or None; got int"):
        sinklabel.solve(S, lam=10, callback=3)


def test_library_is_silent_by_default(capsys):
    sinklabel.solve(make_scores(200, 4, seed=3), lam=10)
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err == ""


def test_uniform_weights_are_the_default():
    """Equal weights (e.g. np.ones(N)) are weights=None: exactly balanced labels stay the
    default (issue 13 item 10); unequal ones, even by 1e-9, give the argmax."""
    S = make_scores(400, 6, seed=5)
    ref = sinklabel.solve(S, 25.0)
    for w in (np.ones(400), np.full(400, 0.3), np.ones(400, dtype=np.float32)):
        res = sinklabel.solve(S, 25.0, weights=w)
        assert res.heads[0].balanced and res.heads[0].certified
        np.testing.assert_array_equal(res.labels, ref.labels)
        np.testing.assert_array_equal(res.log_v, ref.log_v)
    assert sinklabel.solve(S, 25.0, weights=np.ones(400), balanced=True).heads[0].balanced
    uneven = np.ones(400)
    uneven[7] += 1e-9
    assert not sinklabel.solve(S, 25.0, weights=uneven).heads[0].balanced
    with pytest.raises(ValueError, match="`weights` is not supported with balanced=True"):
        sinklabel.solve(S, 25.0, weights=uneven, balanced=True)


def test_prepare_then_run_is_solve():
    """solve = run(prepare(arguments(...))); prepare decides everything before the iteration."""
    from sinklabel import _driver

    S = make_scores(303, 5, seed=6)
    prior = np.array([0.3, 0.3, 0.2, 0.1, 0.1])
    args = _driver.arguments(S, 10.0, prior=prior, kernel="streamed", backend="numpy")
    problem = _driver.prepare(args, args.backend)
    assert problem.n_points == 303 and problem.balanced and problem.stream and problem.memory > 0
    assert problem.flexible == [False]
    np.testing.assert_array_equal(problem.targets[0], [91, 91, 61, 30, 30])  # largest remainder
    res = _driver.run(problem, args.backend)
    ref = sinklabel.solve(S, 10.0, prior=prior, kernel="streamed", backend="numpy")
    np.testing.assert_array_equal(res.labels, ref.labels)
    np.testing.assert_array_equal(res.log_v, ref.log_v)
    np.testing.assert_array_equal(res.heads[0].target_sizes, [91, 91, 61, 30, 30])
    # integer sizes are taken as given, in any library; no prior: the equipartition
    sizes = np.array([100, 80, 60, 40, 23])
    assert (_driver.target_sizes(303, sizes, sizes / 303.0) == sizes).all()
    np.testing.assert_array_equal(_driver.target_sizes(303, None, np.full(5, 0.2)), [61, 61, 61, 60, 60])


# -- the stored kernel's partial rebuilds and the coarse start --------------------------------


def _spy(B, name):
    """Count the calls of B.<name> (a fresh backend instance: get_backend caches them)."""
    calls = []
    fn = getattr(B, name)

    def spy(*args, **kw):
        calls.append(args[0].shape)
        return fn(*args, **kw)

    setattr(B, name, spy)
    return calls


@pytest.mark.parametrize("backend", ["numpy", "numba"])
def test_partial_rebuilds_stay_honest(backend, monkeypatch):
    from sinklabel._iteration import _StoredKernel

    if backend == "numba":
        pytest.importorskip("numba")
    S = make_scores(5000, 50, kind="realistic", seed=1)
    B = type(sinklabel.backends.get_backend(backend))()
    calls = _spy(B, "build_rows")
    res = sinklabel.solve(S, 25.0, backend=B, balanced=False)
    assert calls, "expected a partial rebuild on this problem"
    h = res.heads[0]
    assert h.converged
    assert_marginals(S, 25.0, h, 1e-3)  # the plan of the potentials, in float64
    # the same problem with every absorption that needs the scores rebuilding all rows
    monkeypatch.setattr(_StoredKernel, "_rows_to_rebuild", lambda self, A, b_up: None)
    B2 = type(B)()
    full = _spy(B2, "build_rows")
    res2 = sinklabel.solve(S, 25.0, backend=B2, balanced=False)
    assert not full and res2.heads[0].converged
    assert_marginals(S, 25.0, res2.heads[0], 1e-3)


def _coarse_everywhere(monkeypatch):
    import sinklabel._iteration as it

    monkeypatch.setattr(it, "COARSE_MIN_ENTRIES", 0)


def test_coarse_start_is_used_deterministic_and_honest(monkeypatch, caplog):
    _coarse_everywhere(monkeypatch)
    S = make_scores(20000, 100, kind="neginf", seed=2)
    with caplog.at_level(logging.INFO, logger="sinklabel"):
        res = sinklabel.solve(S, 25.0, balanced=False)
    assert any("coarse start" in m and "not used" not in m for m in caplog.messages)
    h = res.heads[0]
    assert h.converged
    assert_marginals(S, 25.0, h, 1e-3)
    again = sinklabel.solve(S, 25.0, balanced=False)
    np.testing.assert_array_equal(again.heads[0].log_v, h.log_v)


@pytest.mark.parametrize("why", ["init", "tol", "plain", "few points"])
def test_coarse_start_only_for_cold_accelerated_solves(why, monkeypatch, caplog):
    _coarse_everywhere(monkeypatch)
    from sinklabel._iteration import COARSE_FRACTION, COARSE_POINTS

    few = COARSE_FRACTION * COARSE_POINTS * 100 - 1000  # fewer points per cluster than it needs
    S = make_scores(20000 if why != "few points" else few, 100, seed=3)
    kw = {"init": np.zeros(100)} if why == "init" else {}
    kw.update({"tol": 0.3} if why == "tol" else {})
    kw.update({"acceleration": None} if why == "plain" else {})
    with caplog.at_level(logging.INFO, logger="sinklabel"):
        sinklabel.solve(S, 25.0, balanced=False, max_iter=20000, **kw)
    assert not any("coarse start" in m for m in caplog.messages)


def test_coarse_start_skips_a_sample_that_misses_a_cluster(monkeypatch, caplog):
    # cluster 7 is reachable by 40 points only, none of them in the sample: the sample is
    # not tried, and the solve starts cold
    _coarse_everywhere(monkeypatch)
    n, k = 20000, 100
    S = make_scores(n, k, seed=4)
    from sinklabel._iteration import COARSE_FRACTION

    sample = np.random.default_rng(0).choice(n, n // COARSE_FRACTION, replace=False)
    outside = np.setdiff1d(np.arange(n), sample)[:40]
    S[:, 7] = -np.inf
    S[outside, 7] = -1.0
    prior = np.full(k, (1 - 20 / n) / (k - 1))
    prior[7] = 20 / n  # 20 points' worth, of the 40 that can reach it
    B = type(sinklabel.backends.get_backend("numpy"))()
    sweeps = _spy(B, "sweep")
    with caplog.at_level(logging.INFO, logger="sinklabel"):
        res = sinklabel.solve(S, 25.0, prior=prior, balanced=False, backend=B)
    assert not any("coarse start" in m for m in caplog.messages)
    assert all(shape[0] == n for shape in sweeps)  # no sweep of a sample
    assert res.heads[0].converged
    assert_marginals(S, 25.0, res.heads[0], 1e-3, r=prior)
