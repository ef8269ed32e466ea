"""Exactly balanced labels over gloo ranks (sinklabel._balanced_ranks): the optimum of the
concatenated problem, exact global sizes, certified on every rank, rank 0 holding only
the gathered pairs.

One session of 4 spawned processes (127.0.0.1, one thread each; the helpers of
tests/test_distributed.py) runs every case on 2, 3 or 4 ranks with uneven shards, through
``balance_head_over_ranks`` (the per-head protocol the front door calls) and once through
``sinklabel.distributed.solve``; the tests compare each rank's results with the
single-process balanced step and POT's exact LP on the concatenated scores.
"""

from __future__ import annotations

import os
import pickle
import warnings
from datetime import timedelta

import numpy as np
import pytest

import sinklabel
from sinklabel._balanced import balance
from sinklabel._sizes import integer_sizes
from sinklabel.problems import make_scores

torch = pytest.importorskip("torch")
dist = pytest.importorskip("torch.distributed")
pytest.importorskip("ot")
if not (dist.is_available() and dist.is_gloo_available()):
    pytest.skip("torch.distributed with gloo is not available", allow_module_level=True)

from sinklabel import _balanced_ranks as sbr  # noqa: E402
from sinklabel import distributed as sd  # noqa: E402
from sinklabel.backends._distributed import Exchange  # noqa: E402
from tests.test_distributed import WORLD, host, run_ranks, shards  # noqa: E402

GROUP_TIMEOUT = 60
MEMBERS = {2: [0, 1], 3: [0, 1, 2], 4: [0, 1, 2, 3]}

# name: the concatenated problem, its shards (rank order) and how the step starts
CASES = {
    # K does not divide N, -inf pairs, float32: sizes N // K or N // K + 1
    "neginf2": dict(n=1003, k=20, kind="neginf", seed=31, sizes=[800, 203]),
    # an integer prior, float64, a rank with one point
    "int3": dict(n=1200, k=30, kind="realistic", seed=32, sizes=[1, 700, 499], prior="int", dtype=np.float64),
    # K does not divide N, collapsed scores, a rank with 5 points
    "collapsed4": dict(n=907, k=16, kind="collapsed", seed=33, sizes=[300, 5, 402, 200]),
    # a probability prior (largest-remainder sizes), -inf pairs
    "dirichlet3": dict(n=640, k=12, kind="neginf", seed=34, sizes=[200, 240, 200], prior="dirichlet"),
    # two candidates per point: the restricted problem is solved, but a few points are
    # short of their best cluster, and only those are sent again
    "resend3": dict(n=600, k=24, kind="realistic", seed=35, sizes=[250, 150, 200], m=2),
    # a cold start (all prices 0): the first restricted problems admit no labelling with
    # these sizes, and every point is sent again with more clusters
    "cold2": dict(n=500, k=24, kind="collapsed", seed=38, sizes=[120, 380], cold=True, m=2),
    # many clusters: rank 0 holds a small fraction of the N x K pairs
    "wide2": dict(n=3001, k=300, kind="realistic", seed=36, sizes=[1500, 1501]),
    # -inf pairs on 4 ranks, K not dividing N, an integer prior
    "neginf4": dict(n=1001, k=10, kind="neginf", seed=37, sizes=[260, 1, 400, 340], prior="int"),
}
LAM = 25.0


def case_problem(name):
    """(scores, prior or None, log_v of a single-process Sinkhorn solve, target sizes)."""
    c = CASES[name]
    n, k = c["n"], c["k"]
    S = make_scores(n, k, kind=c["kind"], seed=c["seed"], dtype=c.get("dtype", np.float32))
    prior = None
    rng = np.random.default_rng(c["seed"])
    if c.get("prior") == "int":
        prior = rng.multinomial(n - k, np.full(k, 1 / k)) + 1
    elif c.get("prior") == "dirichlet":
        prior = rng.dirichlet(np.full(k, 3.0))
    if c.get("cold"):
        log_v = np.zeros(k)
    else:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", sinklabel.ConvergenceWarning)
            log_v = np.asarray(sinklabel.solve(S, LAM, tol=1e-2, prior=prior, balanced=False).log_v)
    return S, prior, log_v, integer_sizes(n, prior, k)


def scenario_head(name):
    def run(rank, group):
        c = CASES[name]
        S, prior, log_v, target = case_problem(name)
        counts = np.array(c["sizes"], dtype=np.int64)
        local = shards(S, c["sizes"], rank)
        saved = sbr._CANDIDATES
        sbr._CANDIDATES = c.get("m", saved)
        ex = Exchange(group)
        try:
            got = sbr.balance_head_over_ranks(ex, local, log_v, LAM, target, prior is None, counts)
        finally:
            sbr._CANDIDATES = saved
        return dict(got, comm=ex.stats())

    return run


def scenario_front_door(rank, group):
    """sinklabel.distributed.solve(balanced=True), torch float32 shards."""
    c = CASES["collapsed4"]
    S, _, _, _ = case_problem("collapsed4")
    res = sd.solve(torch.from_numpy(shards(S, c["sizes"], rank)), lam=LAM, balanced=True, group=group)
    h = res.heads[0]
    return dict(
        labels=host(res.labels), certified=h.certified, gap=h.gap, sizes=h.sizes, objective=h.objective
    )


SCENARIOS = [(name, len(c["sizes"]), scenario_head(name)) for name, c in CASES.items()]
SCENARIOS.append(("front_door", 4, scenario_front_door))


def _worker(rank, port, out_dir):
    os.environ["GLOO_SOCKET_IFNAME"] = "lo"
    torch.set_num_threads(1)
    warnings.simplefilter("ignore")
    dist.init_process_group(
        "gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=WORLD,
        timeout=timedelta(seconds=GROUP_TIMEOUT),
    )  # fmt: skip
    groups = {4: None, 2: dist.new_group(MEMBERS[2]), 3: dist.new_group(MEMBERS[3])}
    results = {}
    for name, world, fn in SCENARIOS:
        if rank not in MEMBERS[world]:
            continue
        try:
            results[name] = ("ok", fn(rank, groups[world]))
        except Exception as exc:
            results[name] = ("raised", f"{type(exc).__name__}: {exc}")
        with open(os.path.join(out_dir, f"{rank}.pkl"), "wb") as fh:
            pickle.dump(results, fh)
    dist.destroy_process_group()


@pytest.fixture(scope="module")
def session():
    """Every rank's results, {scenario: ("ok", value) or ("raised", message)}."""
    return run_ranks(_worker)


def outs_of(session, name, world):
    outs = []
    for r in MEMBERS[world]:
        got = session[r].get(name)
        assert got is not None and got[0] == "ok", f"rank {r}, {name}: {got}"
        outs.append(got[1])
    return outs


@pytest.mark.parametrize("name", sorted(CASES))
def test_the_optimum_of_the_concatenated_problem(session, name):
    from sinklabel.exact import objective, solve_exact

    c = CASES[name]
    n, k = c["n"], c["k"]
    S, prior, log_v, target = case_problem(name)
    outs = outs_of(session, name, len(c["sizes"]))
    labels = np.concatenate([o["labels"] for o in outs])
    sizes = np.bincount(labels, minlength=k)
    for o, size in zip(outs, c["sizes"]):  # global results, identical on every rank
        assert o["labels"].shape == (size,)
        assert o["certified"] and 0.0 <= o["gap"] <= 1e-9
        for key in ("gap", "objective", "rounds", "points_gathered", "scores_gathered"):
            assert o[key] == outs[0][key], key
        np.testing.assert_array_equal(o["sizes"], sizes)
    if prior is None:  # N // K or N // K + 1, the optimiser's choice
        assert sizes.sum() == n and sizes.min() >= n // k and sizes.max() <= -(-n // k)
    else:
        np.testing.assert_array_equal(sizes, target)
    assert outs[0]["objective"] == pytest.approx(objective(S, labels), rel=1e-12)
    # the single-process balanced step on the concatenation, from the same prices
    single = balance(S, target, -log_v / LAM, flexible=prior is None)
    assert single.certified
    assert outs[0]["objective"] == pytest.approx(objective(S, single.labels), rel=1e-9, abs=1e-12)
    # and the exact LP (POT)
    exact = solve_exact(S, prior=prior)
    assert outs[0]["objective"] == pytest.approx(exact.objective, rel=1e-9, abs=1e-12)
    assert outs[0]["status"] == "optimal" and all(o["status"] is None for o in outs[1:])


def test_points_failing_the_certificate_are_sent_again(session):
    c = CASES["resend3"]
    outs = outs_of(session, "resend3", 3)
    info = outs[0]
    assert info["rounds"] > 1 and info["certified"]
    # later rounds resend only the points short of their best cluster, not all of them
    assert c["n"] < info["points_gathered"] < info["rounds"] * c["n"]
    assert info["scores_gathered"] < c["n"] * c["k"]
    received = outs[0]["comm"]["received_bytes"]["balanced_gather"]
    assert received == sum(o["comm"]["bytes"]["balanced_gather"] for o in outs[1:])
    cold = outs_of(session, "cold2", 2)[0]
    assert cold["rounds"] > 1 and cold["certified"]


def test_rank_zero_holds_the_gathered_pairs_not_n_by_k(session):
    c = CASES["wide2"]
    outs = outs_of(session, "wide2", 2)
    dense = c["n"] * c["k"] * 4  # the float32 N x K that rank 0 used to fill
    pairs = outs[0]["scores_gathered"]
    assert pairs < c["n"] * c["k"] / 20
    # CSR: an int64 row pointer, an int32 column and a float32 score per pair (at most)
    assert outs[0]["root_pairs_bytes"] <= (c["n"] + 1) * 8 + pairs * 8
    assert outs[0]["root_pairs_bytes"] < dense / 10
    assert outs[1]["root_pairs_bytes"] is None


def test_through_the_distributed_front_door(session):
    c = CASES["collapsed4"]
    S, _, _, _ = case_problem("collapsed4")
    outs = outs_of(session, "front_door", 4)
    labels = np.concatenate([o["labels"] for o in outs])
    ref = sinklabel.solve(S, LAM, balanced=True)
    assert ref.heads[0].certified
    for o in outs:
        assert o["certified"] and o["gap"] <= 1e-9 and o["objective"] == outs[0]["objective"]
        np.testing.assert_array_equal(o["sizes"], np.bincount(labels, minlength=c["k"]))
    assert outs[0]["objective"] == pytest.approx(ref.objective, rel=1e-9)


def test_the_pair_store_merges_resent_points():
    """_Gathered: what the ranks sent, as rows of a dense matrix with -inf elsewhere; a point
    sent again with more clusters keeps the union of its pairs, each once."""
    from sinklabel._auction import rows_block

    n, k = 7, 10
    S = make_scores(n, k, kind="neginf", seed=5)
    prices = np.random.default_rng(0).normal(size=k)
    store = sbr._Gathered(n, k, S.dtype)
    want = np.full((n, k), -np.inf)

    def send(rows, offset, m):
        part = sbr._candidates(S[offset:], rows, prices, m)
        store.add(part.ravel(), offset, m)
        width = sbr._width(m, k)
        for row in part.reshape(-1, width):
            i = int(row[0]) + offset
            if width == 1 + k:
                want[i] = S[i]
            else:
                cols = row[1 : 1 + m].astype(int)
                want[i, cols] = S[i, cols]

    send(np.arange(4), 0, 2)  # rank 0: points 0-3, two clusters each
    send(np.arange(3), 4, 2)  # rank 1: points 4-6
    send(np.array([1, 3]), 0, 4)  # points 1 and 3 again, four clusters
    send(np.array([2]), 4, 8)  # point 6 again, its whole row (2 * 8 >= K)
    np.testing.assert_array_equal(rows_block(store.rows(), np.arange(n)), want)
    assert store.cols.size == np.isfinite(want).sum()
    assert all(np.all(np.diff(store.cols[a:b]) > 0) for a, b in zip(store.indptr, store.indptr[1:]))
