"""PNG plots of one run: metrics over training, and the final cluster sizes per head."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_run(res: dict, labels: np.ndarray, ks, out: Path) -> None:
    plt = _plt()
    hist = res.get("history", [])
    fig, ax = plt.subplots(1, 3, figsize=(13, 3.6))
    loss = res.get("epoch_loss", [])
    ax[0].plot(np.arange(1, len(loss) + 1), loss)
    ax[0].set(xlabel="epoch", ylabel="cross-entropy (mean over heads)", title="training loss")
    if hist:
        ep = [h["epoch"] for h in hist]
        nmi = np.array([h["nmi_gt"] for h in hist])
        for t in range(nmi.shape[1]):
            ax[1].plot(ep, nmi[:, t], marker=".", label=f"head {t} (K={ks[t]})")
        ax[1].legend(fontsize=7)
        prev = np.array([h["nmi_prev"] for h in hist]).mean(1)
        ax[2].plot(ep[1:], prev[1:], marker=".")
    ax[1].set(xlabel="epoch", ylabel="NMI(labels, truth) on train", title="self-labels vs ground truth")
    ax[2].set(
        xlabel="epoch",
        ylabel="NMI(labels, previous labels)",
        title="label stability",
        ylim=(0, 1.02),
    )
    fig.tight_layout()
    fig.savefig(out / "training.png", dpi=90)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(6, 3.4))
    for t, (lab, k) in enumerate(zip(labels, ks)):
        sizes = np.sort(np.bincount(lab, minlength=k))[::-1]
        ax.plot(np.arange(k), sizes, marker=".", label=f"head {t} (K={k})")
    ax.axhline(len(labels[0]) / ks[0], color="grey", ls="--", lw=0.8, label="N/K (head 0)")
    ax.set(
        xlabel="cluster (sorted by size)",
        ylabel="images",
        title="final cluster sizes",
        ylim=(0, None),
    )
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out / "cluster_sizes.png", dpi=90)
    plt.close(fig)
