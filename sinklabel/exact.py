"""The exact reference: the LP optimum of the paper's eq. 6 as hard labels, through POT.

For integer cluster sizes the linear program

    max_y  sum_i S[i, y_i]   subject to   |{i : y_i = k}| = n_k   for every k

has an integral optimum, so the network simplex (``ot.emd``) with integer marginals and
cost ``-S`` returns hard labels directly. When ``K`` does not divide ``N`` and no prior is
given, the sizes are ``N // K`` or ``N // K + 1``, and *which* clusters get the extra
point is part of the optimisation: every cluster gets ``N // K`` regular slots and one
optional extra slot, and ``K - N % K`` dummy points with zero cost fill the extra slots
left unused.

POT is an optional dependency (``pip install 'sinklabel[lp]'``). Its dense solver works
in float64 on an (N x K) cost matrix: use it on problems up to about 10^5 x 10^2.
``MAX_ITER_REACHED`` (and any other non-optimal status) is raised as an error, never
returned as an infeasible plan.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np

from ._sizes import integer_sizes
from ._validate import check_prior

__all__ = ["ExactSolution", "solve_exact", "assign_exact", "objective"]

# POT's network simplex status codes
_STATUS = {0: "INFEASIBLE", 1: "OPTIMAL", 2: "UNBOUNDED", 3: "MAX_ITER_REACHED"}


@dataclass(frozen=True)
class ExactSolution:
    """An optimal exactly balanced labelling.

    Attributes
    ----------
    labels : ndarray of int64, shape (n_points,)
    objective : float
        ``-mean_i S[i, labels_i]`` (the paper's cross-entropy on log-probabilities): the
        smallest any labelling with these sizes can reach.
    sizes : ndarray of int64, shape (n_clusters,)
    """

    labels: np.ndarray
    objective: float
    sizes: np.ndarray


def objective(scores: np.ndarray, labels: np.ndarray) -> float:
    """``-mean_i S[i, labels_i]``."""
    S = np.asarray(scores)
    return -float(np.mean(S[np.arange(S.shape[0]), labels].astype(np.float64)))


def _import_ot() -> Any:
    try:
        import ot
    except ImportError as exc:
        raise ImportError(
            "sinklabel.exact needs POT; install it with: pip install 'sinklabel[lp]'"
        ) from exc
    return ot


def solve_exact(scores: Any, *, prior: Any = None, max_iter: int | None = None) -> ExactSolution:
    """Exactly balanced labels that maximise ``sum_i S[i, y_i]``.

    Parameters
    ----------
    scores : array of shape (n_points, n_clusters)
        Scores (log-probabilities or logits); ``-inf`` forbids a pair.
    prior : array of shape (n_clusters,), optional
        Integer sizes summing to ``n_points``, or a probability vector rounded to
        integer sizes by largest remainder (ties to the lower index). Default: the
        equipartition, with the extra points of ``N % K`` placed optimally.
    max_iter : int, optional
        Network-simplex iteration cap; default ``max(10**7, 50 * n_points * n_clusters)``.

    Returns
    -------
    ExactSolution

    Raises
    ------
    RuntimeError
        If the solver stops before optimality (e.g. its iteration cap).
    ValueError
        If no labelling with these sizes avoids the ``-inf`` pairs, or on bad input.
    """
    ot = _import_ot()
    S = np.asarray(scores)
    if S.ndim != 2 or 0 in S.shape:
        raise ValueError(
            f"`scores` must be a non-empty 2-D array (n_points, n_clusters); got shape {S.shape}"
        )
    if S.dtype.kind != "f":
        raise TypeError(f"`scores` must hold floating-point values; got dtype {S.dtype}")
    if np.isnan(S).any() or np.isposinf(S).any():
        raise ValueError("`scores` must not contain NaN or +inf")
    n, k = S.shape
    r = check_prior(prior, n, k, "")
    forbidden = np.isneginf(S)
    finite = S[~forbidden].astype(np.float64)
    if finite.size == 0:
        raise ValueError("`scores` is -inf everywhere")
    span = float(finite.max() - finite.min()) + 1.0
    cost = np.where(forbidden, 0.0, -S.astype(np.float64))
    # a forbidden pair costs more than any difference between two allowed labellings
    cost[forbidden] = -float(finite.min()) + span * (n + 1)
    if prior is None and n % k:
        base, extra = divmod(n, k)
        dummies = k - extra
        big = -float(finite.min()) + span * (n + 1)
        M = np.full((n + dummies, 2 * k), big)
        M[:n, :k] = cost
        M[:n, k:] = cost
        M[n:, k:] = 0.0
        a = np.ones(n + dummies)
        b = np.concatenate([np.full(k, float(base)), np.ones(k)])
    else:
        sizes = integer_sizes(n, None if prior is None else _sizes_prior(prior, r), k)
        M = cost
        a = np.ones(n)
        b = sizes.astype(np.float64)
    cap = max(10**7, 50 * M.size) if max_iter is None else int(max_iter)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # the status is checked below
        G, log = ot.emd(a, b, M, numItermax=cap, log=True)
    code = int(log["result_code"])
    if code != 1:
        raise RuntimeError(
            f"ot.emd stopped with status {_STATUS.get(code, code)} after at most {cap} "
            "iterations; the plan is not optimal (raise `max_iter`)"
        )
    G = np.asarray(G)[:n]
    labels = G.argmax(axis=1)
    if not np.allclose(G[np.arange(n), labels], 1.0, atol=1e-9):
        raise RuntimeError("ot.emd returned a fractional plan; this should not happen")
    labels = (labels % k).astype(np.int64)
    if forbidden[np.arange(n), labels].any():
        raise ValueError(
            "no labelling with these cluster sizes avoids the -inf scores (the LP is infeasible)"
        )
    sizes = np.bincount(labels, minlength=k).astype(np.int64)
    return ExactSolution(labels=labels, objective=objective(S, labels), sizes=sizes)


def _sizes_prior(prior: Any, r: np.ndarray) -> np.ndarray:
    p = np.asarray(prior)
    return p if p.dtype.kind in "iu" else r


def assign_exact(scores: Any, *, prior: Any = None, max_iter: int | None = None) -> np.ndarray:
    """Labels of :func:`solve_exact`."""
    return solve_exact(scores, prior=prior, max_iter=max_iter).labels
