"""Exactly balanced labels over the ranks of a process group (``balanced=True`` in
:func:`sinklabel.distributed.solve`): the gather / auction / certificate protocol."""

from __future__ import annotations

import dataclasses
import warnings
from typing import Any

import numpy as np
import torch

from . import _driver
from ._arrays import array_library
from ._balanced import CERT_RTOL, balance, uncertified_message
from ._result import ConvergenceWarning, Result
from ._sizes import integer_sizes
from ._validate import check_prior
from .backends._distributed import Exchange

# -- balanced=True over ranks -----------------------------------------------------------------

#: candidate clusters per point (its best under the Sinkhorn prices) sent to rank 0 in the
#: first round of the balanced step; doubled for the points sent again in each later round
_CANDIDATES = 4
#: rounds of the balanced step before the labels are returned uncertified
_MAX_ROUNDS = 16
_BLOCK = 1 << 20  # float64 elements per block of temporaries in the passes over a shard


def _host_scores(S: Any) -> np.ndarray:
    """This rank's scores of one head on the host, as the balanced step reads them
    (numpy in place, a CPU tensor as a shared view, a GPU array as one copy; float16
    and bfloat16 widened to float32, as :mod:`sinklabel._balanced` does)."""
    if isinstance(S, torch.Tensor):
        S = S.detach()
        if S.dtype not in (torch.float32, torch.float64):
            S = S.to(torch.float32)
        return S.cpu().numpy()
    if array_library(S) == "cupy":
        S = S.get()
    host = np.asarray(S)
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


def _fill(S_root: np.ndarray, part: np.ndarray, offset: int, m: int) -> None:
    """Write what one rank sent (see :func:`_candidates`) into rank 0's score matrix."""
    k = S_root.shape[1]
    part = part.reshape(-1, _width(m, k))
    rows = part[:, 0].astype(np.int64) + offset
    if part.shape[1] == 1 + k:
        S_root[rows] = part[:, 1:]
    else:
        S_root[rows[:, None], part[:, 1 : 1 + m].astype(np.int64)] = part[:, 1 + m :]


def _reduced_costs(S: np.ndarray, labels: np.ndarray, prices: np.ndarray) -> tuple:
    """Per point of this shard: ``max_k (S[i, k] - p_k)`` and ``S[i, y_i]`` (float64)."""
    n, k = S.shape
    best = np.empty(n)
    own = np.empty(n)
    step = max(1, _BLOCK // k)
    for lo in range(0, n, step):
        with np.errstate(invalid="ignore"):
            best[lo : lo + step] = (S[lo : lo + step].astype(np.float64) - prices).max(axis=1)
        own[lo : lo + step] = S[np.arange(lo, min(lo + step, n)), labels[lo : lo + step]]
    return best, own


def _bracket(sizes: np.ndarray, prices: np.ndarray, n: int, flexible: bool) -> float:
    """The dual's extra term for flexible sizes (as in :mod:`sinklabel._balanced`):
    ``sum_k (N // K + [k among the N % K dearest] - sizes_k) p_k`` (0 otherwise)."""
    k = prices.shape[0]
    base, extra = divmod(n, k)
    if not (flexible and extra):
        return 0.0
    top = np.zeros(k, dtype=np.int64)
    top[np.argsort(-prices, kind="stable")[:extra]] = 1
    return float(np.sum((base + top - sizes) * prices))


def balance_head_over_ranks(
    ex: Exchange, S: Any, log_v: Any, lam: float, target: np.ndarray, flexible: bool,
    counts: np.ndarray,
) -> dict:  # fmt: skip
    """Exactly balanced labels of one head over the ranks; see :func:`solve`.

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
    lv = log_v.detach().cpu().numpy() if isinstance(log_v, torch.Tensor) else np.asarray(log_v)
    with np.errstate(divide="ignore", invalid="ignore"):
        prices = -np.asarray(lv, dtype=np.float64) / lam
    S_root = None  # rank 0: the pairs gathered so far, -inf elsewhere
    rows = np.arange(counts[rank], dtype=np.int64)  # this rank's points to send
    m = min(k, _CANDIDATES)
    labels = np.zeros(counts[rank], dtype=np.int64)
    good = prices  # the last prices of a restricted problem solved to optimality
    complete = False  # every point's whole row is on rank 0
    gathered = entries = 0
    gap, certified, status, rounds = np.inf, False, "none", 0
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
        # rank 0: the restricted problem (the pairs gathered so far), warm-started
        complete = complete or (width == 1 + k and int(sent.sum()) == n_total)
        new_prices = np.zeros(k + 1)  # the prices, and whether the auction ended "optimal"
        label_parts = None
        if parts is not None:
            try:
                if S_root is None:
                    S_root = np.full((n_total, k), -np.inf, dtype=S_host.dtype)
                for r, got in enumerate(parts):
                    _fill(S_root, got, int(offsets[r]), m)
                bal = balance(S_root, target, prices, flexible=flexible)
                new_prices[:k], status = bal.prices, bal.status
                new_prices[k] = float(status == "optimal")
                label_parts = [bal.labels[o : o + c] for o, c in zip(offsets, counts)]
            except Exception as exc:
                ex.fail(exc)
                label_parts = [np.zeros(c) for c in counts]
        # the prices reach every rank (a sum: rank 0's, zeros elsewhere) with rank 0's status
        got_prices = ex.reduce(new_prices, "sum", "balanced").cpu().numpy()
        ex.check()
        prices, optimal = got_prices[:k], bool(got_prices[k])
        labels = ex.scatter(label_parts, int(counts[rank]), "balanced_scatter").astype(np.int64)
        # the certificate: every rank checks all K reduced costs of its own points
        msg = np.zeros(5 + k)
        viol = rows[:0]
        nan = 0.0
        if not ex.failed:
            try:
                best, own = _reduced_costs(S_host, labels, prices)
                paid = prices[labels]
                with np.errstate(invalid="ignore"):
                    rc = best - own + paid
                fine = np.isfinite(rc) & np.isfinite(own)
                viol = np.flatnonzero(~(rc <= 1e-12 * np.maximum(np.abs(own), np.abs(paid))))
                msg[0] = rc[fine].sum()
                msg[1] = np.maximum(np.abs(own), np.abs(paid))[fine].sum()
                msg[2] = np.count_nonzero(~fine)
                msg[3] = viol.size
                msg[4] = own[fine].sum()
                msg[5:] = np.bincount(labels, minlength=k)
                nan = float(np.isnan(best).any() or np.isnan(own).any())
            except Exception as exc:
                ex.fail(exc)
        tot = ex.reduce(msg, "sum", "balanced", nan=nan).cpu().numpy()
        ex.check()
        sizes = np.rint(tot[5:]).astype(np.int64)
        if tot[2] > 0:
            gap, scale = np.inf, 1.0
        else:
            total = tot[0] + _bracket(sizes, prices, n_total, flexible)
            gap, scale = max(total, 0.0) / n_total, max(tot[1] / n_total, 1e-300)
        certified = bool(gap <= CERT_RTOL * scale)
        if certified or complete:
            break
        if not optimal:
            # the pairs gathered admit no labelling with these sizes, or too narrowly for
            # the auction's budget: every point again, with twice as many clusters, from
            # the last good prices
            rows, prices = np.arange(counts[rank], dtype=np.int64), good
        elif tot[3] == 0:
            break
        else:  # the points short of their best cluster again, with more clusters
            rows, good = viol, prices
        m = min(k, 2 * m)
    objective = np.inf if tot[2] > 0 else -float(tot[4]) / n_total
    return dict(
        labels=labels, sizes=sizes, gap=float(gap), certified=certified, objective=objective,
        rounds=rounds, points_gathered=gathered, scores_gathered=entries,
        status=status if rank == 0 else None,
    )  # fmt: skip


def balance_over_ranks(
    res: Result, heads: list, prior: Any, multi: bool, counts: np.ndarray, ex: Exchange
) -> tuple[Result, list]:
    """``res`` (the distributed Sinkhorn solve) with exactly balanced labels."""
    n_total = int(counts.sum())
    priors = prior if (multi and isinstance(prior, (list, tuple))) else [prior] * len(heads)
    out_heads, info = [], []
    for t, (S, h) in enumerate(zip(heads, res.heads)):
        k = int(S.shape[1])
        p = priors[t]
        r_host = check_prior(p, n_total, k, "")
        target = integer_sizes(
            n_total,
            None
            if prior is None
            else r_host
            if not _driver._is_int(p)
            else np.rint(r_host * n_total).astype(np.int64),
            k,
        )  # the driver's rule
        got = balance_head_over_ranks(ex, S, h.log_v, res.lam, target, p is None, counts)
        labels = _as_home(got["labels"], S)
        out_heads.append(
            dataclasses.replace(
                h,
                labels=labels,
                objective=got["objective"],
                sizes=got["sizes"],
                target_sizes=got["sizes"] if p is None else target,
                balanced=True,
                certified=got["certified"],
                gap=got["gap"],
            )
        )
        info.append({key: got[key] for key in ("rounds", "points_gathered", "scores_gathered", "status")})
    uncertified = [t for t, h in enumerate(out_heads) if not h.certified]
    if uncertified:
        warnings.warn(uncertified_message(out_heads, uncertified), ConvergenceWarning, stacklevel=3)
    labels = (
        _driver._stack([h.labels for h in out_heads], array_library(heads[0]) or "numpy")
        if multi
        else out_heads[0].labels
    )
    return dataclasses.replace(res, heads=tuple(out_heads), labels=labels), info


def _as_home(labels: np.ndarray, home: Any) -> Any:
    """Host labels in the library and on the device of the caller's scores."""
    if isinstance(home, torch.Tensor):
        return torch.from_numpy(labels).to(home.device)
    if array_library(home) == "cupy":
        import cupy

        return cupy.asarray(labels)
    return labels
