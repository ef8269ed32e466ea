"""Exactly balanced labels over the ranks of a process group (``balanced=True`` in
:func:`sinklabel.distributed.solve`): the gather / auction / certificate protocol.

Per head, in rounds (every rank takes part in every exchange, in the same order):

1. each rank sends rank 0 some of its points: the first round all of them, each with its
   ``m`` best clusters under the current prices (the Sinkhorn column potentials at
   first) and their scores, or its whole row when that is no longer;
2. rank 0 adds those pairs to the ones it holds (:class:`_Gathered`, CSR: O(pairs sent),
   never N x K) and solves the balanced problem restricted to them with the auction
   (:func:`sinklabel._balanced.balance` on :class:`~sinklabel._auction.SparseRows`,
   warm-started from the prices), then sends every rank its labels and the prices;
3. every rank computes the certificate's terms over *all* K clusters of its own points
   (:func:`sinklabel._balanced.certificate_terms`) and the terms are summed over the
   ranks: :func:`sinklabel._balanced.certificate` of the sum is the duality gap of the
   concatenated problem. Certified, or every row already on rank 0: done. Otherwise
   the points whose reduced costs fail are sent again with twice as many clusters.

The labels returned are optimal for the concatenated problem when certified: the
restricted problem's labels and prices are feasible for the full one, and the gap is
computed on the full one.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ._arrays import to_host
from ._auction import SparseRows
from ._balanced import STOP_RTOL, balance, certificate, certificate_terms
from ._balanced import TERMS as _TERMS
from .backends._distributed import Exchange

#: candidate clusters per point (its best under the Sinkhorn prices) sent to rank 0 in the
#: first round of the balanced step; doubled for the points sent again in each later round
_CANDIDATES = 4
#: rounds of the balanced step before the labels are returned uncertified
_MAX_ROUNDS = 16
_VIOLATIONS = _TERMS.index("violations")
_BLOCK = 1 << 20  # float64 elements per block of temporaries in the passes over a shard


def _host_scores(S: Any) -> np.ndarray:
    """This rank's scores of one head on the host, as the balanced step reads them
    (float32 or float64; see :func:`sinklabel._arrays.to_host`)."""
    host = to_host(S)
    return host if host.dtype in (np.float32, np.float64) else host.astype(np.float32)


def _width(m: int, k: int) -> int:
    """Floats per point sent to rank 0: its local row index, then either its whole row
    (when that is no longer than ``m`` (cluster, score) pairs) or the ``m`` pairs."""
    return 1 + (k if 2 * m >= k else 2 * m)


def _candidates(S: np.ndarray, rows: np.ndarray, prices: np.ndarray, m: int) -> np.ndarray:
    """Rows ``rows`` of this rank's scores for rank 0, ``_width(m, K)`` float64 each: the
    row index, then the row, or its ``m`` best clusters under ``prices`` and their scores
    (exact: float32 and float64 scores are exact in float64)."""
    k = S.shape[1]
    width = _width(m, k)
    out = np.empty((rows.size, width), dtype=np.float64)
    out[:, 0] = rows
    step = max(1, _BLOCK // k)
    for lo in range(0, rows.size, step):
        X = S[rows[lo : lo + step]].astype(np.float64)
        if width == 1 + k:
            out[lo : lo + step, 1:] = X
            continue
        with np.errstate(invalid="ignore"):
            idx = np.argpartition(prices - X, m - 1, axis=1)[:, :m]
        out[lo : lo + step, 1 : 1 + m] = idx
        out[lo : lo + step, 1 + m :] = np.take_along_axis(X, idx, axis=1)
    return out


class _Gathered:
    """Rank 0's candidate pairs of all ``n`` points, CSR by global point index (columns
    ascending in each row, ``-inf`` pairs left out): memory O(pairs received)."""

    def __init__(self, n: int, k: int, dtype: Any) -> None:
        self.n, self.k, self.dtype = n, k, dtype
        self.indptr = np.zeros(n + 1, dtype=np.int64)
        self.cols = np.empty(0, dtype=np.int32)
        self.vals = np.empty(0, dtype=dtype)

    def add(self, part: np.ndarray, offset: int, m: int) -> None:
        """Merge what one rank sent (see :func:`_candidates`) into the pairs held."""
        part = part.reshape(-1, _width(m, self.k))
        if not part.shape[0]:
            return
        rows = part[:, 0].astype(np.int64) + offset
        if part.shape[1] == 1 + self.k:  # whole rows
            cols = np.broadcast_to(np.arange(self.k, dtype=np.int64), (rows.size, self.k))
            vals = part[:, 1:]
        else:
            cols, vals = part[:, 1 : 1 + m].astype(np.int64), part[:, 1 + m :]
        keep = vals > -np.inf
        rows = np.broadcast_to(rows[:, None], keep.shape)[keep]
        key = np.concatenate([self._keys(), rows * self.k + cols[keep]])
        vals = np.concatenate([self.vals, vals[keep].astype(self.dtype)])
        del rows, cols, keep, part
        order = np.argsort(key, kind="stable")
        key, vals = key[order], vals[order]
        del order
        first = np.ones(key.size, dtype=bool)
        first[1:] = key[1:] != key[:-1]  # a pair sent twice is kept once (same score)
        key, self.vals = key[first], vals[first]
        del vals, first
        row, self.cols = np.divmod(key, self.k)
        self.cols = self.cols.astype(np.int32)
        self.indptr[1:] = np.cumsum(np.bincount(row, minlength=self.n))

    def _keys(self) -> np.ndarray:
        """``row * K + col`` of the pairs held (int64, ascending)."""
        row = np.repeat(np.arange(self.n, dtype=np.int64), np.diff(self.indptr))
        return row * self.k + self.cols

    def rows(self) -> SparseRows:
        return SparseRows(self.indptr, self.cols, self.vals, self.k)

    @property
    def nbytes(self) -> int:
        return self.indptr.nbytes + self.cols.nbytes + self.vals.nbytes


def balance_head_over_ranks(
    ex: Exchange, S: Any, log_v: Any, lam: float, target: np.ndarray, flexible: bool,
    counts: np.ndarray,
) -> dict:  # fmt: skip
    """Exactly balanced labels of one head over the ranks (see the module docstring).

    ``S``: this rank's scores (``counts[rank]`` x K); ``log_v``: the head's column
    potentials (equal on every rank); ``target``: the global sizes (for ``flexible``
    ones, N // K or N // K + 1, only N and K matter); ``counts``: every rank's number of
    points, in rank order. Returns, on every rank, this rank's ``labels`` and the global
    ``sizes``, ``gap``, ``certified``, ``objective``; ``rounds``, ``points_gathered``,
    ``scores_gathered`` (pairs received by rank 0), ``status`` (of rank 0's last auction;
    None elsewhere) and ``root_pairs_bytes`` (rank 0's candidate store at its largest).

    Every rank leaves each exchange together: a rank whose local step raised sends
    dummies of the agreed size and its failure flag, and every rank raises at the
    check that follows (before anyone waits on a point-to-point transfer).
    """
    rank, world = ex.rank, ex.world
    n_total = int(counts.sum())
    offsets = np.concatenate([[0], np.cumsum(counts)[:-1]]).astype(np.int64)
    S_host: Any = None
    k = int(S.shape[1])
    try:
        S_host = _host_scores(S)
    except Exception as exc:
        ex.fail(exc)
    lv = to_host(log_v)
    with np.errstate(divide="ignore", invalid="ignore"):
        prices = -np.asarray(lv, dtype=np.float64) / lam
    store = None  # rank 0: the pairs gathered so far
    rows = np.arange(counts[rank], dtype=np.int64)  # this rank's points to send
    m = min(k, _CANDIDATES)
    labels = np.zeros(counts[rank], dtype=np.int64)
    good = prices  # the last prices of a restricted problem solved to optimality
    complete = False  # every point's whole row is on rank 0
    gathered = entries = store_bytes = 0
    status, rounds = "none", 0
    while rounds < _MAX_ROUNDS:
        rounds += 1
        width = _width(m, k)
        part = np.zeros((rows.size, width))
        if not ex.failed:
            try:
                part = _candidates(S_host, rows, prices, m)
            except Exception as exc:
                ex.fail(exc)
        msg = np.zeros(world)
        msg[rank] = rows.size
        sent = ex.reduce(msg, "sum", "balanced").cpu().numpy().astype(np.int64)
        ex.check()
        gathered += int(sent.sum())
        entries += int(sent.sum()) * (width - 1 if width == 1 + k else m)
        parts = ex.gather(part, sent * width, "balanced_gather")
        del part
        # rank 0: the restricted problem (the pairs gathered so far), warm-started
        complete = complete or (width == 1 + k and int(sent.sum()) == n_total)
        new_prices = np.zeros(k + 1)  # the prices, and whether the auction ended "optimal"
        label_parts = None
        if parts is not None:
            try:
                if store is None:
                    store = _Gathered(n_total, k, S_host.dtype)
                for r in range(world):
                    store.add(parts[r], int(offsets[r]), m)
                    parts[r] = None  # each part is freed once merged
                store_bytes = max(store_bytes, store.nbytes)
                bal = balance(store.rows(), target, prices, flexible=flexible)
                new_prices[:k], status = bal.prices, bal.status
                new_prices[k] = float(status == "optimal")
                label_parts = [bal.labels[o : o + c] for o, c in zip(offsets, counts)]
                del bal
            except Exception as exc:
                ex.fail(exc)
                label_parts = [np.zeros(c) for c in counts]
        del parts
        # the prices reach every rank (a sum: rank 0's, zeros elsewhere) with rank 0's status
        got_prices = ex.reduce(new_prices, "sum", "balanced").cpu().numpy()
        ex.check()
        prices, optimal = got_prices[:k], bool(got_prices[k])
        labels = ex.scatter(label_parts, int(counts[rank]), "balanced_scatter").astype(np.int64)
        del label_parts
        # the certificate: every rank checks all K reduced costs of its own points
        terms = np.zeros(len(_TERMS) + k)
        viol = rows[:0]
        if not ex.failed:
            try:
                terms, viol = certificate_terms(S_host, labels, prices)
            except Exception as exc:
                ex.fail(exc)
        tot = ex.reduce(terms, "sum", "balanced").cpu().numpy()
        ex.check()
        cert = certificate(tot, prices, target, flexible)
        # done once the gap is as small as the single-process step leaves it (below the
        # certificate's tolerance), no point is short of its best cluster, or every row
        # is on rank 0 already
        if complete or cert.gap <= STOP_RTOL * cert.scale or (optimal and tot[_VIOLATIONS] == 0):
            break
        if not optimal:
            # the pairs gathered admit no labelling with these sizes, or too narrowly for
            # the auction's budget: every point again, with twice as many clusters, from
            # the last good prices
            rows, prices = np.arange(counts[rank], dtype=np.int64), good
        else:  # the points short of their best cluster again, with more clusters
            rows, good = viol, prices
        m = min(k, 2 * m)
    return dict(
        labels=labels, sizes=cert.sizes, gap=float(cert.gap), certified=cert.certified,
        objective=cert.objective, rounds=rounds, points_gathered=gathered,
        scores_gathered=entries, status=status if rank == 0 else None,
        root_pairs_bytes=store_bytes if rank == 0 else None,
    )  # fmt: skip
