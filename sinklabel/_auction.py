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

Two layouts of the scores: *dense*, an ``N x K`` array (the single-process solve reads
the caller's scores in place), and *sparse*, :class:`SparseRows`: each point's candidate
clusters and their scores in CSR form, every absent pair ``-inf`` (rank 0 of a
distributed solve holds only the pairs the ranks sent it). A layout is a handful of row
primitives (``_scan_point``, ``_row_best``, ``_row_best_except``, ``_entry``,
``_n_rows``); the auction and the passes are written once on top of them.

Every kernel is written once, in the subset of Python that numba compiles. With numba
they are compiled (the pass over the N x K scores runs in parallel); without it the
same source runs as Python, with the row scan and the pass vectorised through numpy.
"""

from __future__ import annotations

import importlib.util
import types
from typing import Any, NamedTuple

import numpy as np

__all__ = ["HAVE_NUMBA", "Kernels", "SparseRows", "kernels", "rows_block"]

# numba is optional (numpy alone runs the same algorithm, more slowly) and imported only
# when the kernels are first needed: importing sinklabel stays fast
HAVE_NUMBA = importlib.util.find_spec("numba") is not None

DONE, BUDGET, STRANDED = 0, 1, 2

# fastmath without nnan/ninf: -inf scores (forbidden pairs) must compare correctly
_FASTMATH = {"nsz", "arcp", "contract", "reassoc"}

prange = range  # numba.prange in the compiled binding


def _max(a: float, b: float) -> float:
    """The larger of two floats, neither NaN (scores are NaN-free and ``-inf`` at worst,
    prices finite or ``+inf``, so no difference of theirs is NaN). The numba binding
    compiles it to the ``llvm.maximum`` intrinsic (:func:`_max_numba`), which LLVM
    vectorises as a reduction; a compare-and-select (numba's ``max``, an ``if``) it does not."""
    return a if a > b else b


def _row_max(row: Any, minp: Any) -> float:
    """``max_k (row[k] - minp[k])`` (``-inf`` if empty): a plain reduction, which the
    compiled loop runs on vector registers. Callers pass slices, not offsets: an index
    numba cannot prove non-negative gets a wraparound check that stops the vectoriser."""
    best = -np.inf
    for k in range(row.shape[0]):
        best = _max(best, row[k] - minp[k])
    return best


_CHUNK = 128  # entries per block of the row scan


def _scan_row_loop(row: Any, minp: Any) -> tuple[int, float, float]:
    """Best cluster of one row under prices ``minp``: (k1, best value, second value).

    ``k1`` is the first index of the maximum (-1 if the row is all ``-inf``), ``second``
    the largest value among the other entries (``best`` on a tie). Vectorised maxima of
    blocks of the row, their top two kept branch-free, instead of one branchy scan; then
    the block that first holds the maximum (in cache) gives ``k1`` and its other entries.
    """
    n = row.shape[0]
    best = -np.inf
    second = -np.inf
    at = 0
    for lo in range(0, n, _CHUNK):
        m = _row_max(row[lo : lo + _CHUNK], minp[lo : lo + _CHUNK])
        at = lo if m > best else at
        second = _max(second, min(best, m))
        best = _max(best, m)
    if not best > -np.inf:
        return -1, -np.inf, -np.inf
    k1 = at
    while row[k1] - minp[k1] < best:
        k1 += 1
    hi = min(at + _CHUNK, n)
    second = _max(second, _row_max(row[at:k1], minp[at:k1]))
    second = _max(second, _row_max(row[k1 + 1 : hi], minp[k1 + 1 : hi]))
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


class SparseRows(NamedTuple):
    """Scores given on some (point, cluster) pairs only, every other pair ``-inf``.

    Point ``i``'s pairs are ``cols[indptr[i] : indptr[i + 1]]`` (ascending) with scores
    ``vals[...]`` (the dtype of the scores they came from). A named tuple, so numba
    compiles the kernels for it as for an array.
    """

    indptr: np.ndarray  # int64, (n_points + 1,)
    cols: np.ndarray  # int32, (n_pairs,)
    vals: np.ndarray  # float32 or float64, (n_pairs,)
    n_clusters: int

    @property
    def shape(self) -> tuple[int, int]:
        return self.indptr.shape[0] - 1, self.n_clusters


# -- row primitives of the dense layout (an N x K array) ------------------------------------


def _n_rows_dense(S: Any) -> int:
    return S.shape[0]


def _scan_point_dense(S: Any, i: int, minp: Any) -> tuple[int, float, float]:
    return _scan_row(S[i], minp)


def _row_best_dense(S: Any, i: int, minp: Any) -> float:
    """``max_k (S[i, k] - minp[k])``."""
    return _row_max(S[i], minp)


def _row_best_except_dense(S: Any, i: int, y: int, minp: Any) -> float:
    """``max_{k != y} (S[i, k] - minp[k])``."""
    row = S[i]
    return _max(_row_max(row[:y], minp[:y]), _row_max(row[y + 1 :], minp[y + 1 :]))


def _entry_dense(S: Any, i: int, k: int) -> float:
    return S[i, k]


def _prefetch_row_dense(S: Any, i: int) -> None:
    """Ask the cache for row ``i`` (a hint, no effect on any result): a bid's row is a
    random one, and waiting for it from memory was most of a bid's cost."""
    row = S[i]
    for j in range(0, row.shape[0], max(1, 64 // row.itemsize)):
        _prefetch(row, j)


def _prefetch_none(S: Any, i: int) -> None:
    """:func:`_prefetch_row_dense` where there is nothing to prefetch (a sparse row, or
    the numpy engine)."""


# -- row primitives of the sparse layout (SparseRows) ---------------------------------------


def _n_rows_sparse(S: Any) -> int:
    return S.indptr.shape[0] - 1


def _scan_point_sparse(S: Any, i: int, minp: Any) -> tuple[int, float, float]:
    k1 = -1
    best = -np.inf
    second = -np.inf
    for j in range(S.indptr[i], S.indptr[i + 1]):
        k = S.cols[j]
        val = S.vals[j] - minp[k]
        if val > best:
            second = best
            best = val
            k1 = k
        elif val > second:
            second = val
    if best == -np.inf:
        k1 = -1
    return k1, best, second


def _row_best_sparse(S: Any, i: int, minp: Any) -> float:
    best = -np.inf
    for j in range(S.indptr[i], S.indptr[i + 1]):
        val = S.vals[j] - minp[S.cols[j]]
        if val > best:
            best = val
    return best


def _row_best_except_sparse(S: Any, i: int, y: int, minp: Any) -> float:
    best = -np.inf
    for j in range(S.indptr[i], S.indptr[i + 1]):
        k = S.cols[j]
        if k != y:
            val = S.vals[j] - minp[k]
            if val > best:
                best = val
    return best


def _entry_sparse(S: Any, i: int, k: int) -> float:
    for j in range(S.indptr[i], S.indptr[i + 1]):
        if S.cols[j] == k:
            return S.vals[j]
    return -np.inf


def _scan_point_sparse_numpy(S: Any, i: int, minp: Any) -> tuple[int, float, float]:
    lo, hi = S.indptr[i], S.indptr[i + 1]
    if hi == lo:
        return -1, -np.inf, -np.inf
    cols = S.cols[lo:hi]
    j, best, second = _scan_row_numpy(S.vals[lo:hi], minp[cols])
    return (int(cols[j]) if j >= 0 else -1), best, second


_LAYOUTS = {
    "dense": dict(
        _n_rows=_n_rows_dense,
        _scan_point=_scan_point_dense,
        _row_best=_row_best_dense,
        _row_best_except=_row_best_except_dense,
        _entry=_entry_dense,
        _prefetch_row=_prefetch_row_dense,
    ),
    "sparse": dict(
        _n_rows=_n_rows_sparse,
        _scan_point=_scan_point_sparse,
        _row_best=_row_best_sparse,
        _row_best_except=_row_best_except_sparse,
        _entry=_entry_sparse,
        _prefetch_row=_prefetch_none,
    ),
}
# rebound per layout
_n_rows, _scan_point, _row_best, _row_best_except, _entry, _prefetch_row = _LAYOUTS["dense"].values()
_prefetch = None  # the numba binding's prefetch intrinsic (:func:`_prefetch_numba`)

#: a bid prefetches the row of the point this many places ahead in the queue
PREFETCH_AHEAD = 2


def layout(S: Any) -> str:
    """The layout of the scores: ``"sparse"`` for :class:`SparseRows`, else ``"dense"``."""
    return "sparse" if isinstance(S, SparseRows) else "dense"


def rows_block(S: Any, rows: Any) -> np.ndarray:
    """Rows ``rows`` (indices or a slice) of either layout as a dense float64 block
    (``-inf`` where a sparse row has no pair): the numpy passes work on such blocks."""
    if not isinstance(S, SparseRows):
        return S[rows].astype(np.float64)
    if isinstance(rows, slice):
        rows = np.arange(S.shape[0])[rows]
    rows = np.asarray(rows, dtype=np.int64)
    out = np.full((rows.size, S.n_clusters), -np.inf)
    lo, count = S.indptr[rows], S.indptr[rows + 1] - S.indptr[rows]
    at = np.repeat(np.arange(rows.size), count)
    pos = np.arange(int(count.sum())) + np.repeat(lo - (np.cumsum(count) - count), count)
    out[at, S.cols[pos]] = S.vals[pos]
    return out


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
        ahead = head + (PREFETCH_AHEAD - 1)
        if ahead >= qlen:
            ahead -= qlen
        if (tail - head) % qlen >= PREFETCH_AHEAD and queue[ahead] < n_real:
            _prefetch_row(S, queue[ahead])
        if p < n_real:
            # a point takes the cheapest slot of its best cluster; the bid leaves it
            # eps short of indifference with its best *other* cluster
            k1, best, second = _scan_point(S, p, minp)
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
    for i in prange(_n_rows(S)):
        k1, best, second = _scan_point(S, i, minp)
        k1_out[i] = k1
        v1_out[i] = best
        v2_out[i] = second


def _best_pass_loop(S: Any, minp: Any, labels: Any, best_out: Any, own_out: Any) -> None:
    """Per row: ``max_k (S[i, k] - minp[k])`` and ``S[i, labels[i]]`` (the certificate)."""
    for i in prange(_n_rows(S)):
        best_out[i] = _row_best(S, i, minp)
        own_out[i] = _entry(S, i, labels[i])


def _slack_loop(S: Any, rows: Any, labels: Any, paid: Any, minp: Any, out: Any) -> None:
    """For points ``rows`` holding a slot of ``labels`` at ``paid``: how far they are
    from their best other cluster, ``max_{l != y} (S[i, l] - minp[l]) - (S[i, y] - paid)``."""
    for t in prange(rows.shape[0]):
        if t + PREFETCH_AHEAD < rows.shape[0]:
            _prefetch_row(S, rows[t + PREFETCH_AHEAD])
        i = rows[t]
        y = labels[t]
        out[t] = _row_best_except(S, i, y, minp) - (_entry(S, i, y) - paid[t])


def _seed_loop(
    k1: Any,
    v1: Any,
    v2: Any,
    p0: Any,
    room: Any,
    start: Any,
    big: float,
    price: Any,
    holder: Any,
    slot_of: Any,
    takers: Any,
    waiting: Any,
) -> int:
    """The argmax seed of :func:`sinklabel._balanced.balance`, from the top-2 pass.

    Each point ``i`` with ``k1[i] >= 0`` goes to ``k1[i]``; a cluster keeps its ``room``
    takers of widest margin ``v1 - v2`` (``big`` where the runner-up is ``-inf``; ties
    to the lower index), laid out as a heap: kept points by ascending bid ``p0 + margin``
    at the end of the cluster's block, its empty slots (at ``p0``, already in ``price``)
    first. Fills ``takers`` (points per cluster) and ``waiting``: the takers left over,
    cluster by cluster in that order, then the points with ``k1 < 0``, ascending; returns
    their number. The same as sorting all points by (cluster, -margin, index), with one
    small sort per cluster (in parallel) instead.
    """
    n = k1.shape[0]
    n_clusters = room.shape[0]
    for c in range(n_clusters):
        takers[c] = 0
    for i in range(n):
        if k1[i] >= 0:
            takers[k1[i]] += 1
    first = np.zeros(n_clusters + 1, dtype=np.int64)  # each cluster's takers in pts
    over = np.zeros(n_clusters + 1, dtype=np.int64)  # each cluster's left-overs in waiting
    for c in range(n_clusters):
        first[c + 1] = first[c] + takers[c]
        over[c + 1] = over[c] + max(takers[c] - room[c], 0)
    pts = np.empty(first[n_clusters], dtype=np.int64)
    fill = first[:n_clusters].copy()
    for i in range(n):
        c = k1[i]
        if c >= 0:
            pts[fill[c]] = i
            fill[c] += 1
    for c in prange(n_clusters):
        lo = first[c]
        m = first[c + 1] - lo
        margin = np.empty(m, dtype=np.float64)
        key = np.empty(m, dtype=np.float64)
        for j in range(m):
            i = pts[lo + j]
            d = v1[i] - v2[i]
            margin[j] = d if np.isfinite(d) else big
            key[j] = -margin[j]
        order = np.argsort(key, kind="mergesort")  # stable: ties stay by index
        for r in range(m):
            i = pts[lo + order[r]]
            if r < room[c]:
                slot = start[c] + (room[c] - 1 - r)
                price[slot] = p0[c] + margin[order[r]]
                holder[slot] = i
                slot_of[i] = slot
            else:
                waiting[over[c] + (r - room[c])] = i
    w = over[n_clusters]
    for i in range(n):
        if k1[i] < 0:
            waiting[w] = i
            w += 1
    return w


def _seed_numpy(k1, v1, v2, p0, room, start, big, price, holder, slot_of, takers, waiting) -> int:
    n_clusters = room.shape[0]
    reachable = np.flatnonzero(k1 >= 0)
    margin = v1[reachable] - v2[reachable]
    margin = np.where(np.isfinite(margin), margin, big)
    order = np.lexsort((-margin, k1[reachable]))
    pts, ks, mg = reachable[order], k1[reachable][order], margin[order]
    takers[:] = np.bincount(ks, minlength=n_clusters)
    first = np.searchsorted(ks, np.arange(n_clusters))
    rank = np.arange(pts.size) - first[ks]
    keep = rank < room[ks]
    kp, kk, kr = pts[keep], ks[keep], rank[keep]
    slot = start[kk] + (room[kk] - 1 - kr)
    price[slot] = p0[kk] + mg[keep]
    holder[slot] = kp
    slot_of[kp] = slot
    out = np.concatenate([pts[~keep], np.flatnonzero(k1 < 0)])
    waiting[: out.size] = out
    return out.size


def _span_loop(S: Any, step: int) -> tuple[float, float, bool]:
    """(max - min, max |.|, whether any) of the finite scores of rows 0, step, 2 step, ..."""
    lo = np.inf
    hi = -np.inf
    for i in range(0, S.shape[0], step):
        row = S[i]
        for k in range(row.shape[0]):
            x = np.float64(row[k])
            if np.isfinite(x):
                lo = min(lo, x)
                hi = max(hi, x)
    if not hi >= lo:
        return 1.0, 1.0, False
    return hi - lo, max(abs(lo), abs(hi)), True


def _span_numpy(S: Any, step: int) -> tuple[float, float, bool]:
    rows = rows_block(S, slice(None, None, step))
    fin = rows[np.isfinite(rows)]
    if not fin.size:
        return 1.0, 1.0, False
    return float(fin.max() - fin.min()), float(np.abs(fin).max()), True


_BLOCK = 1 << 21  # elements of float64 temporaries per block in the numpy passes


def _top2_pass_numpy(S: Any, minp: Any, k1_out: Any, v1_out: Any, v2_out: Any) -> None:
    n, k = S.shape
    step = max(1, _BLOCK // max(k, 1))
    for lo in range(0, n, step):
        X = rows_block(S, slice(lo, lo + step)) - minp
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
        X = rows_block(S, slice(lo, lo + step))
        own_out[lo : lo + step] = X[np.arange(X.shape[0]), labels[lo : lo + step]]
        X -= minp
        best_out[lo : lo + step] = X.max(axis=1)


def _slack_numpy(S: Any, rows: Any, labels: Any, paid: Any, minp: Any, out: Any) -> None:
    k = S.shape[1]
    step = max(1, _BLOCK // max(k, 1))
    for lo in range(0, rows.shape[0], step):
        r, y = rows[lo : lo + step], labels[lo : lo + step]
        X = rows_block(S, r) - minp
        at = np.arange(r.shape[0])
        own = X[at, y] + minp[y]
        X[at, y] = -np.inf
        out[lo : lo + step] = X.max(axis=1) - (own - paid[lo : lo + step])


class Kernels:
    """One binding of the kernels for one engine and one layout of the scores (same
    names, same arguments, for every binding)."""

    def __init__(self, engine: str, layout: str = "dense") -> None:
        self.engine = engine
        self.layout = layout
        if engine == "numba":
            import numba

            jit = numba.njit(cache=True, fastmath=_FASTMATH)
            pjit = numba.njit(cache=True, fastmath=_FASTMATH, parallel=True)
            env = dict(globals(), prange=numba.prange)
            # helpers first: each compiled function sees the compiled helpers
            env["_max"] = _max_numba()
            env["_prefetch"] = _prefetch_numba()
            for name, fn in (
                ("_row_max", _row_max),
                ("_scan_row", _scan_row_loop),
                ("_swap", _swap),
                ("_sift_down", _sift_down),
                ("_sift_up", _sift_up),
                *_LAYOUTS[layout].items(),
            ):
                env[name] = jit(_rebind(fn, env))
            self.auction = jit(_rebind(_auction, env))
            self.release = jit(_rebind(_release, env))
            # exact arithmetic (no fastmath): the seed's prices are p0 + margin as numpy has them
            seed = numba.njit(cache=True, parallel=True)(_rebind(_seed_loop, env))
            seed_serial = numba.njit(cache=True)(_rebind(_seed_loop, env, "_serial"))
            self.seed = _by_points(seed_serial, seed)
            self.span = jit(_rebind(_span_loop, env)) if layout == "dense" else _span_numpy
            # a parallel region costs a thread hand-off: worth it on big inputs only. The
            # twins need distinct names: numba's disk cache keys a function by its module,
            # name, line and signature, not by ``parallel``, so with one name the twin
            # compiled first was loaded for both (the full passes ran on one core)
            for name, fn, all_rows in (
                ("top2_pass", _top2_pass_loop, True),
                ("best_pass", _best_pass_loop, True),
                ("slack", _slack_loop, False),
            ):
                serial, parallel = jit(_rebind(fn, env)), pjit(_rebind(fn, env, "_parallel"))
                setattr(self, name, _by_size(serial, parallel, all_rows))
        else:
            env = dict(globals(), _scan_row=_scan_row_numpy)
            for name, fn in _LAYOUTS[layout].items():
                env[name] = _rebind(fn, env)
            env["_prefetch_row"] = _prefetch_none
            if layout == "sparse":  # the row scan vectorised, as _scan_row_numpy does densely
                env["_scan_point"] = _scan_point_sparse_numpy
            self.auction = _rebind(_auction, env)
            self.release = _rebind(_release, env)
            self.top2_pass = _top2_pass_numpy
            self.seed = _seed_numpy
            self.span = _span_numpy
            self.best_pass = _best_pass_numpy
            self.slack = _slack_numpy


def _max_numba() -> Any:
    """:func:`_max` for numba: a call to ``llvm.maximum.f64``, which the loop vectoriser
    turns into a vector max reduction (with fastmath ``reassoc``, as the kernels have).
    The call is flagged ``nnan`` (its operands are never NaN, see :func:`_max`): one
    vector max per step, without the NaN checks ``llvm.maximum`` otherwise needs."""
    from llvmlite import ir
    from numba.core import types
    from numba.extending import intrinsic

    @intrinsic
    def _max(typingctx: Any, a: Any, b: Any) -> Any:
        sig = types.float64(a, b)

        def codegen(context: Any, builder: Any, signature: Any, args: Any) -> Any:
            a, b = (context.cast(builder, v, t, types.float64) for v, t in zip(args, signature.args))
            f64 = ir.DoubleType()
            fn = builder.module.declare_intrinsic("llvm.maximum", [f64], ir.FunctionType(f64, [f64, f64]))
            return builder.call(fn, [a, b], fastmath=("nnan",))

        return sig, codegen

    return _max


def _prefetch_numba() -> Any:
    """``_prefetch(a, j)``: ``llvm.prefetch`` of ``a[j]`` (1-D array) for reading, into
    all cache levels; only a hint: it never faults and changes no result."""
    from llvmlite import ir
    from numba.core import cgutils, types
    from numba.extending import intrinsic

    @intrinsic
    def _prefetch(typingctx: Any, a: Any, j: Any) -> Any:
        sig = types.void(a, j)

        def codegen(context: Any, builder: Any, signature: Any, args: Any) -> Any:
            aryty = signature.args[0]
            ary = context.make_array(aryty)(context, builder, args[0])
            at = context.cast(builder, args[1], signature.args[1], types.intp)
            ptr = cgutils.get_item_pointer(context, builder, aryty, ary, [at], wraparound=False)
            i8p, i32 = ir.IntType(8).as_pointer(), ir.IntType(32)
            fnty = ir.FunctionType(ir.VoidType(), [i8p, i32, i32, i32])
            fn = builder.module.declare_intrinsic("llvm.prefetch", [i8p], fnty)
            # read, highest locality, data cache
            builder.call(fn, [builder.bitcast(ptr, i8p), i32(0), i32(3), i32(1)])
            return context.get_dummy_value()

        return sig, codegen

    return _prefetch


def _by_size(serial: Any, parallel: Any, all_rows: bool) -> Any:
    """Call ``parallel`` when the rows to scan (all of S, or the second argument's
    length) hold at least PARALLEL_MIN entries (pairs, in the sparse layout)."""

    def run(S: Any, second: Any, *args: Any) -> None:
        n, k = S.shape
        per_row = S.cols.shape[0] / max(n, 1) if isinstance(S, SparseRows) else k
        work = (n if all_rows else second.shape[0]) * per_row
        (parallel if work >= PARALLEL_MIN else serial)(S, second, *args)

    run.serial, run.parallel = serial, parallel  # type: ignore[attr-defined]
    return run


PARALLEL_MIN = 1 << 20


def _by_points(serial: Any, parallel: Any) -> Any:
    """Call ``parallel`` when the first argument has at least PARALLEL_MIN / 16 entries."""

    def run(first: Any, *args: Any) -> Any:
        return (parallel if first.shape[0] * 16 >= PARALLEL_MIN else serial)(first, *args)

    run.serial, run.parallel = serial, parallel  # type: ignore[attr-defined]
    return run


def _rebind(fn: Any, env: dict, suffix: str = "") -> Any:
    """``fn`` with its global names looked up in ``env`` (one source, two engines);
    ``suffix`` is appended to its name (numba's disk cache tells functions apart by name)."""
    out = types.FunctionType(fn.__code__, env, fn.__name__ + suffix, fn.__defaults__, fn.__closure__)
    out.__qualname__ = fn.__qualname__ + suffix
    out.__module__ = fn.__module__
    return out


_cache: dict[tuple[str, str], Kernels] = {}


def kernels(engine: str | None = None, S: Any = None) -> Kernels:
    """The kernels for ``engine`` ("numba" or "numpy"; default: numba when installed)
    and the layout of the scores ``S`` (dense unless ``S`` is :class:`SparseRows`)."""
    if engine is None:
        engine = "numba" if HAVE_NUMBA else "numpy"
    if engine == "numba" and not HAVE_NUMBA:
        raise ImportError("the numba engine needs numba: pip install 'sinklabel[numba]'")
    key = (engine, layout(S))
    if key not in _cache:
        _cache[key] = Kernels(*key)
    return _cache[key]
