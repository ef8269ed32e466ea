"""Exactly balanced labels: the LP optimum (against POT's ot.emd), its certificate, the fallback."""

import warnings

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import sinklabel
from sinklabel._auction import HAVE_NUMBA, kernels
from sinklabel._balanced import CERT_RTOL, balance
from sinklabel._sizes import integer_sizes
from sinklabel.exact import objective, solve_exact
from sinklabel.problems import make_scores

pytest.importorskip("ot")


def sinkhorn_prices(S, lam=25.0, prior=None):
    """The warm start the driver uses: -log_v / lam of a (loose) Sinkhorn solve."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", sinklabel.ConvergenceWarning)
        res = sinklabel.solve(S, lam, tol=1e-2, prior=prior)
    return -np.asarray(res.log_v) / lam


def dual_bound(S, prices, sizes, flexible):
    """D(p), written out densely: an upper bound on sum_i S[i, y_i] for every labelling
    with these sizes (any sizes N // K or N // K + 1 if ``flexible``)."""
    n, k = S.shape
    with np.errstate(invalid="ignore"):
        best = np.max(S.astype(np.float64) - prices, axis=1).sum()
    if flexible:
        base, extra = divmod(n, k)
        return best + base * prices.sum() + np.sort(prices)[::-1][:extra].sum()
    used = sizes > 0
    return best + np.dot(sizes[used], prices[used])


def assert_optimal(S, labels, sizes, prior=None, rtol=1e-9):
    """Sizes exact and the objective equal to the exact LP's (POT ot.emd)."""
    n, k = S.shape
    ex = solve_exact(S, prior=prior)
    if prior is None and n % k:
        assert sizes.min() >= n // k and sizes.max() <= n // k + 1 and sizes.sum() == n
    else:
        np.testing.assert_array_equal(sizes, ex.sizes)
    np.testing.assert_array_equal(np.bincount(labels, minlength=k), sizes)
    assert objective(S, labels) == pytest.approx(ex.objective, rel=rtol, abs=1e-12)


CASES = [(2000, 20, None), (2003, 20, None), (1500, 7, "dirichlet"), (1000, 12, "int"), (997, 3, None)]


def make_prior(kind, n, k, seed):
    if kind == "dirichlet":
        return np.random.default_rng(seed).dirichlet(np.full(k, 2.0))
    if kind == "int":
        sizes = np.random.default_rng(seed).multinomial(n - k, np.full(k, 1 / k)) + 1
        return sizes.astype(np.int64)
    return None


@pytest.mark.parametrize("kind", ["realistic", "collapsed", "neginf"])
@pytest.mark.parametrize("n,k,prior_kind", CASES)
def test_labels_are_the_lp_optimum(kind, n, k, prior_kind):
    S = make_scores(n, k, kind=kind, seed=n + k)
    prior = make_prior(prior_kind, n, k, seed=k)
    flexible = prior is None
    out = balance(S, integer_sizes(n, prior, k), sinkhorn_prices(S, prior=prior), flexible=flexible)
    assert out.status == "optimal" and out.certified
    assert_optimal(S, out.labels, out.sizes, prior)
    # the certificate: the reported gap is D(p) minus the labels' sum, recomputed densely
    D = dual_bound(S, out.prices, integer_sizes(n, prior, k), flexible)
    primal = S[np.arange(n), out.labels].astype(np.float64).sum()
    assert D >= primal - 1e-9 * abs(primal)
    assert (D - primal) / n == pytest.approx(out.gap, abs=1e-10 * abs(primal) / n)
    assert 0.0 <= out.gap <= CERT_RTOL


def test_through_solve_objective_sizes_and_certificate():
    S = make_scores(2003, 20, seed=5)
    res = sinklabel.solve(S, 25.0, balanced=True)
    h = res.heads[0]
    assert h.balanced and h.certified and 0.0 <= h.gap <= 1e-9
    ex = solve_exact(S)
    assert res.objective == pytest.approx(ex.objective, rel=1e-9)
    np.testing.assert_array_equal(h.sizes, np.bincount(res.labels, minlength=20))
    # with K not dividing N, target_sizes is the optimiser's choice of which clusters get one more
    np.testing.assert_array_equal(h.target_sizes, h.sizes)
    assert sorted(set(h.sizes.tolist())) == [100, 101] and h.sizes.sum() == 2003
    assert "balanced (certified optimal" in res.report()
    default = sinklabel.solve(S, 25.0)  # balanced labels are the default
    assert default.heads[0].balanced
    np.testing.assert_array_equal(default.labels, res.labels)
    plain = sinklabel.solve(S, 25.0, balanced=False)
    assert not plain.heads[0].balanced and plain.heads[0].certified is None
    assert plain.heads[0].gap is None and plain.sizes.max() > 101  # argmax sizes are a few % off


def test_default_falls_back_to_argmax_where_balanced_is_undefined():
    S = make_scores(500, 5, seed=1)
    with_weights = sinklabel.solve(S, 25.0, weights=np.linspace(1, 2, 500))
    assert not with_weights.heads[0].balanced
    with pytest.raises(ValueError, match="`weights` is not supported with balanced=True"):
        sinklabel.solve(S, 25.0, weights=np.linspace(1, 2, 500), balanced=True)
    # equal weights are no weights: balanced labels, those of the unweighted solve
    equal = sinklabel.solve(S, 25.0, weights=np.full(500, 3.0), balanced=True)
    assert equal.heads[0].balanced and equal.heads[0].certified
    np.testing.assert_array_equal(equal.labels, sinklabel.solve(S, 25.0).labels)
    with pytest.raises(TypeError, match="`balanced` must be True, False or None"):
        sinklabel.solve(S, 25.0, balanced="yes")


def test_prior_sizes_through_solve():
    S = make_scores(1200, 6, kind="collapsed", seed=2)
    prior = np.array([0.3, 0.25, 0.2, 0.15, 0.1, 0.0])  # an empty cluster too
    res = sinklabel.solve(S, 25.0, prior=prior, balanced=True)
    np.testing.assert_array_equal(res.sizes, integer_sizes(1200, prior, 6))
    assert res.heads[0].certified
    assert res.objective == pytest.approx(solve_exact(S, prior=prior).objective, rel=1e-9)


def test_multi_head_each_head_balanced():
    a = make_scores(900, 9, seed=1)
    b = make_scores(900, 4, kind="neginf", seed=2)
    res = sinklabel.solve([a, b], 25.0, balanced=True, prior=[None, np.array([0.4, 0.3, 0.2, 0.1])])
    assert res.multi_head and all(h.balanced and h.certified for h in res.heads)
    assert_optimal(a, res.labels[0], res.heads[0].sizes)
    assert_optimal(b, res.labels[1], res.heads[1].sizes, prior=np.array([0.4, 0.3, 0.2, 0.1]))
    stacked = sinklabel.assign(np.stack([a, a[::-1]]), 25.0, balanced=True)
    assert stacked.shape == (2, 900)
    # permuting the points permutes the optimum (its objective, at least: ties may differ)
    assert objective(a[::-1], stacked[1]) == pytest.approx(objective(a, stacked[0]), rel=1e-12)


def test_row_constants_and_cold_start_change_nothing():
    S = make_scores(800, 8, seed=4).astype(np.float64)
    shift = np.random.default_rng(0).normal(size=(800, 1)) * 5
    warm = balance(S, integer_sizes(800, None, 8), sinkhorn_prices(S))
    cold = balance(S + shift, integer_sizes(800, None, 8), np.zeros(8))
    assert warm.certified and cold.certified
    assert objective(S, cold.labels) == pytest.approx(objective(S, warm.labels), rel=1e-12)


@st.composite
def small_problems(draw):
    k = draw(st.integers(2, 5))
    n = draw(st.integers(k, 40))
    seed = draw(st.integers(0, 2**31))
    rng = np.random.default_rng(seed)
    S = np.log(rng.dirichlet(np.full(k, draw(st.sampled_from([0.3, 1.0, 5.0]))), size=n))
    if draw(st.booleans()):  # forbidden pairs; every point keeps its favourite
        mask = rng.random((n, k)) < 0.3
        mask[np.arange(n), S.argmax(1)] = False
        S[mask] = -np.inf
    prior = None
    if draw(st.booleans()):
        prior = rng.multinomial(n, rng.dirichlet(np.ones(k))).astype(np.int64)
    return S, prior


@settings(max_examples=60, deadline=None)
@given(small_problems())
def test_small_problems_match_the_exact_lp(prob):
    S, prior = prob
    n, k = S.shape
    try:
        ex = solve_exact(S, prior=prior)
    except ValueError:  # the sizes cannot avoid the -inf pairs
        out = balance(S, integer_sizes(n, prior, k), np.zeros(k), flexible=prior is None, max_bids=5000)
        assert out.status != "optimal" and not out.certified
        np.testing.assert_array_equal(np.bincount(out.labels, minlength=k), out.sizes)
        return
    out = balance(S, integer_sizes(n, prior, k), np.zeros(k), flexible=prior is None)
    assert out.certified
    assert objective(S, out.labels) == pytest.approx(ex.objective, rel=1e-9, abs=1e-12)
    if prior is not None:
        np.testing.assert_array_equal(out.sizes, prior)


def test_fallback_is_exactly_balanced_with_an_honest_gap():
    S = make_scores(2000, 20, kind="collapsed", seed=3)
    sizes = integer_sizes(2000, None, 20)
    out = balance(S, sizes, np.zeros(20), max_bids=50)  # far too few bids to finish
    assert out.status == "budget"
    np.testing.assert_array_equal(out.sizes, sizes)
    D = dual_bound(S, out.prices, sizes, False)
    primal = S[np.arange(2000), out.labels].astype(np.float64).sum()
    assert out.gap == pytest.approx((D - primal) / 2000, rel=1e-9)
    ex = solve_exact(S)
    # the gap bounds the distance to the optimum
    assert 0 <= objective(S, out.labels) - ex.objective <= out.gap * (1 + 1e-9) + 1e-12
    assert out.certified == (out.gap <= CERT_RTOL)


def test_uncertified_labels_warn_and_stay_balanced(monkeypatch):
    import sinklabel._balanced as mod

    real = mod.balance
    monkeypatch.setattr(mod, "balance", lambda *a, **kw: real(*a, **{**kw, "max_bids": 10}))
    S = make_scores(1000, 10, seed=8)
    with pytest.warns(sinklabel.ConvergenceWarning, match="not certified optimal"):
        res = sinklabel.solve(S, 25.0, balanced=True)
    h = res.heads[0]
    assert h.balanced and h.certified is False and h.gap > 0
    np.testing.assert_array_equal(h.sizes, np.full(10, 100))
    assert "NOT certified" in res.report()


def test_infeasible_sizes_are_reported_not_hidden():
    S = np.log(np.random.default_rng(0).dirichlet(np.ones(2), size=6))
    S[1:, 0] = -np.inf  # cluster 0 needs 3 points but only point 0 may go there
    out = balance(S, np.array([3, 3]), np.zeros(2), max_bids=2000)
    assert out.status != "optimal" and not out.certified and out.gap == np.inf
    np.testing.assert_array_equal(out.sizes, [3, 3])


@pytest.mark.skipif(not HAVE_NUMBA, reason="compares the numba and numpy engines")
def test_numpy_engine_matches_numba():
    S = make_scores(1003, 10, kind="neginf", seed=6)
    p0 = sinkhorn_prices(S)
    a = balance(S, integer_sizes(1003, None, 10), p0, flexible=True, engine="numba")
    b = balance(S, integer_sizes(1003, None, 10), p0, flexible=True, engine="numpy")
    assert a.certified and b.certified
    assert objective(S, b.labels) == pytest.approx(objective(S, a.labels), rel=1e-12)
    assert_optimal(S, b.labels, b.sizes)


def test_torch_input_gives_torch_labels():
    torch = pytest.importorskip("torch")
    S = make_scores(600, 6, seed=9)
    res = sinklabel.solve(torch.from_numpy(S), 25.0, balanced=True)
    assert isinstance(res.labels, torch.Tensor) and res.heads[0].certified
    assert_optimal(S, res.labels.numpy(), res.heads[0].sizes)


def test_cli_balanced_flag(tmp_path, capsys):
    from sinklabel.cli import main

    S = make_scores(1001, 10, seed=3)
    path = tmp_path / "s.npy"
    np.save(path, S)
    out = tmp_path / "l.npy"
    assert main(["assign", str(path), "-o", str(out), "--balanced"]) == 0
    labels = np.load(out)
    assert_optimal(S, labels, np.bincount(labels, minlength=10))
    assert "balanced (certified optimal" in capsys.readouterr().out
    assert main(["assign", str(path), "-o", str(out)]) == 0  # the default
    np.testing.assert_array_equal(np.load(out), labels)
    capsys.readouterr()
    assert main(["assign", str(path), "-o", str(out), "--no-balanced"]) == 0
    assert "balanced (" not in capsys.readouterr().out
    np.testing.assert_array_equal(np.load(out), sinklabel.assign(S, 25.0, balanced=False))


@pytest.mark.slow
def test_twenty_thousand_by_one_hundred_from_a_cold_start():
    # the largest size of the issue, K not dividing N, -inf pairs, and no warm start
    # (all prices 0): the auction's first phase raises its epsilon out of the price war
    S = make_scores(20_003, 100, kind="neginf", seed=11)
    out = balance(S, integer_sizes(20_003, None, 100), np.zeros(100), flexible=True)
    assert out.status == "optimal" and out.certified
    assert_optimal(S, out.labels, out.sizes)


def test_balanced_report_script_parses_and_runs_its_full_warm_start(capsys):
    # benchmarks/balanced_report.py --imagenet --full: the warm start solves the whole problem
    # with the streamed kernel (the old --inplace flag raised TypeError); here at a tiny shape
    import importlib.util
    import pathlib

    pytest.importorskip("psutil")
    path = pathlib.Path(__file__).parents[1] / "benchmarks" / "balanced_report.py"
    spec = importlib.util.spec_from_file_location("balanced_report", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    args = mod.parse_args(["--imagenet", "--full", "--subsample", "5"])
    assert args.imagenet and args.full and args.subsample == 5
    with pytest.raises(SystemExit):
        mod.parse_args(["--inplace"])
    mod.imagenet(3001, 30, 10, full=True)
    out = capsys.readouterr().out
    assert "the full problem, kernel='streamed'" in out and "certified True" in out


def sparse_of(D):
    """SparseRows of the finite entries of a dense matrix (every other pair -inf)."""
    from sinklabel._auction import SparseRows

    rows, cols = np.nonzero(np.isfinite(D))
    indptr = np.concatenate([[0], np.cumsum(np.bincount(rows, minlength=D.shape[0]))])
    return SparseRows(indptr.astype(np.int64), cols.astype(np.int32), D[rows, cols], D.shape[1])


@pytest.mark.parametrize("engine", ["numba", "numpy"] if HAVE_NUMBA else ["numpy"])
@pytest.mark.parametrize("n,k,prior_kind", [(1503, 30, None), (1200, 12, "int"), (900, 9, "dirichlet")])
def test_sparse_rows_give_the_dense_answer(engine, n, k, prior_kind):
    """The auction on SparseRows (rank 0 of a distributed solve) is the auction on the dense
    matrix with -inf on the absent pairs: same labels, prices, gap; the LP optimum."""
    from sinklabel._auction import rows_block

    S = make_scores(n, k, kind="neginf", seed=n)
    prior = make_prior(prior_kind, n, k, seed=3)
    p0 = sinkhorn_prices(S, prior=prior)
    # a restricted problem: each point's 3 best clusters under p0 and a random third of the rest
    keep = np.random.default_rng(1).random((n, k)) < 0.33
    keep[np.arange(n)[:, None], np.argsort(p0 - S, axis=1)[:, :3]] = True
    D = np.where(keep, S, -np.inf).astype(np.float32)
    sp = sparse_of(D)
    np.testing.assert_array_equal(rows_block(sp, np.array([5, 0, n - 1])), D[[5, 0, n - 1]])
    np.testing.assert_array_equal(rows_block(sp, slice(3, 30, 4)), D[3:30:4])
    sizes = integer_sizes(n, prior, k)
    a = balance(D, sizes, p0, flexible=prior is None, engine=engine)
    b = balance(sp, sizes, p0, flexible=prior is None, engine=engine)
    assert a.status == b.status == "optimal" and a.certified and b.certified
    np.testing.assert_array_equal(a.labels, b.labels)
    np.testing.assert_array_equal(a.prices, b.prices)
    assert a.gap == b.gap
    assert_optimal(D, b.labels, b.sizes, prior)


def test_sparse_fallback_is_exactly_balanced():
    S = make_scores(800, 8, kind="collapsed", seed=4)
    D = np.where(np.random.default_rng(2).random(S.shape) < 0.5, S, -np.inf)
    D[np.arange(800), S.argmax(axis=1)] = S.max(axis=1)  # every point keeps one pair
    sizes = integer_sizes(800, None, 8)
    a = balance(D, sizes, np.zeros(8), max_bids=40)
    b = balance(sparse_of(D), sizes, np.zeros(8), max_bids=40)
    assert a.status == b.status == "budget"
    np.testing.assert_array_equal(a.labels, b.labels)
    np.testing.assert_array_equal(b.sizes, sizes)


@pytest.mark.parametrize("prior_kind", [None, "int"])
def test_certificate_terms_add_up_over_shards(prior_kind):
    """The certificate of the summed terms of disjoint shards is that of all points, and
    its gap is D(p) minus the labels' total score, written out densely."""
    from sinklabel._balanced import certificate, certificate_terms

    n, k = 1003, 10
    S = make_scores(n, k, kind="neginf", seed=12)
    prior = make_prior(prior_kind, n, k, seed=2)
    sizes = integer_sizes(n, prior, k)
    flexible = prior is None
    out = balance(S, sizes, sinkhorn_prices(S, prior=prior), flexible=flexible)
    prices = out.prices + np.random.default_rng(0).normal(0, 1e-3, k)  # off-optimal: a real gap
    whole, viol = certificate_terms(S, out.labels, prices)
    cuts = [0, 1, 400, 401, 800, n]
    parts = [certificate_terms(S[a:b], out.labels[a:b], prices) for a, b in zip(cuts, cuts[1:])]
    summed = np.sum([t for t, _ in parts], axis=0)
    np.testing.assert_allclose(summed, whole, rtol=1e-12)
    np.testing.assert_array_equal(np.concatenate([v + a for (_, v), a in zip(parts, cuts)]), viol)
    cert = certificate(summed, prices, sizes, flexible)
    D = dual_bound(S, prices, sizes, flexible)
    primal = S[np.arange(n), out.labels].astype(np.float64).sum()
    assert cert.gap == pytest.approx((D - primal) / n, rel=1e-9) and cert.gap > 1e-6
    assert not cert.certified and viol.size > 0
    np.testing.assert_array_equal(cert.sizes, out.sizes)
    assert cert.objective == pytest.approx(-primal / n, rel=1e-12)
    at_opt = certificate(certificate_terms(S, out.labels, out.prices)[0], out.prices, sizes, flexible)
    assert at_opt.certified and at_opt.gap == out.gap
    # a label on a -inf pair: no finite bound
    bad = out.labels.copy()
    i = np.flatnonzero(np.isneginf(S).any(axis=1))[0]
    bad[i] = np.flatnonzero(np.isneginf(S[i]))[0]
    worst = certificate(certificate_terms(S, bad, out.prices)[0], out.prices, sizes, flexible)
    assert worst.gap == np.inf and not worst.certified and worst.objective == np.inf


@pytest.mark.parametrize("engine", ["numba", "numpy"] if HAVE_NUMBA else ["numpy"])
@pytest.mark.parametrize("n,k", [(1100, 1000), (3000, 37), (500, 2), (200, 1)])
def test_passes_match_a_dense_reference_on_ties_and_neginf(engine, n, k):
    """The full passes (top-2, best and slack) of every layout against numpy on the dense
    matrix: first index of the maximum, the runner-up equal to the best on a tie, -1 and
    -inf on an all -inf row (1100 x 1000 takes the parallel path)."""
    from sinklabel._auction import kernels

    rng = np.random.default_rng(n + k)
    D = rng.integers(-3, 3, (n, k)).astype(np.float32)  # many ties
    D[rng.random((n, k)) < 0.3] = -np.inf
    D[::17] = -np.inf
    minp = rng.integers(0, 2, k).astype(np.float64)
    minp[rng.random(k) < 0.1] = np.inf  # clusters without slots
    X = D.astype(np.float64) - minp
    dead = ~(X.max(axis=1) > -np.inf)
    labels = rng.choice(np.flatnonzero(np.isfinite(minp)), n)  # clusters with slots
    rows = np.arange(0, n, 3)
    paid = rng.standard_normal(rows.size)
    for S in (D, D.astype(np.float64), sparse_of(D)):
        kern = kernels(engine, S)
        k1, v1, v2 = np.empty(n, np.int64), np.empty(n), np.empty(n)
        kern.top2_pass(S, minp, k1, v1, v2)
        np.testing.assert_array_equal(k1, np.where(dead, -1, X.argmax(axis=1)))
        np.testing.assert_array_equal(v1, X.max(axis=1))
        np.testing.assert_array_equal(v2[~dead], np.sort(X, axis=1)[~dead, -2] if k > 1 else -np.inf)
        best, own = np.empty(n), np.empty(n)
        kern.best_pass(S, minp, labels, best, own)
        np.testing.assert_array_equal(best, X.max(axis=1))
        np.testing.assert_array_equal(own, D[np.arange(n), labels])
        slack = np.empty(rows.size)
        with np.errstate(invalid="ignore"):
            kern.slack(S, rows, labels[rows], paid, minp, slack)
            Y = X[rows].copy()
            Y[np.arange(rows.size), labels[rows]] = -np.inf
            want = Y.max(axis=1) - (D[rows, labels[rows]] - paid)
        np.testing.assert_allclose(slack, want, rtol=1e-12, atol=1e-12)  # fastmath may reassociate


@pytest.mark.skipif(not HAVE_NUMBA, reason="numba's disk cache")
def test_parallel_passes_are_cached_apart_from_their_serial_twins():
    """numba's disk cache keys a function by module, name, first line and signature, not
    by ``parallel``: twins of one name loaded whichever was compiled first for both (the
    full passes then ran on one core wherever a small problem had compiled them first)."""
    kern = kernels("numba", np.zeros((4, 3), np.float32))
    for name in ("top2_pass", "best_pass", "slack"):
        pass_ = getattr(kern, name)
        serial, parallel = pass_.serial.py_func, pass_.parallel.py_func
        assert serial.__code__ is parallel.__code__  # one source
        assert parallel.__qualname__ != serial.__qualname__
        assert pass_.parallel.targetoptions.get("parallel") and not pass_.serial.targetoptions.get("parallel")


@pytest.mark.parametrize("engine", ["numba", "numpy"] if HAVE_NUMBA else ["numpy"])
@pytest.mark.parametrize("n,k", [(5000, 7), (70000, 40), (300, 1)])
def test_seed_matches_a_sort_by_cluster_margin_and_index(engine, n, k):
    """The argmax seed against its definition (one lexsort of all points): ties in the
    margin, runner-ups at -inf, unreachable points and clusters without room included
    (70,000 points take the parallel path)."""
    rng = np.random.default_rng(n + k)
    k1 = rng.integers(-1, k, n) if k > 1 else np.where(rng.random(n) < 0.1, -1, 0)
    k1[rng.random(n) < 0.3] = min(1, k - 1)  # one popular cluster
    v1 = rng.integers(0, 4, n).astype(np.float64)
    v2 = v1 - rng.integers(0, 3, n)  # ties in the margin
    v2[rng.random(n) < 0.05] = -np.inf
    p0 = rng.standard_normal(k)
    room = rng.multinomial(n, np.full(k, 1 / k)) if k > 1 else np.array([n])
    room[rng.random(k) < 0.2] = 0
    start = np.concatenate([[0], np.cumsum(room)[:-1]])
    slots = int(room.sum())
    big = 99.0

    # the definition
    reach = np.flatnonzero(k1 >= 0)
    margin = np.where(np.isfinite(v1[reach] - v2[reach]), v1[reach] - v2[reach], big)
    order = np.lexsort((-margin, k1[reach]))
    pts, ks, mg = reach[order], k1[reach][order], margin[order]
    rank = np.arange(pts.size) - np.searchsorted(ks, np.arange(k))[ks]
    keep = rank < room[ks]
    price_want = np.repeat(p0, room)
    holder_want = np.full(slots, -1)
    slot = start[ks[keep]] + room[ks[keep]] - 1 - rank[keep]
    price_want[slot] = p0[ks[keep]] + mg[keep]
    holder_want[slot] = pts[keep]
    waiting_want = np.concatenate([pts[~keep], np.flatnonzero(k1 < 0)])

    price, holder = np.repeat(p0, room), np.full(slots, -1, np.int64)
    slot_of, takers, waiting = np.full(n, -1, np.int64), np.empty(k, np.int64), np.empty(n + 1, np.int64)
    got = kernels(engine).seed(k1, v1, v2, p0, room, start, big, price, holder, slot_of, takers, waiting)
    np.testing.assert_array_equal(price, price_want)
    np.testing.assert_array_equal(holder, holder_want)
    np.testing.assert_array_equal(waiting[:got], waiting_want)
    np.testing.assert_array_equal(takers, np.bincount(ks, minlength=k))
    held = holder >= 0
    np.testing.assert_array_equal(slot_of[holder[held]], np.flatnonzero(held))
    assert np.count_nonzero(slot_of >= 0) == np.count_nonzero(held)


@pytest.mark.parametrize("engine", ["numba", "numpy"] if HAVE_NUMBA else ["numpy"])
def test_span_of_the_sampled_rows(engine):
    rng = np.random.default_rng(3)
    D = rng.standard_normal((1000, 9)).astype(np.float32) * 7
    D[rng.random(D.shape) < 0.3] = -np.inf
    for step in (1, 7, 2000):
        fin = D[::step][np.isfinite(D[::step])].astype(np.float64)
        want = (fin.max() - fin.min(), np.abs(fin).max(), True) if fin.size else (1.0, 1.0, False)
        assert kernels(engine, D).span(D, step) == want
    assert kernels(engine, D).span(np.full((3, 2), -np.inf, np.float32), 1) == (1.0, 1.0, False)
