"""Deterministic, realistic score matrices for tests, benchmarks and the demo (SPEC §4).

Scores from a partly trained network look like a mixture: some confident points, many
near-uniform ones, and a few clusters that almost nobody prefers. A uniform-random
matrix is none of these, so it is not offered.
"""

from __future__ import annotations

import numpy as np

__all__ = ["make_scores", "KINDS"]

KINDS = ("realistic", "collapsed", "neginf")

_BLOCK_ROWS = 1 << 14


def make_scores(
    n_points: int,
    n_clusters: int,
    *,
    kind: str = "realistic",
    seed: int = 0,
    dtype: type = np.float32,
    out: np.ndarray | None = None,
) -> np.ndarray:
    """Log-probabilities of shape (n_points, n_clusters), generated block by block.

    Parameters
    ----------
    kind : {"realistic", "collapsed", "neginf"}
        ``realistic``: a mixture of confident (~20 %), hesitant (~50 %) and near-uniform
        (~30 %) points over clusters of very unequal popularity (Dirichlet(0.3)).
        ``collapsed``: as realistic, and every point gives one cluster in ten a
        log-probability around -30 (``lam * S`` near -750 at lam = 25).
        ``neginf``: as realistic, with about 30 % of entries ``-inf`` (probability 0);
        every point keeps its preferred cluster.
    seed : int
        The same seed gives the same matrix, whatever the block size.
    dtype : numpy float dtype
    out : ndarray, optional
        Preallocated (n_points, n_clusters) array to fill (e.g. a memory map).

    Examples
    --------
    >>> S = make_scores(1000, 10, seed=1)
    >>> S.shape, bool(np.allclose(np.exp(S).sum(1), 1, atol=1e-5))
    ((1000, 10), True)
    """
    if kind not in KINDS:
        raise ValueError(f"`kind` must be one of {KINDS}; got {kind!r}")
    if n_points < 1 or n_clusters < 1:
        raise ValueError(f"need n_points, n_clusters >= 1; got {n_points}, {n_clusters}")
    root = np.random.default_rng(seed)
    popularity = root.dirichlet(np.full(n_clusters, 0.3))
    # clusters nobody much likes get a negative bias in every point's logits
    bias = 0.5 * np.log(popularity + 1e-12)
    bias -= bias.max()
    collapsed = root.permutation(n_clusters)[: max(1, n_clusters // 10)]
    if out is None:
        out = np.empty((n_points, n_clusters), dtype=dtype)
    elif out.shape != (n_points, n_clusters):
        raise ValueError(f"`out` must have shape {(n_points, n_clusters)}; got {out.shape}")
    for b, start in enumerate(range(0, n_points, _BLOCK_ROWS)):
        stop = min(n_points, start + _BLOCK_ROWS)
        m = stop - start
        rng = np.random.default_rng([seed, b])
        true = rng.choice(n_clusters, size=m, p=popularity)
        group = rng.random(m)
        boost = np.where(
            group < 0.2, rng.uniform(5, 10, m), np.where(group < 0.7, rng.uniform(0.5, 3, m), 0.0)
        )
        spread = np.where(group < 0.7, 1.0, 0.2)
        logits = rng.standard_normal((m, n_clusters)) * spread[:, None] + bias
        logits[np.arange(m), true] += boost
        if kind == "collapsed":
            logits[:, collapsed] = -30.0 + rng.standard_normal((m, collapsed.size))
        logits -= logits.max(axis=1, keepdims=True)
        logp = logits - np.log(np.exp(logits).sum(axis=1, keepdims=True))
        if kind == "neginf":
            mask = rng.random((m, n_clusters)) < 0.3
            mask[np.arange(m), logp.argmax(axis=1)] = False
            logp[mask] = -np.inf
        out[start:stop] = logp
    return out
