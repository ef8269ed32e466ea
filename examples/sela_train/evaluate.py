"""Evaluation: weighted kNN, linear probe on frozen features, clustering metrics.

Nothing here chooses anything on the test split: the probe's regularisation is chosen on the
validation split, and the network evaluated is the last one trained (no checkpoint picking).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from scipy.optimize import linear_sum_assignment
from sklearn.metrics import (
    adjusted_mutual_info_score,
    adjusted_rand_score,
    normalized_mutual_info_score,
)


def _l2n(x: np.ndarray) -> torch.Tensor:
    t = torch.as_tensor(x, dtype=torch.float32)
    return t / t.norm(dim=1, keepdim=True).clamp_min(1e-12)


def weighted_knn(
    train_x, train_y, test_x, test_y, *, k: int = 50, sigma: float = 0.1, num_classes: int
) -> float:
    """Top-1 accuracy of the weighted kNN of Wu et al. (2018), as used by the paper: cosine
    similarity of L2-normalised features, the k nearest training points vote with weight
    exp(sim / sigma)."""
    tr, te = _l2n(train_x), _l2n(test_x)
    ytr = torch.as_tensor(train_y, dtype=torch.long)
    k = min(k, len(tr))
    correct = 0
    for s in range(0, len(te), 1024):
        sim = te[s : s + 1024] @ tr.T
        top, idx = sim.topk(k, dim=1)
        votes = torch.zeros(len(sim), num_classes)
        votes.scatter_add_(1, ytr[idx], torch.exp(top / sigma))
        correct += int((votes.argmax(1).numpy() == np.asarray(test_y[s : s + 1024])).sum())
    return correct / len(te)


def _fit_logreg(x: torch.Tensor, y: torch.Tensor, c: float, num_classes: int, iters: int = 200):
    """Multinomial logistic regression, sklearn's objective (C * summed loss + |W|^2 / 2),
    full-batch L-BFGS from zero: deterministic."""
    w = torch.zeros(x.shape[1], num_classes, requires_grad=True)
    b = torch.zeros(num_classes, requires_grad=True)
    opt = torch.optim.LBFGS([w, b], lr=1, max_iter=iters, history_size=20, line_search_fn="strong_wolfe")
    reg = 0.5 / (c * len(x))

    def closure():
        opt.zero_grad()
        loss = F.cross_entropy(x @ w + b, y) + reg * (w * w).sum()
        loss.backward()
        return loss

    opt.step(closure)
    return lambda z: (z @ w + b).argmax(1)


def linear_probe(train_x, train_y, val_x, val_y, test_x, test_y, cs=(0.01, 0.1, 1.0, 10.0), seed=0) -> dict:
    """Multinomial logistic regression on standardised frozen features. C is chosen on the
    validation split; the chosen model is scored once on the test split."""
    t = lambda a: torch.as_tensor(np.asarray(a), dtype=torch.float32)  # noqa: E731
    a, v, te = t(train_x), t(val_x), t(test_x)
    mu, sd = a.mean(0), a.std(0).clamp_min(1e-6)
    a, v, te = (a - mu) / sd, (v - mu) / sd, (te - mu) / sd
    ya = torch.as_tensor(np.asarray(train_y), dtype=torch.long)
    ncls = int(max(np.max(train_y), np.max(val_y), np.max(test_y))) + 1
    acc = lambda f, x, y: float((f(x).numpy() == np.asarray(y)).mean())  # noqa: E731
    best = None
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        for c in cs:
            f = _fit_logreg(a, ya, c, ncls)
            with torch.no_grad():
                score = acc(f, v, val_y)
            if best is None or score > best[0]:
                best = (score, c, f)
    score, c, f = best
    with torch.no_grad():
        test = acc(f, te, test_y)
    return {"probe_val": score, "probe_test": test, "probe_C": c}


def hungarian_accuracy(truth: np.ndarray, pred: np.ndarray) -> float:
    """Accuracy under the best one-to-one matching of clusters to classes (unmatched clusters
    count as wrong when K exceeds the number of classes)."""
    truth, pred = np.asarray(truth), np.asarray(pred)
    m = np.zeros((pred.max() + 1, truth.max() + 1), dtype=np.int64)
    np.add.at(m, (pred, truth), 1)
    r, c = linear_sum_assignment(-m)
    return float(m[r, c].sum() / len(truth))


def clustering_metrics(truth, pred) -> dict:
    return {
        "nmi": float(normalized_mutual_info_score(truth, pred)),
        "anmi": float(adjusted_mutual_info_score(truth, pred)),
        "ari": float(adjusted_rand_score(truth, pred)),
        "acc": hungarian_accuracy(truth, pred),
    }


def evaluate_features(feats: dict, data, cfg) -> dict:
    """``feats[split] = (pooled, embedding)`` arrays. kNN on the embedding (the paper's
    128-d embedding), linear probe on the pooled backbone features."""
    y = {s: getattr(data, s).targets for s in ("train", "val", "test")}
    out = {
        f"knn_{s}": weighted_knn(
            feats["train"][1],
            y["train"],
            feats[s][1],
            y[s],
            k=cfg.knn_k,
            sigma=cfg.knn_sigma,
            num_classes=data.num_classes,
        )
        for s in ("val", "test")
    }
    out.update(
        linear_probe(
            feats["train"][0],
            y["train"],
            feats["val"][0],
            y["val"],
            feats["test"][0],
            y["test"],
            cfg.probe_cs,
            cfg.seed,
        )
    )
    return out
