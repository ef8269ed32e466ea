"""sinklabel.distributed on CPU with gloo: solves over 2, 3 and 4 processes, online codes,
communication per sweep, and failures that must reach every rank.

One session of 4 spawned processes (127.0.0.1 only, one thread each) runs every
scenario in turn, on the default group (4 ranks) or on subgroups of 2 and 3 ranks, and
returns what each rank got; the tests below check those results against single-process
solves of the concatenated scores. Scenarios that break a group come last.
"""

from __future__ import annotations

import os
import pickle
import socket
import tempfile
import time
import warnings
from datetime import timedelta
from types import SimpleNamespace

import numpy as np
import pytest

import sinklabel
from sinklabel.problems import make_scores

from .conftest import assert_marginals

torch = pytest.importorskip("torch")
dist = pytest.importorskip("torch.distributed")
if not (dist.is_available() and dist.is_gloo_available()):
    pytest.skip("torch.distributed with gloo is not available", allow_module_level=True)

from sinklabel import _balanced_ranks as sbr  # noqa: E402
from sinklabel import distributed as sd  # noqa: E402
from sinklabel.backends import get_backend  # noqa: E402
from sinklabel.backends._base import Backend  # noqa: E402
from sinklabel.backends._distributed import DistributedBackend  # noqa: E402

WORLD = 4
GROUP_TIMEOUT = 60  # seconds: the default group's timeout in the session
HANG_TIMEOUT = 3  # seconds: the timeout of the group used to show a hang is bounded

# -- problems: (global scores, shard sizes in rank order, solve keywords) -------------------


def shards(x, sizes, rank):
    start = sum(sizes[:rank])
    return x[start : start + sizes[rank]]


PROBLEMS = {
    # 2 ranks, numpy float64
    "eq2": dict(
        ranks=[0, 1], n=600, k=6, kind="realistic", seed=1, sizes=[473, 127], lam=5.0, dtype=np.float64
    ),
    # 3 ranks, torch float32, two heads, one rank with a single point, point weights
    "eq3": dict(
        ranks=[0, 1, 2],
        n=900,
        k=8,
        kind="realistic",
        seed=2,
        sizes=[1, 517, 382],
        lam=5.0,
        heads=2,
        torch=True,
        weights=True,
        tol=1e-2,
    ),
    # 4 ranks (default group), float32 at lam 25 with clusters nobody likes: absorptions and
    # rescues in the first sweeps; an integer prior; capped, so compared unconverged (plain
    # Sinkhorn: Anderson converges here, and at tol 1e-3 the potentials are pinned only to
    # ~1e-3, so summation order alone moves them more than the 1e-4 compared below)
    "eq4": dict(
        ranks=[0, 1, 2, 3],
        n=400,
        k=8,
        kind="collapsed",
        seed=3,
        sizes=[150, 2, 171, 77],
        lam=25.0,
        int_prior=True,
        max_iter=80,
        acceleration=None,
    ),
}


# balanced=True: exactly balanced labels over the ranks (each rank's shard, one tiny rank)
BALANCED = {
    # 2 ranks, numpy float32, K does not divide N, no prior: 4 candidates of 20 per point
    "bal2": dict(ranks=[0, 1], n=503, k=20, kind="realistic", seed=21, sizes=[500, 3], lam=25.0),
    # 3 ranks, torch float32, a probability prior, one rank with a single point; K = 7:
    # whole rows travel (4 pairs are no shorter)
    "bal3": dict(
        ranks=[0, 1, 2],
        n=301,
        k=7,
        kind="collapsed",
        seed=22,
        sizes=[180, 1, 120],
        lam=10.0,
        prob_prior=True,
        torch=True,
    ),
    # 4 ranks, float64, two heads, an integer prior; one candidate per point at first, so
    # that points are sent again with more candidates over several rounds
    "bal4": dict(
        ranks=[0, 1, 2, 3],
        n=410,
        k=16,
        kind="collapsed",
        seed=23,
        sizes=[200, 2, 150, 58],
        lam=25.0,
        heads=2,
        int_prior=True,
        dtype=np.float64,
        candidates=1,
    ),
}
PROBLEMS.update(BALANCED)

# default arguments (balanced labels) on 2, 3 and 4 ranks with uneven shards
DEFAULT = {
    "def2": dict(ranks=[0, 1], n=451, k=9, kind="realistic", seed=31, sizes=[97, 354], lam=25.0),
    "def3": dict(ranks=[0, 1, 2], n=620, k=12, kind="collapsed", seed=32, sizes=[300, 1, 319], lam=10.0),
    "def4": dict(
        ranks=[0, 1, 2, 3],
        n=733,
        k=16,
        kind="realistic",
        seed=33,
        sizes=[5, 400, 200, 128],
        lam=25.0,
        torch=True,
    ),
}
PROBLEMS.update(DEFAULT)


def problem_data(name):
    p = PROBLEMS[name]
    heads = [
        make_scores(p["n"], p["k"], kind=p["kind"], seed=p["seed"] + t, dtype=p.get("dtype", np.float32))
        for t in range(p.get("heads", 1))
    ]
    S = np.stack(heads) if len(heads) > 1 else heads[0]
    kw = {"lam": p["lam"], **{key: p[key] for key in ("tol", "max_iter", "acceleration") if key in p}}
    if p.get("weights"):
        kw["weights"] = np.random.default_rng(p["seed"]).uniform(0.5, 2.0, p["n"])
    if p.get("int_prior"):
        r = np.random.default_rng(p["seed"]).dirichlet(np.full(p["k"], 20.0))
        sizes = np.floor(r * p["n"]).astype(np.int64)
        sizes[0] += p["n"] - sizes.sum()
        kw["prior"] = sizes
    if p.get("prob_prior"):
        kw["prior"] = np.random.default_rng(p["seed"]).dirichlet(np.full(p["k"], 5.0))
    return S, kw


def local_problem(name, rank):
    p = PROBLEMS[name]
    S, kw = problem_data(name)
    start = sum(p["sizes"][:rank])
    S_local = S[..., start : start + p["sizes"][rank], :]  # this rank's points (every head)
    if "weights" in kw:
        kw["weights"] = shards(kw["weights"], p["sizes"], rank)
    if p.get("torch"):
        S_local = torch.from_numpy(np.ascontiguousarray(S_local))
    return S_local, kw


def host(x):
    return x.detach().cpu().numpy() if hasattr(x, "detach") else np.asarray(x)


def summary(res):
    return {
        "labels": host(res.labels),
        "log_v": [host(h.log_v) for h in res.heads],
        "log_u": [host(h.log_u) for h in res.heads],
        "sizes": [h.sizes for h in res.heads],
        "n_iter": [h.n_iter for h in res.heads],
        "converged": res.converged,
        "objective": [h.objective for h in res.heads],
        "type": type(res.labels).__name__,
        "backend": res.backend,
        "comm": res.extra.get("communication"),
    }


# -- the scenarios, run by every rank of the session in this order --------------------------


class Sabotaged(Backend):
    """An inner backend that misbehaves on its ``when``-th call of ``method``."""

    def __init__(self, inner, method, when, action):
        self.inner, self.method, self.when, self.action, self.calls = inner, method, when, action, 0
        self.name, self.library, self.xp = inner.name, inner.library, inner.xp

    def __getattribute__(self, attr):
        if attr in ("inner", "method", "when", "action", "calls", "name", "library", "xp", "__dict__"):
            return object.__getattribute__(self, attr)
        fn = getattr(self.inner, attr)
        if attr != self.method:
            return fn

        def wrapped(*args, **kwargs):
            self.calls += 1
            out = fn(*args, **kwargs)
            return self.action(out) if self.calls >= self.when else out

        return wrapped


def boom(out):
    raise RuntimeError("boom: this rank's sweep failed")


def nan_log_sweep(out):
    """A log step (with or without the kernel it writes) whose column masses are NaN."""
    a, col, *kernel = out
    return (a, col * np.nan, *kernel)


def die(out):
    os._exit(7)


def scenario_eq(name, rank, group, verify=False):
    S, kw = local_problem(name, rank)
    if verify:  # also exchange the decisions taken on cluster vectors, and compare them
        from sinklabel.backends import _distributed as bd

        saved = bd.DistributedBackend.__init__

        def init(self, *args, **kwargs):
            saved(self, *args, **kwargs)
            self.verify = True

        bd.DistributedBackend.__init__ = init
    try:
        res = sd.solve(S, group=group, **kw)
    finally:
        if verify:
            bd.DistributedBackend.__init__ = saved
    if not res.converged:
        return {"first": summary(res)}
    # warm start from the distributed result: the same as a single-process warm start
    again = sd.solve(S, init=res, group=group, **kw)
    return {"first": summary(res), "again": summary(again)}


def scenario_comm(rank, group):
    """Bytes handed to all_reduce by this rank, counted around torch's own function."""
    counted = {"bytes": 0, "calls": 0}
    original = dist.all_reduce

    def counting(tensor, *args, **kwargs):
        counted["bytes"] += tensor.numel() * tensor.element_size()
        counted["calls"] += 1
        return original(tensor, *args, **kwargs)

    out = []
    dist.all_reduce = counting
    try:
        for n, k, acc in [(100, 8, "anderson"), (1000, 8, "anderson"), (100, 64, "anderson"), (1000, 8, "newton")]:
            S = make_scores(2 * n, k, seed=k)
            counted.update(bytes=0, calls=0)
            res = sd.solve(
                shards(S, [n, n], rank), lam=10.0, max_iter=MAX_ITER_COMM, balanced=False, group=group,
                acceleration=acc,
            )  # fmt: skip
            out.append(dict(n=n, k=k, acc=acc, n_iter=res.n_iter, ours=res.extra["communication"], **counted))
    finally:
        dist.all_reduce = original
    return out


CODES_SIZES = [5, 17, 9]


def codes_data():
    """(key, global batch scores, keywords) of the batch-codes scenario."""
    rng = np.random.default_rng(11)
    big = (rng.normal(size=(31, 6)) * 50).astype(np.float32)  # |s| / temperature up to ~1000
    mild = rng.normal(size=(31, 6)).astype(np.float32)
    return [
        ("big", big, dict(temperature=0.05)),
        ("mild_tol", mild, dict(temperature=0.5, n_iter=200, tol=1e-5)),
        ("hard", big, dict(temperature=0.05, hard=True)),
    ]


def scenario_codes(rank, group):
    out = {}
    for key, scores, kw in codes_data():
        local = torch.from_numpy(shards(scores, CODES_SIZES, rank))
        out[key] = host(sd.batch_codes(local, group=group, **kw))
    return out


def scenario_codes_nan(rank, group):
    s = torch.randn(4, 5)
    if rank == 1:
        s[2, 3] = float("nan")
    return sd.batch_codes(s, group=group)


def scenario_nan_scores(rank, group):
    S, kw = local_problem("eq4", rank)
    S = S.copy()
    if rank == 2:
        S[5, 3] = np.nan
    return sd.solve(S, group=group, **kw)


def scenario_bad_weights(rank, group):
    S, kw = local_problem("eq4", rank)
    w = np.ones(S.shape[0])
    if rank == 3:
        w[0] = -1.0
    return sd.solve(S, weights=w, lam=10.0, max_iter=5, group=group)


def scenario_lam_differs(rank, group):
    S, kw = local_problem("eq4", rank)
    kw["lam"] = 10.0 if rank != 2 else 11.0
    return sd.solve(S, group=group, **kw)


def scenario_balanced(name, rank, group):
    S, kw = local_problem(name, rank)
    saved = sbr._CANDIDATES
    sbr._CANDIDATES = PROBLEMS[name].get("candidates", saved)
    try:
        res = sd.solve(S, balanced=True, group=group, **kw)
    finally:
        sbr._CANDIDATES = saved
    out = summary(res)
    out.update(
        certified=[h.certified for h in res.heads],
        gap=[h.gap for h in res.heads],
        target_sizes=[h.target_sizes for h in res.heads],
        balanced=[h.balanced for h in res.heads],
        info=res.extra["balanced"],
    )
    return out


def scenario_balanced_weights(rank, group):
    S, kw = local_problem("eq4", rank)
    weights = np.linspace(1.0, 2.0, S.shape[0]) if rank == 1 else np.ones(S.shape[0])
    return sd.solve(S, balanced=True, weights=weights, group=group, **kw)


def scenario_uniform_weights(rank, group):
    """Equal weights on every rank are the default: balanced labels, as without weights."""
    S, kw = local_problem("eq2", rank)
    a = sd.solve(S, weights=np.full(S.shape[0], 0.25), group=group, **kw)
    b = sd.solve(S, group=group, **kw)
    return dict(balanced=a.heads[0].balanced, same=bool(np.array_equal(host(a.labels), host(b.labels))))


def scenario_default(name, rank, group):
    """Default arguments, uneven shards: the labels of sinklabel.assign on the concatenation."""
    S, kw = local_problem(name, rank)
    res = sd.solve(S, group=group, **kw)
    return dict(
        labels=host(res.labels),
        balanced=[h.balanced for h in res.heads],
        certified=[h.certified for h in res.heads],
    )


def scenario_streamed(rank, group):
    """kernel="streamed" across ranks: no kernel stored, the same solve."""
    S, kw = local_problem("eq2", rank)
    stored = sd.solve(S, kernel="stored", balanced=False, group=group, **kw)
    streamed = sd.solve(S, kernel="streamed", balanced=False, group=group, **kw)
    return dict(stored=summary(stored), streamed=summary(streamed))


def scenario_callback(rank, group):
    S, kw = local_problem("eq2", rank)
    seen = []
    res = sd.solve(S, callback=seen.append, group=group, **kw)
    return dict(
        errors=[i.error for i in seen], n_iter=[i.n_iter for i in seen], result_errors=res.heads[0].errors
    )


def scenario_balanced_differs(rank, group):
    S, kw = local_problem("eq4", rank)
    return sd.solve(S, balanced=rank != 1, group=group, **kw)


def scenario_balanced_fails(victim, function):
    """``function`` of sinklabel._balanced_ranks raises on rank ``victim`` in the balanced step."""

    def run(rank, group):
        S, kw = local_problem("bal3", rank)
        saved = getattr(sbr, function)
        if rank == victim:
            setattr(sbr, function, lambda *a, **k: boom(None))
        try:
            return sd.solve(S, balanced=True, group=group, **kw)
        finally:
            setattr(sbr, function, saved)

    return run


def scenario_sabotage(problem, backend, method, when, action, victim):
    def run(rank, group):
        S, kw = local_problem(problem, rank)
        inner = get_backend(backend)
        if rank == victim:
            inner = Sabotaged(inner, method, when, action)
        return sd.solve(S, backend=inner, group=group, **kw)

    return run


def scenario_hang(rank, group):
    S, kw = local_problem("eq2", rank)
    if rank == 1:  # alive, but never joins the solve
        time.sleep(HANG_TIMEOUT + 2)
        return "skipped"
    return sd.solve(S, group=group, **kw)


def scenario_not_member(rank, group):
    if rank < 2:
        return "skipped"
    S, kw = local_problem("eq4", rank)
    return sd.solve(S, group=GROUPS["g2"], **kw)  # ranks 2 and 3 are not in it


def scenario_small(rank, group):
    """After every failure above, the default group still carries a solve."""
    S, kw = local_problem("eq4", rank)
    return sd.solve(S, group=group, **{**kw, "max_iter": 3}).n_iter


MAX_ITER_COMM = 30
GROUPS: dict = {}  # the session's process groups, by key (set in each worker)

COARSE = dict(n=2000, k=10, seed=5, sizes=[900, 700, 400], lam=25.0)


def coarse_problem():
    return make_scores(COARSE["n"], COARSE["k"], kind="neginf", seed=COARSE["seed"])


def scenario_coarse(rank, group):
    """The coarse start over 3 ranks (each samples its own shard), forced at this size."""
    import logging

    import sinklabel._iteration as it

    S = shards(coarse_problem(), COARSE["sizes"], rank)
    seen = []
    handler = logging.Handler()
    handler.emit = lambda record: seen.append(record.getMessage())
    logger = logging.getLogger("sinklabel")
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    saved = it.COARSE_MIN_ENTRIES
    it.COARSE_MIN_ENTRIES = 0
    try:
        res = sd.solve(S, COARSE["lam"], group=group)
    finally:
        it.COARSE_MIN_ENTRIES = saved
        logger.removeHandler(handler)
        logger.setLevel(logging.NOTSET)
    return {**summary(res), "coarse": [m for m in seen if "coarse start" in m]}


SCENARIOS = [
    # (name, group key, function(rank, group))
    ("eq2", "g2", lambda r, g: scenario_eq("eq2", r, g)),
    ("eq3", "g3", lambda r, g: scenario_eq("eq3", r, g)),
    ("eq4", None, lambda r, g: scenario_eq("eq4", r, g, verify=True)),
    ("comm", "g2", scenario_comm),
    ("codes", "g3", scenario_codes),
    ("codes_nan", None, scenario_codes_nan),
    ("nan_scores", None, scenario_nan_scores),
    ("bad_weights", None, scenario_bad_weights),
    ("lam_differs", None, scenario_lam_differs),
    ("bal2", "g2", lambda r, g: scenario_balanced("bal2", r, g)),
    ("bal3", "g3", lambda r, g: scenario_balanced("bal3", r, g)),
    ("bal4", None, lambda r, g: scenario_balanced("bal4", r, g)),
    ("balanced_weights", None, scenario_balanced_weights),
    ("uniform_weights", "g2", scenario_uniform_weights),
    ("def2", "g2", lambda r, g: scenario_default("def2", r, g)),
    ("def3", "g3", lambda r, g: scenario_default("def3", r, g)),
    ("def4", None, lambda r, g: scenario_default("def4", r, g)),
    ("streamed", "g2", scenario_streamed),
    ("callback", "g2", scenario_callback),
    ("balanced_differs", None, scenario_balanced_differs),
    ("balanced_root_fails", "g3", scenario_balanced_fails(0, "balance")),
    ("balanced_rank_fails", "g3", scenario_balanced_fails(2, "certificate_terms")),
    ("not_member", None, scenario_not_member),
    ("raises", None, scenario_sabotage("eq4", "numpy", "sweep", 7, boom, victim=1)),
    ("coarse", "g3", scenario_coarse),
    ("nan_midway", "g3", scenario_sabotage("eq3", "torch", "log_sweep_build", 2, nan_log_sweep, victim=2)),
    ("small", None, scenario_small),
    ("hang", "ghang", scenario_hang),
    ("dies", None, scenario_sabotage("eq4", "numpy", "sweep", 5, die, victim=3)),
]


def _worker(rank, port, out_dir):
    os.environ["GLOO_SOCKET_IFNAME"] = "lo"
    torch.set_num_threads(1)
    warnings.simplefilter("ignore")
    dist.init_process_group(
        "gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=WORLD,
        timeout=timedelta(seconds=GROUP_TIMEOUT),
    )  # fmt: skip
    groups = {
        None: None,
        "g2": dist.new_group([0, 1]),
        "g3": dist.new_group([0, 1, 2]),
        "ghang": dist.new_group([0, 1], timeout=timedelta(seconds=HANG_TIMEOUT)),
    }
    GROUPS.update(groups)
    members = {None: range(WORLD), "g2": [0, 1], "g3": [0, 1, 2], "ghang": [0, 1]}
    results = {}
    for name, key, fn in SCENARIOS:
        if rank not in members[key]:
            continue
        t0 = time.perf_counter()
        try:
            results[name] = ("ok", fn(rank, groups[key]), time.perf_counter() - t0)
        except Exception as exc:
            results[name] = ("raised", type(exc).__name__, str(exc), time.perf_counter() - t0)
        with open(os.path.join(out_dir, f"{rank}.pkl"), "wb") as fh:
            pickle.dump(results, fh)
    os._exit(0)  # the default group is broken by the last scenario: no orderly shutdown


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_ranks(worker):
    """Run ``worker(rank, port, out_dir)`` on WORLD spawned processes (10 minutes at most) and
    return each rank's pickled results, in rank order."""
    import multiprocessing as mp

    ctx = mp.get_context("spawn")
    port = _free_port()
    with tempfile.TemporaryDirectory() as out_dir:
        procs = [ctx.Process(target=worker, args=(r, port, out_dir)) for r in range(WORLD)]
        for p in procs:
            p.start()
        deadline = time.time() + 600
        for p in procs:
            p.join(max(1.0, deadline - time.time()))
        for p in procs:
            if p.is_alive():
                p.kill()
        results = []
        for r in range(WORLD):
            with open(os.path.join(out_dir, f"{r}.pkl"), "rb") as fh:
                results.append(pickle.load(fh))
    return results


@pytest.fixture(scope="module")
def session():
    """Every rank's results, {scenario: ("ok", value, seconds) or ("raised", type, message, seconds)}."""
    return run_ranks(_worker)


# -- the tests over the session ---------------------------------------------------------------


def ok(session, name, rank):
    got = session[rank].get(name)
    assert got is not None, f"rank {rank} has no result for {name!r}: {session[rank].keys()}"
    assert got[0] == "ok", f"rank {rank}, {name}: {got}"
    return got[1]


def raised(session, name, rank):
    got = session[rank].get(name)
    assert got is not None and got[0] == "raised", f"rank {rank}, {name}: expected an error, got {got}"
    return got[1], got[2], got[3]


def single_process(name, **extra):
    p = PROBLEMS[name]
    S, kw = problem_data(name)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", sinklabel.ConvergenceWarning)
        return S, kw, sinklabel.solve(torch.from_numpy(S) if p.get("torch") else S, **kw, **extra)


def assert_same_labels(S, lam, labels, ref_labels, ref_log_v):
    """>= 99.9 % identical; any other point is a near-tie under the reference potentials."""
    assert np.mean(labels == ref_labels) >= 0.999
    diff = np.flatnonzero(labels != ref_labels)
    if diff.size:
        X = lam * S[diff].astype(np.float64) + ref_log_v
        gap = np.abs(X[np.arange(diff.size), labels[diff]] - X[np.arange(diff.size), ref_labels[diff]])
        assert gap.max() <= 1e-2, gap.max()


@pytest.mark.parametrize("name", ["eq2", "eq3", "eq4"])
def test_distributed_solve_equals_single_process(session, name):
    p = PROBLEMS[name]
    S, kw, ref = single_process(name)
    outs = [ok(session, name, r)["first"] for r in p["ranks"]]
    heads = S if S.ndim == 3 else S[None]
    for t, h in enumerate(ref.heads):
        labels = np.concatenate([np.atleast_2d(o["labels"])[t] for o in outs])
        assert_same_labels(heads[t], p["lam"], labels, host(h.labels), host(h.log_v))
        # global quantities: equal on every rank, and to the single-process ones
        for o in outs:
            np.testing.assert_array_equal(o["log_v"][t], outs[0]["log_v"][t])
            np.testing.assert_array_equal(o["sizes"][t], outs[0]["sizes"][t])
            assert o["n_iter"] == outs[0]["n_iter"] and o["converged"] == outs[0]["converged"]
            assert o["objective"][t] == outs[0]["objective"][t]
        np.testing.assert_allclose(outs[0]["log_v"][t], host(h.log_v), atol=1e-4)
        log_u = np.concatenate([o["log_u"][t] for o in outs])
        np.testing.assert_allclose(log_u, host(h.log_u), atol=1e-4)
        assert abs(outs[0]["sizes"][t] - h.sizes).sum() <= 2 * (labels != host(h.labels)).sum()
        assert outs[0]["sizes"][t].sum() == p["n"]
        assert outs[0]["objective"][t] == pytest.approx(h.objective, rel=1e-6)
        assert abs(outs[0]["n_iter"][t] - h.n_iter) <= 1
    assert outs[0]["converged"] == ref.converged
    assert outs[0]["type"] == ("Tensor" if p.get("torch") else "ndarray")
    assert outs[0]["backend"].endswith(f"over gloo ({len(p['ranks'])} ranks)")


@pytest.mark.parametrize("name", ["eq2", "eq3"])
def test_warm_start_from_a_distributed_result(session, name):
    p = PROBLEMS[name]
    S, kw, ref = single_process(name)
    _, _, warm = single_process(name, init=ref)
    for r in p["ranks"]:
        assert ok(session, name, r)["again"]["n_iter"] == [h.n_iter for h in warm.heads]


def test_communication_per_sweep_is_order_k(session):
    """Counted around torch.distributed.all_reduce itself: 8 (K + 3) bytes per sweep and
    32 bytes per convergence check, whatever the number of points (Anderson); a Newton
    sweep also sums the K x K curvature with the objective: 8 (K^2 + 1) bytes more, and a
    check, at most once per sweep."""
    for rank in (0, 1):
        runs = ok(session, "comm", rank)
        newton = [run for run in runs if run["acc"] == "newton"]
        assert len(newton) == 1
        run, ours, k = newton[0], newton[0]["ours"], newton[0]["k"]
        sweeps = ours["calls"]["sweep"]
        assert ours["bytes"]["sweep"] == sweeps * 8 * (k + 3)
        anderson = next(r for r in runs if (r["n"], r["k"], r["acc"]) == (run["n"], k, "anderson"))
        # beyond the set-up exchanges Anderson makes too (a few scalars per absorption):
        # at least one curvature exchange, at most one per sweep, nothing of size N (1000)
        extra = ours["bytes"]["setup"] - anderson["ours"]["bytes"]["setup"]
        assert 8 * (k * k + 1) <= extra <= sweeps * (8 * (k * k + 1) + 64)
        assert ours["calls"]["decision"] <= 2 * run["n_iter"] + 8
        runs = [run for run in runs if run["acc"] == "anderson"]
        for run in runs:
            ours = run["ours"]
            assert run["bytes"] == ours["total_bytes"] and run["calls"] == sum(ours["calls"].values())
            k, sweeps = run["k"], ours["calls"]["sweep"]
            assert ours["bytes"]["sweep"] == sweeps * 8 * (k + 3)
            assert ours["bytes"]["decision"] == ours["calls"]["decision"] * 32
            assert ours["calls"]["decision"] <= run["n_iter"]  # at most one per check
            per_iter = (ours["bytes"]["sweep"] + ours["bytes"]["decision"]) / run["n_iter"]
            assert per_iter <= 8 * k + 64
        # independent of N: every kind of exchange carries as many bytes per call
        size = {
            (r["n"], r["k"]): {kind: b / r["ours"]["calls"][kind] for kind, b in r["ours"]["bytes"].items()}
            for r in runs
        }
        assert size[(100, 8)] == size[(1000, 8)]
        assert all(r["n_iter"] <= MAX_ITER_COMM for r in runs)


def test_batch_codes_equal_single_process(session):
    outs = [ok(session, "codes", r) for r in range(3)]
    for key, scores, kw in codes_data():
        got = np.concatenate([o[key] for o in outs])
        assert got.dtype == np.float32 and np.isfinite(got).all()
        ref = sd.batch_codes(scores, **kw)
        np.testing.assert_allclose(got, ref, rtol=1e-4, atol=1e-6)
        np.testing.assert_allclose(got.sum(1), 1.0, rtol=1e-5)
    mild_codes = np.concatenate([o["mild_tol"] for o in outs])
    np.testing.assert_allclose(mild_codes.sum(0), 31 / 6, rtol=1e-4)


def test_batch_codes_nan_on_one_rank_raises_everywhere(session):
    for r in range(WORLD):
        kind, msg, _ = raised(session, "codes_nan", r)
        assert kind == "ValueError" and "NaN" in msg


def test_nan_scores_on_one_rank_raise_on_every_rank(session):
    for r in range(WORLD):
        kind, msg, seconds = raised(session, "nan_scores", r)
        assert kind == "ValueError" and "must not contain NaN" in msg
        assert "(157, 3)" in msg  # the global row: rank 2's row 5 after 150 + 2 points


def test_bad_input_on_one_rank_stops_every_rank(session):
    kind, msg, _ = raised(session, "bad_weights", 3)
    assert kind == "ValueError" and "`weights` must be nonnegative" in msg
    for r in range(3):
        kind, msg, seconds = raised(session, "bad_weights", r)
        assert kind == "DistributedError" and "another rank failed" in msg
        assert seconds < 20


def test_arguments_must_agree_across_ranks(session):
    for r in range(WORLD):
        kind, msg, _ = raised(session, "lam_differs", r)
        assert kind == "ValueError" and "same arguments" in msg


@pytest.mark.parametrize("name", sorted(BALANCED))
def test_balanced_equals_single_process_and_exact(session, name):
    """The LP optimum of the concatenated scores, exact global sizes, certified on every rank."""
    from sinklabel.exact import solve_exact

    p = PROBLEMS[name]
    S, kw, ref = single_process(name, balanced=True)
    outs = [ok(session, name, r) for r in p["ranks"]]
    heads = S if S.ndim == 3 else S[None]
    for t, h in enumerate(ref.heads):
        labels = np.concatenate([np.atleast_2d(o["labels"])[t] for o in outs])
        sizes = np.bincount(labels, minlength=p["k"])
        picked = heads[t][np.arange(p["n"]), labels].astype(np.float64)
        exact = solve_exact(heads[t], prior=kw.get("prior"))
        for o in outs:  # global results, equal on every rank
            assert o["balanced"][t] and o["certified"][t]
            assert 0.0 <= o["gap"][t] <= 1e-9 and o["gap"][t] == outs[0]["gap"][t]
            np.testing.assert_array_equal(o["sizes"][t], sizes)
            np.testing.assert_array_equal(o["target_sizes"][t], outs[0]["target_sizes"][t])
            assert o["objective"][t] == outs[0]["objective"][t]
            assert o["info"][t]["rounds"] == outs[0]["info"][t]["rounds"]
        assert h.certified
        assert outs[0]["objective"][t] == pytest.approx(h.objective, rel=1e-9)
        assert outs[0]["objective"][t] == pytest.approx(exact.objective, rel=1e-9)
        assert -picked.mean() == pytest.approx(h.objective, rel=1e-9)
        if "prior" in kw:  # exactly the target sizes
            np.testing.assert_array_equal(sizes, h.target_sizes)
            np.testing.assert_array_equal(outs[0]["target_sizes"][t], h.target_sizes)
        else:  # N // K or N // K + 1, the optimiser's choice
            base = p["n"] // p["k"]
            assert set(sizes.tolist()) == {base, base + 1} and sizes.sum() == p["n"]
            np.testing.assert_array_equal(outs[0]["target_sizes"][t], sizes)
        for o in outs:  # the distributed Sinkhorn's potentials, as for balanced=False
            np.testing.assert_array_equal(o["log_v"][t], outs[0]["log_v"][t])
    assert outs[0]["type"] == ("Tensor" if p.get("torch") else "ndarray")
    if name == "bal4":  # one candidate per point at first: several rounds
        assert all(i["rounds"] > 1 for i in outs[0]["info"])


def test_balanced_communication(session):
    """Per round: an all-reduce of the counts (world + 2 floats: 2 status slots), of the
    prices (K + 1 + 2) and of the certificate's sums (K + 5 + 2);
    the scores of the points sent to rank 0 (row, then 4 (cluster, score) pairs: 9 floats
    for K = 20 in the first round) and one label per point back."""
    outs = [ok(session, "bal2", r) for r in (0, 1)]
    for o in outs:
        rounds, c = o["info"][0]["rounds"], o["comm"]
        assert c["bytes"]["balanced"] == rounds * 8 * ((2 + 2) + (20 + 1 + 2) + (5 + 20 + 2))
    sent = outs[1]["comm"]["bytes"]["balanced_gather"]  # the 3 points of rank 1
    assert sent == outs[0]["comm"]["received_bytes"]["balanced_gather"]
    if outs[0]["info"][0]["rounds"] == 1:
        assert sent == 3 * 9 * 8
    assert (
        outs[0]["comm"]["bytes"]["balanced_scatter"] == outs[1]["comm"]["received_bytes"]["balanced_scatter"]
    )
    assert outs[0]["info"][0]["points_gathered"] >= 503


@pytest.mark.parametrize("name", sorted(DEFAULT))
def test_default_labels_are_sinklabel_assign_of_the_concatenation(session, name):
    """balanced=None across ranks: exactly balanced labels wherever defined, the same as
    sinklabel.assign of the concatenated scores on every point."""
    p = PROBLEMS[name]
    S, kw = problem_data(name)
    ref = host(sinklabel.assign(torch.from_numpy(S) if p.get("torch") else S, **kw))
    outs = [ok(session, name, r) for r in p["ranks"]]
    assert all(o["balanced"] == [True] and o["certified"] == [True] for o in outs)
    np.testing.assert_array_equal(np.concatenate([o["labels"] for o in outs]), ref)


def test_uniform_weights_are_the_default_across_ranks(session):
    for r in (0, 1):
        got = ok(session, "uniform_weights", r)
        assert got["balanced"] and got["same"]


def test_streamed_kernel_across_ranks_equals_the_stored_one(session):
    for r in (0, 1):
        got = ok(session, "streamed", r)
        a, b = got["stored"], got["streamed"]
        np.testing.assert_allclose(b["log_v"][0], a["log_v"][0], atol=1e-6)
        assert b["converged"] and abs(b["n_iter"][0] - a["n_iter"][0]) <= 2
        assert b["comm"]["bytes"]["sweep"] == b["comm"]["calls"]["sweep"] * 8 * (6 + 3)  # K + 3 floats
    np.testing.assert_array_equal(
        ok(session, "streamed", 0)["streamed"]["log_v"][0], ok(session, "streamed", 1)["streamed"]["log_v"][0]
    )


def test_callback_on_every_rank_sees_the_global_errors(session):
    outs = [ok(session, "callback", r) for r in (0, 1)]
    for o in outs:
        assert o["errors"] == list(o["result_errors"]) and o["n_iter"] == sorted(o["n_iter"])
    assert outs[0]["errors"] == outs[1]["errors"]


def test_balanced_refuses_weights_on_every_rank(session):
    for r in range(WORLD):
        kind, msg, _ = raised(session, "balanced_weights", r)
        assert kind == "ValueError" and "`weights` is not supported with balanced=True" in msg


def test_balanced_must_agree_across_ranks(session):
    for r in range(WORLD):
        kind, msg, _ = raised(session, "balanced_differs", r)
        assert kind == "ValueError" and "same arguments" in msg


@pytest.mark.parametrize("name,victim", [("balanced_root_fails", 0), ("balanced_rank_fails", 2)])
def test_a_failure_in_the_balanced_step_stops_every_rank(session, name, victim):
    kind, msg, _ = raised(session, name, victim)
    assert kind == "RuntimeError" and msg.startswith("boom")
    for r in {0, 1, 2} - {victim}:
        kind, msg, seconds = raised(session, name, r)
        assert kind == "DistributedError" and "another rank failed" in msg
        assert seconds < 30


def test_a_process_outside_the_group_is_told(session):
    for r in (2, 3):
        kind, msg, _ = raised(session, "not_member", r)
        assert kind == "ValueError" and "is not a member of `group`" in msg


def test_a_failing_rank_stops_every_rank(session):
    kind, msg, _ = raised(session, "raises", 1)
    assert kind == "RuntimeError" and msg.startswith("boom")
    for r in (0, 2, 3):
        kind, msg, seconds = raised(session, "raises", r)
        assert kind == "DistributedError" and "another rank failed" in msg
        assert seconds < 20


def test_nan_from_one_rank_midway_stops_every_rank(session):
    for r in range(3):
        kind, msg, seconds = raised(session, "nan_midway", r)
        assert kind == "DistributedError" and "NaN" in msg
        assert seconds < 20


def test_the_group_still_works_after_those_errors(session):
    assert [ok(session, "small", r) for r in range(WORLD)] == [3] * WORLD


def test_a_hanging_rank_is_bounded_by_the_group_timeout(session):
    kind, msg, seconds = raised(session, "hang", 0)
    assert kind == "DistributedError" and "timeout" in msg
    assert HANG_TIMEOUT * 0.9 <= seconds < HANG_TIMEOUT + 15


def test_a_dead_rank_stops_every_other_rank(session):
    assert "dies" not in session[3]  # it exited in its 5th sweep
    for r in range(3):
        kind, msg, seconds = raised(session, "dies", r)
        assert kind == "DistributedError" and "a rank died" in msg
        assert seconds < GROUP_TIMEOUT


# -- without a process group --------------------------------------------------------------


@pytest.mark.parametrize("balanced", [None, False, True])
def test_without_a_process_group_it_is_the_single_process_solve(balanced):
    assert not dist.is_initialized()
    S = make_scores(300, 5, seed=4)
    a, b = sd.solve(S, lam=10, balanced=balanced), sinklabel.solve(S, lam=10, balanced=balanced)
    assert a.heads[0].balanced == b.heads[0].balanced == (balanced is not False)
    np.testing.assert_array_equal(a.labels, b.labels)
    np.testing.assert_array_equal(a.log_v, b.log_v)
    np.testing.assert_array_equal(sd.assign(S, lam=10, balanced=balanced), b.labels)
    if balanced is False:  # the plan's argmax
        np.testing.assert_array_equal(a.labels, np.argmax(10 * S + a.log_v, axis=1))
    with pytest.raises(ValueError, match="`group` was given but torch.distributed is not initialised"):
        sd.solve(S, group=object())


def test_distributed_keywords_are_solves_plus_group():
    """Exactly the keywords of sinklabel.solve / assign, with the same defaults, plus group."""
    import inspect

    ours = dict(inspect.signature(sd.solve).parameters)
    assert ours.pop("group").default is None
    theirs = inspect.signature(sinklabel.solve).parameters
    assert list(ours) == list(theirs)
    assert all(ours[k].default == theirs[k].default and ours[k].kind == theirs[k].kind for k in ours)


def test_a_new_backend_primitive_must_be_taught_to_the_wrapper(monkeypatch):
    class FakeExchange:
        pg_name, world = "gloo", 2

    DistributedBackend(get_backend("numpy"), FakeExchange())
    monkeypatch.setattr(Backend, "new_primitive", lambda self, S: S, raising=False)
    with pytest.raises(NotImplementedError, match="Backend.new_primitive"):
        DistributedBackend(get_backend("numpy"), FakeExchange())


def swav_reference(scores, temperature, n_iter):
    """SwAV's own loop (main_swav.py, distributed_sinkhorn) on one process, in float64."""
    Q = np.exp(np.asarray(scores, np.float64) / temperature).T
    K, B = Q.shape
    Q /= Q.sum()
    for _ in range(n_iter):
        Q /= Q.sum(axis=1, keepdims=True)
        Q /= K
        Q /= Q.sum(axis=0, keepdims=True)
        Q /= B
    return (Q * B).T


def test_batch_codes_are_swavs_codes():
    s = np.random.default_rng(0).normal(size=(50, 7))
    for n_iter in (1, 3, 10):
        got = sd.batch_codes(s, temperature=0.5, n_iter=n_iter)
        np.testing.assert_allclose(got, swav_reference(s, 0.5, n_iter), rtol=1e-10)
    t = torch.from_numpy(s.astype(np.float32))
    got = sd.batch_codes(t, temperature=0.5)
    assert isinstance(got, torch.Tensor) and got.dtype == torch.float32 and not got.requires_grad
    np.testing.assert_allclose(got.numpy(), swav_reference(s, 0.5, 3), rtol=1e-4, atol=1e-7)
    half = sd.batch_codes(t.to(torch.bfloat16), temperature=0.5)
    assert half.dtype == torch.bfloat16


def test_batch_codes_are_finite_where_swavs_overflow():
    rng = np.random.default_rng(1)
    s = (rng.uniform(-1, 1, size=(64, 10)) * 50).astype(np.float32)  # |s| / temperature up to 1000
    s[:, 3] -= 49.0  # a cluster nobody likes
    with np.errstate(over="ignore", invalid="ignore"):
        plain = swav_reference(s.astype(np.float32), 0.05, 3).astype(np.float32)
        Q = np.exp(s / np.float32(0.05))  # what the common float32 copies compute first
    assert not np.isfinite(Q).all() and not np.isfinite(plain).all()
    codes = sd.batch_codes(torch.from_numpy(s), temperature=0.05).numpy()
    assert np.isfinite(codes).all() and (codes >= 0).all()
    np.testing.assert_allclose(codes.sum(1), 1.0, rtol=1e-5)
    exact = sd.batch_codes(s.astype(np.float64), temperature=0.05)
    np.testing.assert_allclose(codes, exact, atol=1e-4)
    tight = sd.batch_codes(s / 50, temperature=0.1, n_iter=500, tol=1e-4)
    np.testing.assert_allclose(tight.sum(0), 6.4, rtol=2e-4)


def test_batch_codes_hard_and_excluded_pairs():
    s = np.random.default_rng(2).normal(size=(40, 4)).astype(np.float32)
    s[:, 2] = -np.inf  # nobody may take cluster 2
    soft = sd.batch_codes(s, temperature=0.1)
    hard = sd.batch_codes(s, temperature=0.1, hard=True)
    assert np.isfinite(soft).all() and (soft[:, 2] == 0).all()
    assert hard.dtype == np.float32 and (hard.sum(1) == 1).all()
    np.testing.assert_array_equal(hard.argmax(1), soft.argmax(1))


def test_batch_codes_errors():
    s = np.zeros((4, 3), np.float32)
    with pytest.raises(ValueError, match="`temperature` must be finite and > 0"):
        sd.batch_codes(s, temperature=0)
    with pytest.raises(ValueError, match="`scores` must be 2-D"):
        sd.batch_codes(s[None])
    with pytest.raises(TypeError, match="floating-point"):
        sd.batch_codes(s.astype(np.int64))
    with pytest.raises(TypeError, match="torch tensor or numpy array"):
        sd.batch_codes([[1.0]])
    with pytest.raises(ValueError, match="`n_iter` must be >= 1"):
        sd.batch_codes(s, n_iter=0)
    with pytest.raises(TypeError, match="`hard` must be a bool"):
        sd.batch_codes(s, hard="yes")
    bad = s.copy()
    bad[1, 1] = np.nan
    with pytest.raises(ValueError, match="found NaN, \\+inf or an all -inf row"):
        sd.batch_codes(bad)
    with pytest.warns(sinklabel.ConvergenceWarning, match="raise n_iter or tol"):
        sd.batch_codes(np.random.default_rng(0).normal(size=(30, 5)), temperature=0.05, n_iter=2, tol=1e-9)


def test_batch_codes_with_tol_are_honest_in_float32():
    """With tol, the codes returned (float32) meet it: their column sums recomputed in float64
    (issue 11 item 5, at a smaller batch; more prototypes than points, as in SwAV)."""
    rng = np.random.default_rng(5)
    f, p = rng.normal(size=(128, 32)), rng.normal(size=(600, 32))
    f /= np.linalg.norm(f, axis=1, keepdims=True)
    p /= np.linalg.norm(p, axis=1, keepdims=True)
    S = (f @ p.T).astype(np.float32)
    with warnings.catch_warnings():
        warnings.simplefilter("error", sinklabel.ConvergenceWarning)
        q = sd.batch_codes(S, temperature=0.0005, n_iter=5000, tol=1e-3)
        hard = sd.batch_codes(S, temperature=0.0005, n_iter=5000, tol=1e-3, hard=True)
        t = sd.batch_codes(torch.from_numpy(S), temperature=0.0005, n_iter=5000, tol=1e-3)
    assert q.dtype == np.float32 and np.isfinite(q).all()
    np.testing.assert_allclose(q.sum(axis=1), 1.0, rtol=1e-5)
    assert np.abs(q.astype(np.float64).sum(axis=0) / (128 / 600) - 1.0).max() <= 1e-3
    assert (hard.sum(axis=1) == 1).all()  # one-hot at a largest code (near-ties at lam 2000)
    assert (q[np.arange(128), hard.argmax(axis=1)] >= q.max(axis=1) - 1e-6).all()
    assert isinstance(t, torch.Tensor) and t.dtype == torch.float32
    # the torch backend's own solve: another plan within tol, the same guarantee
    assert np.abs(t.numpy().astype(np.float64).sum(axis=0) / (128 / 600) - 1.0).max() <= 1e-3


def test_coarse_start_over_ranks(session, monkeypatch):
    """Each rank samples a twentieth of its own points; the sample's solve runs over the
    ranks like any other, and the labels are the balanced labels of one process."""
    import sinklabel._iteration as it

    outs = [ok(session, "coarse", r) for r in range(3)]
    for o in outs:
        assert len(o["coarse"]) == 1 and "not used" not in o["coarse"][0], o["coarse"]
        assert o["converged"] and o["n_iter"] == outs[0]["n_iter"]
        np.testing.assert_array_equal(o["log_v"][0], outs[0]["log_v"][0])
    S = coarse_problem()
    head = SimpleNamespace(
        log_u=np.concatenate([o["log_u"][0] for o in outs]), log_v=outs[0]["log_v"][0], error=0.0
    )
    assert_marginals(S, COARSE["lam"], head, 1e-3 * 1.05)
    monkeypatch.setattr(it, "COARSE_MIN_ENTRIES", 0)
    ref = sinklabel.solve(S, COARSE["lam"])
    np.testing.assert_array_equal(np.concatenate([o["labels"] for o in outs]), ref.labels)
