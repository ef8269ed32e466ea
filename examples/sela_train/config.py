"""Every knob of the SeLa example, in one dataclass with documented defaults.

The defaults are sized for the offline "cluttered digits" set on a small CPU; the README lists
the paper's settings for CIFAR-10 and ImageNet.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class Config:
    # ---- run -------------------------------------------------------------------------------
    out_dir: str = "runs/sela"
    """Folder for checkpoints, exported labels, metrics.json, plots and the log."""
    seed: int = 0
    """Decides data order, augmentation, initial labels and weights: same seed, same run."""
    device: str = "auto"
    """``"auto"`` (CUDA when available, else CPU), ``"cpu"``, ``"cuda"``, ``"cuda:1"``..."""
    threads: int = 0
    """torch intra-op threads on CPU; 0 leaves torch's default."""
    progress: bool = True
    """tqdm progress bars (only on rank 0)."""
    resume: bool = True
    """Continue from ``out_dir/checkpoint.pt`` when it exists (and its config matches)."""
    stop_after_label_step: int = -1
    """Debug/test hook: exit right after the checkpoint that follows this label step (0-based),
    as if the process had been killed there. -1 disables it."""

    # ---- data ------------------------------------------------------------------------------
    dataset: str = "cluttered_digits"
    """``cluttered_digits`` | ``digits`` (offline, always available) | ``cifar10`` | ``cifar100``
    | ``svhn`` | ``imagefolder`` (torchvision + ``data_root`` needed; nothing is downloaded)."""
    data_root: str = ""
    """Local folder of a torchvision data set (ImageFolder: the folder holding ``train/`` and
    ``val/``)."""
    copies: int = 2
    """Cluttered digits: renderings of each of the 1,797 scikit-learn digits."""
    max_train: int = 0
    """Use only the first ``max_train`` training images (0: all). For smoke tests."""
    imbalance: str = "full"
    """``full`` | ``light`` (drop 50 % of the last class) | ``heavy`` (drop 10 %, 20 %, ... of
    successive classes), applied to the training split only - the paper's Table 8."""
    image_size: int = 0
    """Training/eval resolution; 0 picks the data set's own (32 for digits/CIFAR/SVHN, 224 for
    ImageFolder)."""
    augment: str = "auto"
    """``auto`` (torchvision transforms for ImageFolder, batched tensor transforms for in-memory
    data sets), ``tensor``, or ``none``."""
    crop_scale: tuple[float, float] = (0.5, 1.0)
    """Random resized crop: range of the crop's area as a fraction of the image."""
    hflip: float = 0.5
    """Probability of a horizontal flip."""
    jitter: float = 0.4
    """Colour jitter strength: brightness, contrast and saturation factors in [1-j, 1+j]
    (ColorJitter(0.4, 0.4, 0.4, 0.4) and greyscale 0.2 are the AND/SeLa CIFAR settings)."""
    hue: float = 0.4
    """Hue jitter: a shift of up to this fraction of the colour circle (0.5: any hue)."""
    grayscale: float = 0.2
    """Probability of converting to greyscale."""

    # ---- model -----------------------------------------------------------------------------
    arch: str = "alexnet_small"
    """``alexnet`` (96-256-384-384-256, BN) | ``alexnet_small`` (64-192-384-256-256, BN) |
    ``resnet18`` | ``resnet50``."""
    stem: str = "auto"
    """``imagenet`` (strided stem for 224 px) | ``small`` (stem for 32 px) | ``auto`` (by
    image size)."""
    width: float = 0.5
    """Channel multiplier on every conv layer (1.0: the published widths). 0.5 keeps a CPU run
    on the offline sets within minutes (at 0.25, supervised training on the first version of the
    cluttered digits stayed at 36 % linear probe; at 0.5 it reached 76 %)."""
    embed_dim: int = 128
    """Width of the fully connected embedding before the heads (AlexNet: its FC layers;
    ResNet: 0 means the pooled features feed the heads directly). kNN uses this embedding."""
    num_clusters: tuple[int, ...] = (10, 50, 50, 50, 50)
    """K of each head; its length is the number of heads T. Heads may differ in K. Default: one
    head with as many clusters as the offline sets have classes (its labels are the ones scored
    by NMI/ARI/accuracy) and four over-clustering heads (the paper uses K = 128 on CIFAR-10):
    the over-clustering heads let the representation carry more than the one most salient
    partition (RESULTS.md)."""

    # ---- optimisation ----------------------------------------------------------------------
    epochs: int = 30
    batch_size: int = 128
    lr: float = 0.05
    """Initial SGD learning rate (paper: 0.05 ImageNet, 0.03 CIFAR)."""
    momentum: float = 0.9
    weight_decay: float = 5e-4
    lr_drops: tuple[float, ...] = (0.6, 0.85)
    """Fractions of training at which the learning rate is divided by ten."""

    # ---- self-labelling --------------------------------------------------------------------
    mode: str = "sela"
    """``sela`` (Sinkhorn via sinklabel) | ``kmeans`` (DeepCluster-style k-means of the
    embedding instead) | ``supervised`` (ground-truth labels; one head of K = classes is used)
    | ``fixed`` (labels read from ``labels_from``: the paper's label transfer)."""
    label_steps: int = 16
    """M, the number of label steps (#opts). Step i runs at the fraction t_i = (i/(M-1))^2 of
    training, i = 0..M-1: the first on the freshly initialised network, the last at the end
    (it yields the final labels). 0: train on the random initial labels only (the paper's
    #opts = 0 ablation). 1: a single step at the end."""
    lam: float = 25.0
    """sinklabel's lam (1/regularisation). Paper: 25."""
    tol: float = 1e-3
    max_iter: int = 5000
    solver_backend: str = "auto"
    """sinklabel's ``backend`` (``auto``, ``numpy``, ``numba``, ``torch``, ``cupy``)."""
    balanced: bool = True
    """Exactly balanced hard labels (sinklabel's ``balanced=True``: the LP optimum of the
    paper's eq. 6, every cluster of size floor(N/K) or ceil(N/K)). ``--no-balanced``: the
    paper's plain argmax of the transport plan, whose sizes wander from N/K and which leaves
    clusters empty at the first label step on the untrained network. Balanced is the default
    because it measured better (RESULTS.md, section 1: three seeds, both offline sets)."""
    labels_from: str = ""
    """``mode=fixed``: an exported label file (``labels/step_XXX.npz`` or ``final.npz``)."""
    reset_heads_after_kmeans: bool = True
    """k-means labels are a fresh permutation each time, so re-initialise the heads
    (DeepCluster does the same)."""

    # ---- evaluation ------------------------------------------------------------------------
    knn_k: int = 50
    knn_sigma: float = 0.1
    probe_cs: tuple[float, ...] = (0.01, 0.1, 1.0, 10.0)
    """Inverse regularisation strengths tried for the linear probe; the one that is best on the
    validation split is refitted and scored once on the test split."""

    extra: dict = field(default_factory=dict)
    """Free-form notes stored with the run (e.g. the comparison row's name)."""

    # ------------------------------------------------------------------------------------------
    def validate(self) -> None:
        if self.mode not in ("sela", "kmeans", "supervised", "fixed"):
            raise ValueError(f"mode must be sela|kmeans|supervised|fixed; got {self.mode!r}")
        if self.mode == "fixed" and not self.labels_from:
            raise ValueError("mode='fixed' needs labels_from (an exported label file)")
        if self.imbalance not in ("full", "light", "heavy"):
            raise ValueError(f"imbalance must be full|light|heavy; got {self.imbalance!r}")
        if not self.num_clusters or min(self.num_clusters) < 2:
            raise ValueError(f"num_clusters needs at least one head of K >= 2; got {self.num_clusters}")
        if self.label_steps < 0:
            raise ValueError(f"label_steps must be >= 0; got {self.label_steps}")
        if self.lam <= 0:
            raise ValueError(f"lam must be > 0; got {self.lam}")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> Config:
        names = {f.name: f for f in dataclasses.fields(cls)}
        kw = {}
        for k, v in d.items():
            if k not in names:
                raise ValueError(f"unknown config field {k!r}")
            kw[k] = tuple(v) if isinstance(v, list) else v
        return cls(**kw)

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=2, sort_keys=True))

    # Fields that may differ between a run and its resumption without changing the result.
    RESUME_FREE = (
        "out_dir",
        "resume",
        "progress",
        "stop_after_label_step",
        "threads",
        "device",
        "extra",
    )

    def training_fingerprint(self) -> dict:
        return {k: v for k, v in self.to_dict().items() if k not in self.RESUME_FREE}
