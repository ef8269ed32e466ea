"""Integer cluster sizes: the equipartition and largest-remainder rounding of a prior."""

from __future__ import annotations

import numpy as np

__all__ = ["integer_sizes"]


def integer_sizes(n_points: int, prior: np.ndarray | None, n_clusters: int) -> np.ndarray:
    """Integer target sizes summing to ``n_points``.

    Without a prior: the equipartition, ``n // K`` for every cluster and one more for
    the first ``n % K`` clusters (in the exact LP the choice of *which* clusters get the
    extra point is left to the optimiser; see :mod:`sinklabel.exact`).
    With a probability prior: largest-remainder (Hamilton) rounding of ``prior * n``,
    ties broken by the lower cluster index. Integer priors are returned unchanged.
    """
    if prior is None:
        base, extra = divmod(n_points, n_clusters)
        sizes = np.full(n_clusters, base, dtype=np.int64)
        sizes[:extra] += 1
        return sizes
    prior = np.asarray(prior)
    if prior.dtype.kind in "iu":
        return prior.astype(np.int64)
    p = prior.astype(np.float64)
    quota = p / p.sum() * n_points
    sizes = np.floor(quota).astype(np.int64)
    short = n_points - int(sizes.sum())
    if short > 0:
        remainder = quota - sizes
        # stable sort on -remainder: ties go to the lower index
        order = np.argsort(-remainder, kind="stable")
        sizes[order[:short]] += 1
    return sizes
