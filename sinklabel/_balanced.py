"""Exactly balanced hard labels: the LP optimum of the paper's eq. 6, with a certificate.

For integer cluster sizes ``n_k`` the linear program

    max_y  sum_i S[i, y_i]    subject to   |{i : y_i = k}| = n_k        (P)

has the dual ``min_p  D(p) = sum_i max_k (S[i, k] - p_k) + sum_k n_k p_k``: any prices
``p`` bound the optimum from above, so ``D(p) - sum_i S[i, y_i] >= 0`` bounds how far
labels ``y`` are from optimal. The labels are *certified* when that gap, computed by
one pass over all N x K pairs, is below a tolerance. When ``K`` does not divide ``N``
and no prior is given the sizes may be ``N // K`` or ``N // K + 1`` (the optimiser
chooses which clusters get the extra point, as in :mod:`sinklabel.exact`); the dual is
then ``sum_i max_k (S[i, k] - p_k) + (N // K) sum_k p_k + (the N % K largest p_k)``.

Method: Bertsekas' auction for the semi-assignment (transportation) problem, with
epsilon-scaling, warm-started from the Sinkhorn column potentials (``p_k = -log v_k /
lam``, under which the argmax labels are already optimal for *their* sizes) and seeded
with that argmax: each over-full cluster keeps the points that prefer it by the widest
margin, and only the rest bid (a few per cent of the points at lam = 25). Each epsilon
phase ends with one pass over the scores that checks every reduced cost, gives the
duality gap, and sends back to bidding only the points whose reduced cost exceeds the
next, smaller epsilon. Memory: the scores are read, never copied; the state is a few
vectors of length N.

Notation: ``S`` (N x K) scores, ``p`` (K) cluster prices; a point's value for cluster k
is ``S[i, k] - p_k``; ``eps`` the slack of epsilon-complementary slackness.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any

import numpy as np

from ._auction import BUDGET, DONE, STRANDED, kernels

__all__ = ["BalancedLabels", "balance", "balance_head", "resolve_balanced", "uncertified_message"]

log = logging.getLogger("sinklabel")

#: certified when the duality gap per point is at most CERT_RTOL * scale
CERT_RTOL = 1e-9
#: epsilon-scaling stops once the gap per point is at most STOP_RTOL * scale
STOP_RTOL = 1e-12
#: epsilon is divided by this between phases
THETA = 8.0
#: the first epsilon, as a fraction of the typical price rise the seed needs
EPS0_FRACTION = 0.2
#: bids per waiting point (and per cluster) after which a phase raises its epsilon
WAR_BIDS = 20


@dataclass(frozen=True)
class BalancedLabels:
    """What :func:`balance` found for one head.

    Attributes
    ----------
    labels : ndarray of int64, shape (n_points,)
    sizes : ndarray of int64, shape (n_clusters,)
    prices : ndarray of float64, shape (n_clusters,)
        Dual prices ``p``; ``max_k (S[i, k] - p_k)`` are the point potentials.
    gap : float
        ``(D(p) - sum_i S[i, labels_i]) / n_points`` (>= 0; ``inf`` if a forbidden pair
        had to be used).
    certified : bool
        ``gap <= CERT_RTOL * scale``, with ``scale`` the mean magnitude of the numbers in
        a reduced cost (so the test is unchanged by rescaling the scores).
    status : str
        "optimal" (the auction finished), "budget" (bid budget spent) or "infeasible"
        (no labelling with these sizes avoids the -inf pairs); the last two fall back to
        a greedy completion that is still exactly balanced.
    bids, passes, phases : int
        Work done: single-row bids, full passes over the scores, epsilon phases.
    seconds : float
    """

    labels: np.ndarray
    sizes: np.ndarray
    prices: np.ndarray
    gap: float
    certified: bool
    status: str
    bids: int
    passes: int
    phases: int
    seconds: float


def resolve_balanced(balanced: Any, weights: Any, n_points: int, n_local: int) -> bool:
    """Whether :func:`sinklabel.solve` makes balanced labels (validated before heavy work).

    ``None`` means: whenever they are defined. ``True`` where they are not raises.
    """
    if balanced is not None and not isinstance(balanced, (bool, np.bool_)):
        raise TypeError(f"`balanced` must be True, False or None; got {type(balanced).__name__}")
    why = None
    if weights is not None:
        why = (
            "`weights` is not supported with balanced=True: balanced labels count points "
            "(sizes are numbers of points); drop the weights or use balanced=False"
        )
    elif n_points != n_local:
        why = (
            "balanced=True needs every point's scores in one process; with a distributed "
            f"backend this rank holds {n_local} of {n_points} points (gather the scores or "
            "use balanced=False)"
        )
    if balanced is None:
        return why is None
    if balanced and why is not None:
        raise ValueError(why)
    return bool(balanced)


def balance_head(
    B: Any, original: Any, S: Any, log_v: Any, lam: float, sizes: np.ndarray, *, flexible: bool
) -> BalancedLabels:
    """:func:`balance` for one head of :func:`sinklabel.solve`, from its potentials.

    Reads the scores on the host: the caller's numpy array in place (float16 is widened
    to float32), a CPU tensor through a shared-memory view, a GPU array as one copy.
    """
    if isinstance(original, np.ndarray):
        host = original
    elif hasattr(original, "detach"):  # torch: to the host first, widen half precisions there
        host = original.detach().cpu()
        host = (host.float() if host.dtype.itemsize < 4 else host).numpy()
    else:
        host = B.to_numpy(S)
    host = np.asarray(host)  # a plain ndarray view of memory maps
    if host.dtype not in (np.float32, np.float64):
        host = host.astype(np.float32)
    prices0 = -np.asarray(B.to_numpy(log_v), dtype=np.float64) / lam
    out = balance(host, sizes, prices0, flexible=flexible)
    log.debug(
        "balanced: %s in %.3f s (%d bids, %d passes, %d phases), gap/point %.3g",
        out.status,
        out.seconds,
        out.bids,
        out.passes,
        out.phases,
        out.gap,
    )
    return out


def uncertified_message(heads: Any, which: list) -> str:
    """The warning for heads whose balanced labels lack a certificate."""
    worst = max(heads[t].gap for t in which)
    return (
        f"sinklabel: the exactly balanced labels of {len(which)} of {len(heads)} head(s) "
        f"are not certified optimal (duality gap up to {worst:.3g} per point): the auction "
        "ran out of its bid budget, or no labelling with these sizes avoids the -inf "
        "scores, and the labels were completed greedily. Check the -inf pattern against "
        "the sizes, or warm-start from a tighter solve (smaller tol)"
    )


def balance(
    S: np.ndarray,
    sizes: np.ndarray,
    prices0: np.ndarray,
    *,
    flexible: bool = False,
    eps0: float | None = None,
    max_bids: int | None = None,
    engine: str | None = None,
) -> BalancedLabels:
    """Optimal labels of (P) for one head.

    Parameters
    ----------
    S : ndarray of shape (n_points, n_clusters), float32 or float64
        Scores; ``-inf`` forbids a pair. Read only.
    sizes : ndarray of int64, shape (n_clusters,)
        Target sizes, summing to ``n_points``. With ``flexible`` only ``n_points`` and
        ``n_clusters`` matter: sizes ``N // K`` or ``N // K + 1``, chosen optimally.
    prices0 : ndarray of float64, shape (n_clusters,)
        Starting prices, e.g. ``-log_v / lam`` from Sinkhorn (``+inf`` for clusters of
        size 0).
    eps0 : float, optional
        First epsilon (default: a thousandth of the mean price spread).
    max_bids : int, optional
        Bid budget over all phases (default ``100 * (n_points + n_clusters)``).
    engine : {"numba", "numpy"}, optional
        Default: numba when it is installed.
    """
    t0 = time.perf_counter()
    kern = kernels(engine)
    n, k = S.shape
    sizes = np.asarray(sizes, dtype=np.int64)
    base, extra = divmod(n, k)
    flexible = bool(flexible and extra)
    if flexible:
        room = np.full(k, base + 1, dtype=np.int64)
        n_dummy = k - extra
    else:
        if int(sizes.sum()) != n:
            raise ValueError(f"sizes must sum to n_points={n}; got {int(sizes.sum())}")
        room = sizes.copy()
        n_dummy = 0
    n_slots = int(room.sum())  # = n + n_dummy
    start = np.zeros(k, dtype=np.int64)
    np.cumsum(room[:-1], out=start[1:])
    slot_cluster = np.repeat(np.arange(k, dtype=np.int64), room)
    has_slot = room > 0

    p0 = np.asarray(prices0, dtype=np.float64).copy()
    finite = np.isfinite(p0) & has_slot
    # only differences matter; a cluster with slots but no finite price starts dearest
    p0 = np.where(finite, p0 - p0[finite].max(), 0.0) if finite.any() else np.zeros(k)
    minp = np.where(has_slot, p0, np.inf)
    span, magnitude = _score_span(S)
    magnitude = max(magnitude, float(np.abs(p0).max()))
    big = 2.0 * span + 1.0  # the bid increment of a point with a single allowed cluster
    spread = float(np.mean(np.abs(p0[finite] - p0[finite].mean()))) if finite.any() else 0.0
    scale_guess = max(spread, 1e-3 * span) or magnitude or 1.0
    eps = float(eps0) if eps0 is not None else 1e-3 * scale_guess
    # below this, a price plus eps would round back to the price
    eps_floor = 1e-14 * max(scale_guess, magnitude)
    eps = max(eps, eps_floor)

    # seed: every point at its best cluster under p0. A cluster with more takers than
    # slots keeps those that prefer it by the widest margin; each kept point holds its
    # slot at the bid it would make, p0 + (its margin over its second-best cluster),
    # which is 0-complementary slackness. The points left over (a few per cent at
    # lam = 25) and the dummies bid.
    k1 = np.empty(n, dtype=np.int64)
    v1 = np.empty(n, dtype=np.float64)
    v2 = np.empty(n, dtype=np.float64)
    kern.top2_pass(S, minp, k1, v1, v2)
    n_passes = 1
    price = minp[slot_cluster].copy()
    holder = np.full(n_slots, -1, dtype=np.int64)
    slot_of = np.full(n + n_dummy, -1, dtype=np.int64)
    reachable = np.flatnonzero(k1 >= 0)
    margin = v1[reachable] - v2[reachable]
    margin = np.where(np.isfinite(margin), margin, big)
    order = np.lexsort((-margin, k1[reachable]))
    pts, ks, mg = reachable[order], k1[reachable][order], margin[order]
    first = np.searchsorted(ks, np.arange(k))
    rank = np.arange(pts.size) - first[ks]
    keep = rank < room[ks]
    kp, kk, kr, km = pts[keep], ks[keep], rank[keep], mg[keep]
    # a sorted block is a heap: empty slots (at p0) first, then the kept points by
    # ascending bid, the least attached at the root
    slot = start[kk] + (room[kk] - 1 - kr)
    price[slot] = p0[kk] + km
    holder[slot] = kp
    slot_of[kp] = slot
    minp = np.where(has_slot, price[np.minimum(start, n_slots - 1)], np.inf)
    contested = (np.bincount(ks, minlength=k) > room) & has_slot
    if eps0 is None and contested.any():
        # the price rise that sheds an over-demanded cluster's excess at the seed says
        # how far the starting prices are from clearing: the first phase's scale
        rise = float(np.median((minp - p0)[contested]))
        eps = max(eps, EPS0_FRACTION * rise)
    dummy_in = np.full(k, -1, dtype=np.int64)
    waiting = np.concatenate([pts[~keep], np.flatnonzero(k1 < 0), np.arange(n, n + n_dummy, dtype=np.int64)])
    queue = np.empty(n + n_dummy + 1, dtype=np.int64)
    queue[: waiting.size] = waiting
    head, tail = 0, waiting.size
    log.debug("balanced: %d of %d bidders wait after the seed", waiting.size, n + n_dummy)

    budget = int(max_bids) if max_bids is not None else 100 * (n + n_dummy + k)
    ok = k1 >= 0
    scale = _scale(v1[ok] + minp[k1[ok]], minp[k1[ok]])
    touched = np.zeros(n + n_dummy, dtype=np.bool_)
    best, own = v1, v2  # buffers for the certificate pass
    bids_total = 0
    phases = 0
    status = "optimal"
    gap = np.inf
    qlen = queue.shape[0]
    while True:
        phases += 1
        while True:
            # a first phase that needs many bids per waiting point is a price war: eps
            # is too small for how far the starting prices are from the optimum. Raise
            # it and go on from where it stopped (eps-complementary slackness holds
            # for any larger eps). Later phases start from eps-optimal prices.
            allowance = WAR_BIDS * ((tail - head) % qlen + k) if phases == 1 else budget
            code, bids, head, tail = kern.auction(
                S,
                price,
                holder,
                slot_of,
                start,
                room,
                dummy_in,
                minp,
                queue,
                head,
                tail,
                touched,
                n,
                eps,
                big,
                min(allowance, budget - bids_total),
            )
            bids_total += bids
            if code != BUDGET or bids_total >= budget:
                break
            if eps * THETA <= big:
                eps *= THETA
                log.debug("balanced: price war, eps raised to %.3g", eps)
        if code != DONE:
            status = "budget" if code == BUDGET else "infeasible"
            break
        labels = slot_cluster[slot_of[:n]]
        # only a point that has bid since the seed can be short of its best cluster
        cand = np.flatnonzero(touched[:n])
        slack = np.empty(cand.size, dtype=np.float64)
        kern.slack(S, cand, labels[cand], price[slot_of[cand]], minp, slack)
        # the gap is at most the sum of the positive slacks (plus, for flexible sizes,
        # the price of putting the extra points in other than the dearest clusters)
        bound = (float(np.sum(np.maximum(slack, 0.0))) + _bracket(labels, minp, flexible)) / n
        log.debug(
            "balanced: phase %d, eps %.3g, %d bids, %d points to check, gap/point <= %.3g",
            phases,
            eps,
            bids,
            cand.size,
            bound,
        )
        if bound <= STOP_RTOL * scale or eps <= eps_floor:
            # the certificate: every reduced cost, in one pass over the scores
            kern.best_pass(S, minp, labels, best, own)
            n_passes += 1
            gap, scale = _gap(best, own, labels, minp, flexible)
            if gap <= STOP_RTOL * scale or eps <= eps_floor:
                break
            log.debug("balanced: the certificate found a gap the slack bound missed; rechecking all")
            cand = np.arange(n)
            slack = np.empty(n, dtype=np.float64)
            kern.slack(S, cand, labels, price[slot_of[:n]], minp, slack)
            n_passes += 1
        eps = max(eps / THETA, eps_floor)
        # back to bidding: the points more than the new eps short of their best other
        # cluster; those with no slack left stay at complementary slackness for good
        out = cand[slack > eps]
        touched[cand[slack <= 0.0]] = False
        if n_dummy:
            out = np.concatenate([out, _restless_dummies(price, slot_of, dummy_in, minp, n, n_dummy, eps)])
        kern.release(out, price, holder, slot_of, start, slot_cluster, dummy_in, minp, n)
        queue[: out.size] = out
        head, tail = 0, out.size
    if status != "optimal":
        labels = _complete(S, slot_of, slot_cluster, minp, room, flexible)
        kern.best_pass(S, minp, labels, best, own)
        n_passes += 1
        gap, scale = _gap(best, own, labels, minp, flexible)
    sizes_out = np.bincount(labels, minlength=k).astype(np.int64)
    return BalancedLabels(
        labels=labels,
        sizes=sizes_out,
        prices=minp.copy(),
        gap=float(gap),
        certified=bool(gap <= CERT_RTOL * scale),
        status=status,
        bids=bids_total,
        passes=n_passes,
        phases=phases,
        seconds=time.perf_counter() - t0,
    )


def _restless_dummies(price, slot_of, dummy_in, minp, n, n_dummy, eps) -> np.ndarray:
    """Dummies that paid more than ``eps`` above the cheapest cluster without a dummy."""
    dummies = np.arange(n, n + n_dummy, dtype=np.int64)
    free = dummy_in < 0
    cheapest = float(minp[free].min()) if free.any() else np.inf
    return dummies[price[slot_of[dummies]] - cheapest > eps]


def _score_span(S: np.ndarray) -> tuple[float, float]:
    """Spread (max - min) and magnitude (max |.|) of the finite scores of a sample of rows."""
    rows = S[:: max(1, S.shape[0] // 2048)].astype(np.float64)
    fin = rows[np.isfinite(rows)]
    if not fin.size:
        return 1.0, 1.0
    return float(fin.max() - fin.min()), float(np.abs(fin).max())


def _scale(own: np.ndarray, paid: np.ndarray) -> float:
    """Mean magnitude of the numbers a reduced cost is made of (tolerances scale with it)."""
    if not own.size:
        return 1.0
    return max(float(np.mean(np.maximum(np.abs(own), np.abs(paid)))), 1e-300)


def _bracket(labels: np.ndarray, minp: np.ndarray, flexible: bool) -> float:
    """For flexible sizes: ``D(p)`` minus the single-price reduced costs minus the
    primal, ``base * sum(p) + (the N % K largest p) - sum_i p_{y_i}`` (>= 0)."""
    if not flexible:
        return 0.0
    n, k = labels.shape[0], minp.shape[0]
    base, extra = divmod(n, k)
    sizes = np.bincount(labels, minlength=k)
    top = np.zeros(k, dtype=np.int64)
    top[np.argsort(-minp, kind="stable")[:extra]] = 1
    return float(np.sum((base + top - sizes) * minp))


def _gap(best, own, labels, minp, flexible) -> tuple[float, float]:
    """Duality gap per point of ``labels`` under the prices ``minp``, and its scale.

    ``best[i] = max_k (S[i, k] - minp[k])``, ``own[i] = S[i, labels[i]]``.
    """
    n = own.shape[0]
    p_lab = minp[labels]
    if not np.isfinite(own).all():
        return np.inf, 1.0
    total = float(np.sum(best - own + p_lab))  # each point's reduced cost, >= 0
    total += _bracket(labels, minp, flexible)
    return max(total, 0.0) / n, _scale(own, p_lab)


def _complete(S, slot_of, slot_cluster, minp, room, flexible) -> np.ndarray:
    """Exactly balanced labels from a partial auction state (the fallback).

    Keeps every placed point (a cluster over its final size gives back its least
    attached ones), then fills the remaining room greedily: in rounds, each waiting
    point proposes its best cluster with room (value ``S - minp``) and each cluster
    takes its best proposers. ``-inf`` pairs are used only where nothing else has room.
    """
    n, k = S.shape
    labels = np.full(n, -1, dtype=np.int64)
    placed = slot_of[:n] >= 0
    labels[placed] = slot_cluster[slot_of[:n][placed]]
    counts = np.bincount(labels[placed], minlength=k)
    if flexible:
        base, extra = divmod(n, k)
        target = np.full(k, base, dtype=np.int64)
        # the extra points go to the fullest clusters, then to the dearest
        pref = np.lexsort((-np.where(np.isfinite(minp), minp, -np.inf), -counts))
        target[pref[:extra]] += 1
    else:
        target = room
    for c in np.flatnonzero(counts > target):
        members = np.flatnonzero(labels == c)
        vals = S[members, c].astype(np.float64)
        labels[members[np.argsort(vals, kind="stable")[: counts[c] - target[c]]]] = -1
    room_left = target - np.bincount(labels[labels >= 0], minlength=k)
    waiting = np.flatnonzero(labels < 0)
    price = np.where(np.isfinite(minp), minp, 0.0)
    step = max(1, (1 << 21) // k)  # rows per block of float64 temporaries
    while waiting.size:
        choice = np.empty(waiting.size, dtype=np.int64)
        val = np.empty(waiting.size, dtype=np.float64)
        for lo in range(0, waiting.size, step):
            X = S[waiting[lo : lo + step]].astype(np.float64) - price
            X = np.where(np.isneginf(X), -1e300, X)
            X[:, room_left <= 0] = -np.inf
            choice[lo : lo + step] = X.argmax(axis=1)
            val[lo : lo + step] = X[np.arange(X.shape[0]), choice[lo : lo + step]]
        done = np.zeros(waiting.size, dtype=bool)
        for c in np.unique(choice):
            who = np.flatnonzero(choice == c)
            take = who[np.argsort(-val[who], kind="stable")[: room_left[c]]]
            labels[waiting[take]] = c
            room_left[c] -= take.size
            done[take] = True
        waiting = waiting[~done]
    return labels


# the kernels report these codes
assert (DONE, BUDGET, STRANDED) == (0, 1, 2)
