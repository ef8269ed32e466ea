"""Evaluation: weighted kNN, linear probe on frozen features, clustering metrics.

Nothing here chooses anything on the test split: the probe's regularisation is chosen on the
validation split, and the network evaluated is the last one trained (no checkpoint picking).
"""

from __future__ import annotations

import numpy as np
import torch
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


def linear_probe(
    train_x, train_y, val_x, val_y, test_x, test_y, cs=(0.01, 0.1, 1.0, 10.0), seed=0
) -> dict:
    """Multinomial logistic regression on standardised frozen features. C is chosen on the
    validation split; the chosen model is scored once on the test split."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    sc = StandardScaler().fit(train_x)
    a, v, t = sc.transform(train_x), sc.transform(val_x), sc.transform(test_x)
    best = None
    for c in cs:
        clf = LogisticRegression(C=c, max_iter=300, random_state=seed).fit(a, train_y)
        acc = clf.score(v, val_y)
        if best is None or acc > best[0]:
            best = (acc, c, clf)
    acc_val, c, clf = best
    return {"probe_val": float(acc_val), "probe_test": float(clf.score(t, test_y)), "probe_C": c}


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
