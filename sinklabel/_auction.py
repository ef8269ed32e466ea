"""Kernels of the balanced step: an auction for the semi-assignment problem (Bertsekas).

Notation as in :mod:`sinklabel._balanced`. Cluster ``k`` owns ``room[k]`` slots, a
binary min-heap on their prices in ``price[start[k] : start[k] + room[k]]``; a point
sees cluster ``k`` at its cheapest slot, ``minp[k] = price[start[k]]``. Each slot's
price is the bid of its holder. With flexible sizes (``K`` does not divide ``N``, no
prior) every cluster has ``N // K + 1`` slots and ``K - N % K`` *dummy* bidders (ids
from ``n_real`` on, worth 0 everywhere, at most one per cluster) fill the ones left
over; a cluster holding a dummy ends with ``N // K`` points.

Invariant (epsilon-complementary slackness at the cluster level, kept by every bid and
preserved because prices only rise): a point holding a slot of cluster ``k`` at price
``b`` has ``S[i, k] - b >= max_{l != k} (S[i, l] - minp[l]) - eps``; as ``minp[k] <= b``
its reduced cost under the prices ``minp`` is at most ``eps``.

Every kernel is written once, in the subset of Python that numba compiles. With numba
they are compiled (the pass over the N x K scores runs in parallel); without it the
same source runs as Python, with the row scan and the pass vectorised through numpy.
"""

from __future__ import annotations

import importlib.util
import types
from typing import Any

import numpy as np

__all__ = ["HAVE_NUMBA", "Kernels", "kernels"]

# numba is optional (numpy alone runs the same algorithm, more slowly) and imported only
# when the kernels are first needed: importing sinklabel stays fast
HAVE_NUMBA = importlib.util.find_spec("numba") is not None

DONE, BUDGET, STRANDED = 0, 1, 2

# fastmath without nnan/ninf: -inf scores (forbidden pairs) must compare correctly
_FASTMATH = {"nsz", "arcp", "contract", "reassoc"}

prange = range  # numba.prange in the compiled binding


def _scan_row_loop(row: Any, minp: Any) -> tuple[int, float, float]:
    """Best cluster of one row under prices ``minp``: (k1, best value, second value)."""
    k1 = -1
    best = -np.inf
    second = -np.inf
    for k in range(row.shape[0]):
        val = row[k] - minp[k]
        if val > best:
            second = best
            best = val
            k1 = k
        elif val > second:
            second = val
    return k1, best, second


def _scan_row_numpy(row: Any, minp: Any) -> tuple[int, float, float]:
    vals = row.astype(np.float64) - minp
    k1 = int(np.argmax(vals))
    best = float(vals[k1])
    if not best > -np.inf:
        return -1, -np.inf, -np.inf
    vals[k1] = -np.inf
    return k1, best, float(vals.max()) if vals.size > 1 else -np.inf


_scan_row = _scan_row_loop  # rebound per engine in Kernels


def _sift_down(price: Any, holder: Any, slot_of: Any, lo: int, n: int, j: int) -> None:
    """Restore the min-heap ``price[lo : lo + n]`` after the price at ``lo + j`` rose."""
    while True:
        left = 2 * j + 1
        if left >= n:
            return
        child = left
        if left + 1 < n and price[lo + left + 1] < price[lo + left]:
            child = left + 1
        if price[lo + child] >= price[lo + j]:
            return
        _swap(price, holder, slot_of, lo + j, lo + child)
        j = child


def _sift_up(price: Any, holder: Any, slot_of: Any, lo: int, j: int) -> None:
    """Restore the min-heap starting at ``lo`` after the price at ``lo + j`` fell."""
    while j > 0:
        parent = (j - 1) // 2
        if price[lo + parent] <= price[lo + j]:
            return
        _swap(price, holder, slot_of, lo + j, lo + parent)
        j = parent


def _swap(price: Any, holder: Any, slot_of: Any, a: int, b: int) -> None:
    pa = price[a]
    price[a] = price[b]
    price[b] = pa
    ha = holder[a]
    holder[a] = holder[b]
    holder[b] = ha
    if holder[a] >= 0:
        slot_of[holder[a]] = a
    if holder[b] >= 0:
        slot_of[holder[b]] = b


def _auction(
    S: Any,
    price: Any,
    holder: Any,
    slot_of: Any,
    start: Any,
    room: Any,
    dummy_in: Any,
    minp: Any,
    queue: Any,
    head: int,
    tail: int,
    touched: Any,
    n_real: int,
    eps: float,
    big: float,
    max_bids: int,
) -> tuple[int, int, int, int]:
    """Bid until every point holds a slot. Returns (status, bids, head, tail).

    ``queue`` is a circular buffer of the points without a slot, ``queue[head:tail]``
    (mod its length). ``touched[p]`` is set for every bidder: a point that has not bid
    since the seed is at 0-complementary slackness. status: 0 done, 1 ``max_bids``
    reached, 2 a point found no reachable cluster with a slot (infeasible sizes).
    """
    qlen = queue.shape[0]
    n_clusters = minp.shape[0]
    bids = 0
    while head != tail:
        if bids >= max_bids:
            return BUDGET, bids, head, tail
        p = queue[head]
        head += 1
        if head == qlen:
            head = 0
        bids += 1
        touched[p] = True
        if p < n_real:
            # a point takes the cheapest slot of its best cluster; the bid leaves it
            # eps short of indifference with its best *other* cluster
            k1, best, second = _scan_row(S[p], minp)
            if k1 < 0 or best == -np.inf:
                if head == 0:
                    head = qlen
                head -= 1
                queue[head] = p
                return STRANDED, bids, head, tail
            target = start[k1]
        else:
            # a dummy (flexible sizes) takes the cheapest slot of the cheapest cluster
            # that holds no dummy: dummies are identical, so one never outbids another
            k1 = -1
            best = -np.inf
            second = -np.inf
            for k in range(n_clusters):
                if dummy_in[k] >= 0 or room[k] == 0:
                    continue
                val = -minp[k]
                if val > best:
                    second = best
                    best = val
                    k1 = k
                elif val > second:
                    second = val
            target = start[k1]
        if second == -np.inf:
            second = best - big
        bid = price[target] + ((best - second) + eps)
        evicted = holder[target]
        if evicted >= 0:
            slot_of[evicted] = -1
            if evicted >= n_real:
                dummy_in[k1] = -1
            queue[tail] = evicted
            tail += 1
            if tail == qlen:
                tail = 0
        holder[target] = p
        price[target] = bid
        slot_of[p] = target
        if p >= n_real:
            dummy_in[k1] = p
        _sift_down(price, holder, slot_of, start[k1], room[k1], target - start[k1])
        minp[k1] = price[start[k1]]
    return DONE, bids, head, tail


def _release(
    points: Any,
    price: Any,
    holder: Any,
    slot_of: Any,
    start: Any,
    slot_cluster: Any,
    dummy_in: Any,
    minp: Any,
    n_real: int,
) -> None:
    """Take ``points`` out of their slots; each freed slot drops to its cluster's
    cheapest price (so no cluster's cheapest price changes)."""
    for t in range(points.shape[0]):
        p = points[t]
        s = slot_of[p]
        k = slot_cluster[s]
        holder[s] = -1
        slot_of[p] = -1
        if p >= n_real:
            dummy_in[k] = -1
        price[s] = minp[k]
        _sift_up(price, holder, slot_of, start[k], s - start[k])


def _top2_pass_loop(S: Any, minp: Any, k1_out: Any, v1_out: Any, v2_out: Any) -> None:
    """Per row: the best cluster under prices ``minp``, its value and the runner-up's."""
    for i in prange(S.shape[0]):
        k1, best, second = _scan_row(S[i], minp)
        k1_out[i] = k1
        v1_out[i] = best
        v2_out[i] = second


def _best_pass_loop(S: Any, minp: Any, labels: Any, best_out: Any, own_out: Any) -> None:
    """Per row: ``max_k (S[i, k] - minp[k])`` and ``S[i, labels[i]]`` (the certificate)."""
    for i in prange(S.shape[0]):
        best = -np.inf
        for k in range(S.shape[1]):
            val = S[i, k] - minp[k]
            if val > best:
                best = val
        best_out[i] = best
        own_out[i] = S[i, labels[i]]


def _slack_loop(S: Any, rows: Any, labels: Any, paid: Any, minp: Any, out: Any) -> None:
    """For points ``rows`` holding a slot of ``labels`` at ``paid``: how far they are
    from their best other cluster, ``max_{l != y} (S[i, l] - minp[l]) - (S[i, y] - paid)``."""
    for t in prange(rows.shape[0]):
        i = rows[t]
        y = labels[t]
        best = -np.inf
        for k in range(S.shape[1]):
            if k != y:
                val = S[i, k] - minp[k]
                if val > best:
                    best = val
        out[t] = best - (S[i, y] - paid[t])


_BLOCK = 1 << 21  # elements of float64 temporaries per block in the numpy passes


def _top2_pass_numpy(S: Any, minp: Any, k1_out: Any, v1_out: Any, v2_out: Any) -> None:
    n, k = S.shape
    step = max(1, _BLOCK // max(k, 1))
    for lo in range(0, n, step):
        X = S[lo : lo + step].astype(np.float64) - minp
        rows = np.arange(X.shape[0])
        k1 = X.argmax(axis=1)
        v1 = X[rows, k1]
        X[rows, k1] = -np.inf
        k1_out[lo : lo + step] = np.where(v1 > -np.inf, k1, -1)
        v1_out[lo : lo + step] = v1
        v2_out[lo : lo + step] = X.max(axis=1) if k > 1 else -np.inf


def _best_pass_numpy(S: Any, minp: Any, labels: Any, best_out: Any, own_out: Any) -> None:
    n, k = S.shape
    step = max(1, _BLOCK // max(k, 1))
    for lo in range(0, n, step):
        X = S[lo : lo + step].astype(np.float64) - minp
        best_out[lo : lo + step] = X.max(axis=1)
        own_out[lo : lo + step] = S[np.arange(lo, lo + X.shape[0]), labels[lo : lo + step]]


def _slack_numpy(S: Any, rows: Any, labels: Any, paid: Any, minp: Any, out: Any) -> None:
    k = S.shape[1]
    step = max(1, _BLOCK // max(k, 1))
    for lo in range(0, rows.shape[0], step):
        r, y = rows[lo : lo + step], labels[lo : lo + step]
        X = S[r].astype(np.float64) - minp
        at = np.arange(r.shape[0])
        own = X[at, y] + minp[y]
        X[at, y] = -np.inf
        out[lo : lo + step] = X.max(axis=1) - (own - paid[lo : lo + step])


class Kernels:
    """One binding of the kernels (same names, same arguments, for every engine)."""

    def __init__(self, engine: str) -> None:
        self.engine = engine
        if engine == "numba":
            import numba

            jit = numba.njit(cache=True, fastmath=_FASTMATH)
            pjit = numba.njit(cache=True, fastmath=_FASTMATH, parallel=True)
            env = dict(globals(), prange=numba.prange)
            # helpers first: each compiled function sees the compiled helpers
            for name, fn in (
                ("_scan_row", _scan_row_loop),
                ("_swap", _swap),
                ("_sift_down", _sift_down),
                ("_sift_up", _sift_up),
            ):
                env[name] = jit(_rebind(fn, env))
            self.auction = jit(_rebind(_auction, env))
            self.release = jit(_rebind(_release, env))
            # a parallel region costs a thread hand-off: worth it on big inputs only
            for name, fn, all_rows in (
                ("top2_pass", _top2_pass_loop, True),
                ("best_pass", _best_pass_loop, True),
                ("slack", _slack_loop, False),
            ):
                serial, parallel = jit(_rebind(fn, env)), pjit(_rebind(fn, env))
                setattr(self, name, _by_size(serial, parallel, all_rows))
        else:
            env = dict(globals(), _scan_row=_scan_row_numpy)
            self.auction = _rebind(_auction, env)
            self.release = _rebind(_release, env)
            self.top2_pass = _top2_pass_numpy
            self.best_pass = _best_pass_numpy
            self.slack = _slack_numpy


def _by_size(serial: Any, parallel: Any, all_rows: bool) -> Any:
    """Call ``parallel`` when the rows to scan (all of S, or the second argument's
    length) hold at least PARALLEL_MIN entries."""

    def run(S: Any, second: Any, *args: Any) -> None:
        work = (S.shape[0] if all_rows else second.shape[0]) * S.shape[1]
        (parallel if work >= PARALLEL_MIN else serial)(S, second, *args)

    return run


PARALLEL_MIN = 1 << 20


def _rebind(fn: Any, env: dict) -> Any:
    """``fn`` with its global names looked up in ``env`` (one source, two engines)."""
    out = types.FunctionType(fn.__code__, env, fn.__name__, fn.__defaults__, fn.__closure__)
    out.__qualname__ = fn.__qualname__
    out.__module__ = fn.__module__
    return out


_cache: dict[str, Kernels] = {}


def kernels(engine: str | None = None) -> Kernels:
    """The kernels for ``engine`` ("numba" or "numpy"; default: numba when installed)."""
    if engine is None:
        engine = "numba" if HAVE_NUMBA else "numpy"
    if engine == "numba" and not HAVE_NUMBA:
        raise ImportError("the numba engine needs numba: pip install 'sinklabel[numba]'")
    if engine not in _cache:
        _cache[engine] = Kernels(engine)
    return _cache[engine]
