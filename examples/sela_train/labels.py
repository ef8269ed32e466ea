"""Step 2 of SeLa: (re)labelling the whole training set, plus its schedule, init and export.

Label-file format (``out_dir/labels/step_XXX.npz``, and ``final.npz`` = the last step), written
by :func:`export_labels`, read by :func:`read_labels`:

* ``labels``     int64 (T, N): label of training image n under head t (n = position in the
                 training split, which is deterministic for a given config);
* ``num_clusters`` int64 (T,): K of each head;
* ``step``       int: label-step number (0-based; -1 for the random initial labels);
* ``iteration``  int: training iteration (batch count) at which the step ran;
* ``fraction``   float: the same as a fraction of training;
* ``method``     str: ``sela`` / ``kmeans`` / ``random`` / ``supervised`` / ``fixed``;
* ``targets``    int64 (N,): ground truth, for analysis only (never used in training).
"""

from __future__ import annotations

import inspect
import logging
from pathlib import Path

import numpy as np
import torch

import sinklabel

log = logging.getLogger(__name__)


def label_schedule(num_steps: int, total_iters: int) -> list[int]:
    """Iterations at which label steps run: t_i = (i/(M-1))^2 of training, i = 0..M-1
    (Appendix A of the paper; the first on the untrained network, the last at the very end).
    M = 1: one step at the end. Several steps may fall on the same iteration early on."""
    if num_steps == 0:
        return []
    if num_steps == 1:
        return [total_iters]
    t = (np.arange(num_steps) / (num_steps - 1)) ** 2
    return [int(round(f * total_iters)) for f in t]


def random_balanced_labels(n: int, num_clusters: tuple[int, ...], seed: int) -> np.ndarray:
    """The paper's initial labels: per head, a random permutation of a balanced labelling
    (cluster sizes floor(N/K) or ceil(N/K))."""
    rng = np.random.default_rng(seed)
    return np.stack([rng.permutation(np.arange(n) % k) for k in num_clusters]).astype(np.int64)


@torch.no_grad()
def score(model, batches, split, *, shard: bool = False):
    """Eval-mode, unaugmented pass: per-head log-probabilities (list of (n, K_t) float32 numpy),
    the embedding (n, D) and the pooled backbone features (n, C), plus the indices covered."""
    was_training = model.training
    model.eval()
    logp, emb, pooled, idx = [], [], [], []
    for x, i in batches.eval_batches(split, shard=shard):
        p, e = model.features(x)
        logp.append([torch.log_softmax(h(e).float(), 1).cpu() for h in model.heads])
        emb.append(e.float().cpu())
        pooled.append(p.float().cpu())
        idx.append(i)
    model.train(was_training)
    heads = [torch.cat([b[t] for b in logp]).numpy() for t in range(len(model.heads))]
    return heads, torch.cat(emb).numpy(), torch.cat(pooled).numpy(), torch.cat(idx).numpy()


def solve_kwargs(cfg, solve=None) -> dict:
    """Keywords for ``sinklabel.solve``. ``balanced`` is passed explicitly whenever this
    sinklabel knows it (its own default may differ from the paper's argmax), and is required
    only when asked for."""
    kw = dict(lam=cfg.lam, tol=cfg.tol, max_iter=cfg.max_iter, backend=cfg.solver_backend)
    if cfg.balanced or "balanced" in inspect.signature(solve or sinklabel.solve).parameters:
        kw["balanced"] = bool(cfg.balanced)
    return kw


def sinkhorn_step(scores: list[np.ndarray], cfg, previous):
    """Solve all heads with sinklabel, warm-started from the previous step's result."""
    threads = torch.get_num_threads()
    res = sinklabel.solve(scores, init=previous, **solve_kwargs(cfg))
    torch.set_num_threads(threads)  # a numba (OpenMP) backend can change torch's thread count
    if not res.converged:
        log.warning(
            "sinklabel did not converge in %d iterations (lam=%g, tol=%g)",
            res.n_iter,
            cfg.lam,
            cfg.tol,
        )
    return np.asarray(res.labels, dtype=np.int64).reshape(len(scores), -1), res


def distributed_sinkhorn_step(local_scores: list[np.ndarray], cfg, previous):
    """Each rank holds the scores of its own points; sinklabel's distributed solve returns the
    labels of those points."""
    from sinklabel import distributed  # noqa: PLC0415 - optional, newer sinklabel only

    res = distributed.solve(local_scores, init=previous, **solve_kwargs(cfg, distributed.solve))
    return np.asarray(res.labels, dtype=np.int64).reshape(len(local_scores), -1), res


def kmeans_step(embedding: np.ndarray, num_clusters: tuple[int, ...], seed: int) -> np.ndarray:
    """DeepCluster-style labels: k-means of the L2-normalised, PCA-whitened embedding, one
    k-means run (own seed) per head."""
    from sklearn.cluster import KMeans
    from sklearn.decomposition import PCA

    x = embedding / np.maximum(np.linalg.norm(embedding, axis=1, keepdims=True), 1e-12)
    d = min(x.shape[1], 256, x.shape[0] - 1)
    x = PCA(d, whiten=True, random_state=seed).fit_transform(x)
    x /= np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
    out = [
        KMeans(k, n_init=1, max_iter=100, random_state=seed * 100 + t).fit_predict(x)
        for t, k in enumerate(num_clusters)
    ]
    return np.stack(out).astype(np.int64)


def export_labels(path: Path, labels, *, num_clusters, step, iteration, fraction, method, targets) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp.npz")
    np.savez_compressed(
        tmp,
        labels=np.asarray(labels, dtype=np.int64),
        num_clusters=np.asarray(num_clusters, dtype=np.int64),
        step=step,
        iteration=iteration,
        fraction=fraction,
        method=method,
        targets=np.asarray(targets, dtype=np.int64),
    )
    tmp.replace(path)


def read_labels(path: str | Path) -> tuple[np.ndarray, tuple[int, ...]]:
    with np.load(path) as f:
        return f["labels"].astype(np.int64), tuple(int(k) for k in f["num_clusters"])
