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

The certificate is a sum over points: :func:`certificate_terms` gives the additive terms
of one set of rows (all points, or one rank's shard), :func:`certificate` turns their sum
(over shards) into the gap. The single-process solve and the distributed one
(:mod:`sinklabel._balanced_ranks`, which only adds the terms up over the ranks) share them.

Notation: ``S`` (N x K) scores, ``p`` (K) cluster prices; a point's value for cluster k
is ``S[i, k] - p_k``; ``eps`` the slack of epsilon-complementary slackness. ``S`` may also
be :class:`sinklabel._auction.SparseRows` (some pairs only, the others ``-inf``): rank 0
of a distributed solve runs :func:`balance` on the pairs the ranks sent it.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np

from ._arrays import to_host
from ._auction import BUDGET, DONE, STRANDED, SparseRows, kernels, rows_block

__all__ = [
    "BalancedLabels",
    "Certificate",
    "balance",
    "balance_head",
    "certificate",
    "certificate_terms",
    "resolve_balanced",
    "uncertified_message",
]

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
    Balanced labels are defined over the points of every process (``n_points``, of which
    ``n_local`` here): :mod:`sinklabel._balanced_ranks` makes them across ranks.
    """
    if balanced is not None and not isinstance(balanced, (bool, np.bool_)):
        raise TypeError(f"`balanced` must be True, False or None; got {type(balanced).__name__}")
    why = None
    if weights is not None:
        why = (
            "`weights` is not supported with balanced=True: balanced labels count points "
            "(sizes are numbers of points); drop the weights or use balanced=False"
        )
    if balanced is None:
        return why is None
    if balanced and why is not None:
        raise ValueError(why)
    return bool(balanced)


# -- the certificate, as sums over points --------------------------------------------------

#: the additive terms of :func:`certificate_terms`, in order; the K cluster counts follow
TERMS = ("reduced_cost", "magnitude", "nonfinite", "violations", "own")


class Certificate(NamedTuple):
    """What the summed terms say about labels and prices (see :func:`certificate`)."""

    gap: float  # D(p) minus the labels' total score, per point (>= 0; inf on a -inf pair)
    certified: bool  # gap <= CERT_RTOL * scale
    scale: float  # mean magnitude of the numbers in a reduced cost
    sizes: np.ndarray  # int64 (K,): the labels' cluster sizes
    objective: float  # minus the mean score of the labels (inf on a -inf pair)


def certificate_terms(
    S: Any, labels: np.ndarray, prices: np.ndarray, engine: str | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """The certificate's additive terms over the rows of ``S`` (one pass over them).

    With ``r_i = max_k (S[i, k] - p_k) - S[i, y_i] + p_{y_i}`` (point i's reduced cost,
    >= 0 up to rounding) and ``m_i = max(|S[i, y_i]|, |p_{y_i}|)``, returns

    - ``terms``, float64 of length ``len(TERMS) + K``: the sum of the finite ``r_i``,
      the sum of their ``m_i``, the number of points whose ``r_i`` or score is not
      finite, the number of *violations* (below), the sum of the finite scores
      ``S[i, y_i]``, then the count of labels per cluster;
    - ``violators``: the rows whose ``r_i`` exceeds rounding (``r_i > 1e-12 m_i``, or
      NaN): the points that are short of their best cluster under ``prices``.

    Terms of disjoint sets of rows add up: :func:`certificate` of the sum certifies
    their union.
    """
    n, k = labels.shape[0], prices.shape[0]
    best = np.empty(n)
    own = np.empty(n)
    kernels(engine, S).best_pass(S, prices, labels, best, own)
    paid = prices[labels]
    with np.errstate(invalid="ignore"):
        best -= own
        best += paid  # the reduced costs
    np.maximum(np.abs(own), np.abs(paid), out=paid)  # the magnitudes
    fine = np.isfinite(best) & np.isfinite(own)
    violators = np.flatnonzero(~(best <= 1e-12 * paid))
    terms = np.zeros(len(TERMS) + k)
    terms[0] = best[fine].sum()
    terms[1] = paid[fine].sum()
    terms[2] = n - np.count_nonzero(fine)
    terms[3] = violators.size
    terms[4] = own[fine].sum()
    terms[len(TERMS) :] = np.bincount(labels, minlength=k)
    return terms, violators


def certificate(terms: np.ndarray, prices: np.ndarray, target: np.ndarray, flexible: bool) -> Certificate:
    """The duality gap of labels under ``prices``, from the sum of their
    :func:`certificate_terms` (over all points; the shards' terms added up).

    ``D(p) - sum_i S[i, y_i] = sum_i r_i + sum_k (t_k - n_k) p_k`` with ``n_k`` the
    labels' sizes and ``t_k`` the sizes in the dual: ``target`` for fixed sizes; for
    ``flexible`` ones (N // K or N // K + 1) the dual's, ``N // K`` plus one for the
    ``N % K`` dearest clusters.
    """
    n_terms = len(TERMS)
    sizes = np.rint(terms[n_terms:]).astype(np.int64)
    n = int(sizes.sum())
    if terms[2] > 0 or n == 0:
        return Certificate(np.inf, False, 1.0, sizes, np.inf)
    total = float(terms[0]) + _size_term(sizes, prices, target, flexible)
    gap, scale = max(total, 0.0) / n, max(float(terms[1]) / n, 1e-300)
    return Certificate(gap, bool(gap <= CERT_RTOL * scale), scale, sizes, -float(terms[4]) / n)


def _size_term(sizes: np.ndarray, prices: np.ndarray, target: np.ndarray, flexible: bool) -> float:
    """``sum_k (t_k - sizes_k) p_k`` (see :func:`certificate`; 0 where ``t_k = sizes_k``)."""
    k = prices.shape[0]
    base, extra = divmod(int(sizes.sum()), k)
    if flexible and extra:
        t = np.full(k, base, dtype=np.int64)
        t[np.argsort(-prices, kind="stable")[:extra]] += 1
    else:
        t = np.asarray(target, dtype=np.int64)
    diff = t - sizes
    used = diff != 0
    return float(np.sum(diff[used] * prices[used]))


def balance_head(
    B: Any, original: Any, S: Any, log_v: Any, lam: float, sizes: np.ndarray, *, flexible: bool
) -> BalancedLabels:
    """:func:`balance` for one head of :func:`sinklabel.solve`, from its potentials.

    Reads the scores on the host (:func:`sinklabel._arrays.to_host`): the caller's numpy
    array in place (float16 is widened to float32), a CPU tensor through a shared-memory
    view, a GPU array as one copy.
    """
    host = to_host(original)
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
    kern = kernels(engine, S)
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
    span, magnitude, _ = kern.span(S, max(1, n // 2048))  # a sample of the rows
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
    takers = np.empty(k, dtype=np.int64)
    queue = np.empty(n + n_dummy + 1, dtype=np.int64)
    # a sorted block is a heap: empty slots (at p0) first, then the kept points by
    # ascending bid, the least attached at the root
    tail = kern.seed(k1, v1, v2, p0, room, start, big, price, holder, slot_of, takers, queue)
    queue[tail : tail + n_dummy] = np.arange(n, n + n_dummy, dtype=np.int64)
    head, tail = 0, tail + n_dummy
    minp = np.where(has_slot, price[np.minimum(start, n_slots - 1)], np.inf)
    contested = (takers > room) & has_slot
    if eps0 is None and contested.any():
        # the price rise that sheds an over-demanded cluster's excess at the seed says
        # how far the starting prices are from clearing: the first phase's scale
        rise = float(np.median((minp - p0)[contested]))
        eps = max(eps, EPS0_FRACTION * rise)
    dummy_in = np.full(k, -1, dtype=np.int64)
    log.debug("balanced: %d of %d bidders wait after the seed", tail, n + n_dummy)

    budget = int(max_bids) if max_bids is not None else 100 * (n + n_dummy + k)
    ok = k1 >= 0
    scale = _scale(v1[ok] + minp[k1[ok]], minp[k1[ok]])
    touched = np.zeros(n + n_dummy, dtype=np.bool_)
    del v1, v2
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
        counts = np.bincount(labels, minlength=k)
        bound = (float(np.sum(np.maximum(slack, 0.0))) + _size_term(counts, minp, sizes, flexible)) / n
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
            cert = certificate(certificate_terms(S, labels, minp, kern.engine)[0], minp, sizes, flexible)
            n_passes += 1
            gap, scale = cert.gap, cert.scale
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
        cert = certificate(certificate_terms(S, labels, minp, kern.engine)[0], minp, sizes, flexible)
        n_passes += 1
        gap, scale = cert.gap, cert.scale
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


def _scale(own: np.ndarray, paid: np.ndarray) -> float:
    """Mean magnitude of the numbers a reduced cost is made of (tolerances scale with it)."""
    if not own.size:
        return 1.0
    return max(float(np.mean(np.maximum(np.abs(own), np.abs(paid)))), 1e-300)


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
        vals = rows_block(S, members)[:, c] if isinstance(S, SparseRows) else S[members, c]
        labels[members[np.argsort(vals, kind="stable")[: counts[c] - target[c]]]] = -1
    room_left = target - np.bincount(labels[labels >= 0], minlength=k)
    waiting = np.flatnonzero(labels < 0)
    price = np.where(np.isfinite(minp), minp, 0.0)
    step = max(1, (1 << 21) // k)  # rows per block of float64 temporaries
    while waiting.size:
        choice = np.empty(waiting.size, dtype=np.int64)
        val = np.empty(waiting.size, dtype=np.float64)
        for lo in range(0, waiting.size, step):
            X = rows_block(S, waiting[lo : lo + step]) - price
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
