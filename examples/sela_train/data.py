"""Data sets: offline digits, the harder "cluttered digits", and torchvision sets from a local path.

Every data set comes as three splits: ``train`` (self-labelled and trained on), ``val`` (held
out, used for any choice such as the linear probe's regularisation) and ``test`` (held out,
only ever scored). In-memory sets (digits, cluttered digits, CIFAR, SVHN) keep uint8 images of
shape (N, 3, H, W) and augment whole batches with tensor ops; ImageFolder streams files
through torchvision's transforms.
"""

from __future__ import annotations

import colorsys
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from .augment import TensorAugment, batch_generator

log = logging.getLogger(__name__)

try:  # optional: only for the torchvision data sets and their transforms
    import torchvision  # noqa: F401

    HAVE_TORCHVISION = True
except Exception:  # noqa: BLE001 - a broken install is as good as none here
    HAVE_TORCHVISION = False

DATA_SEED = 20200213  # the generated data never depends on the run's seed


@dataclass
class Split:
    """One split. ``images`` is uint8 (N, 3, H, W) for in-memory sets, else ``files`` holds a
    torch Dataset yielding (tensor image, target)."""

    targets: np.ndarray
    images: torch.Tensor | None = None
    files: object | None = None

    def __len__(self) -> int:
        return len(self.targets)


@dataclass
class Data:
    name: str
    num_classes: int
    image_size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    train: Split
    val: Split
    test: Split

    @property
    def in_memory(self) -> bool:
        return self.train.images is not None


# ------------------------------------------------------------------------------------------------
# Offline sets built from scikit-learn's bundled 8x8 digits.


def _source_splits(n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """70 / 10 / 20 % of the *source* digits: renderings of one digit never cross splits."""
    perm = rng.permutation(n)
    a, b = int(0.7 * n), int(0.8 * n)
    return np.sort(perm[:a]), np.sort(perm[a:b]), np.sort(perm[b:])


def _segment_alpha(yy, xx, p0, p1, width):
    """Anti-aliased coverage of a line segment p0-p1 (pixel units) on the grid (yy, xx)."""
    d = p1 - p0
    t = np.clip(((yy - p0[0]) * d[0] + (xx - p0[1]) * d[1]) / max(float(d @ d), 1e-6), 0, 1)
    dist = np.hypot(yy - (p0[0] + t * d[0]), xx - (p0[1] + t * d[1]))
    return np.clip(width - dist + 0.5, 0.0, 1.0)


def _hsv(h: float, s: float, v: float) -> np.ndarray:
    return np.array(colorsys.hsv_to_rgb(h, s, v), np.float32)


def _light(rgb: np.ndarray, luma: float = 0.8) -> np.ndarray:
    """The colour of the same hue and saturation with the given luma (0.299 R + 0.587 G + 0.114 B),
    as far as [0, 1] allows: lifted towards white when scaling alone cannot reach it."""
    w = np.array([0.299, 0.587, 0.114], np.float32)
    rgb = rgb * min(luma / max(float(w @ rgb), 1e-6), 1.0 / max(float(rgb.max()), 1e-6))
    gap = luma - float(w @ rgb)
    if gap > 0:  # add white: luma rises by t (sum of w is 1)
        t = gap / max(1.0 - float(w @ rgb), 1e-6)
        rgb = rgb + t * (1.0 - rgb)
    return rgb.astype(np.float32)


def render_cluttered(digits: np.ndarray, size: int = 32, seed: int = DATA_SEED) -> np.ndarray:
    """Render 8x8 digits (values 0..16) as ``size`` x ``size`` RGB images: each digit at a random
    scale (20-27 px), position and hue, light (luma 0.8) on a dark cluttered background (a
    two-colour gradient of random hues, 2-5 random strokes, two fragments of other digits,
    pixel noise). Deterministic in ``seed``. Returns uint8 of shape (N, 3, size, size).

    Why these ranges (examples/sela_train/RESULTS.md, "the hard set"): self-labelling
    partitions the images by whatever is most salient and survives the augmentations. With
    background and digit colours uniform in RGB and scales 16-28 px, its labels explained
    50-80 % of the variance of background brightness and polarity, then (dark backgrounds,
    light digits) of the digit's brightness and scale, and 1 % of the digit's identity. Hue
    is removed by the colour jitter and horizontal position by the flip, so those stay
    random; brightness bands and a narrower scale range keep the other factors small. Raw
    pixels still do poorly: position, scale, hue and clutter vary.
    """
    rng = np.random.default_rng(seed)
    n = len(digits)
    src = torch.from_numpy(digits.reshape(n, 1, 8, 8).astype(np.float32) / 16.0)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    out = np.empty((n, 3, size, size), dtype=np.uint8)

    def paint(img, alpha, colour):
        return img * (1 - alpha) + colour[:, None, None] * alpha

    for i in range(n):
        # background: a gradient between two dark colours of random hue, in a random direction
        c1 = _hsv(rng.uniform(), rng.uniform(0.3, 1), rng.uniform(0.15, 0.45))
        c2 = _hsv(rng.uniform(), rng.uniform(0.3, 1), rng.uniform(0.15, 0.45))
        ang = rng.uniform(0, 2 * np.pi)
        g = (np.cos(ang) * (xx - size / 2) + np.sin(ang) * (yy - size / 2)) / size + 0.5
        img = paint(c1[:, None, None] * np.ones((3, size, size), np.float32), np.clip(g, 0, 1), c2)
        # clutter 1: random strokes
        for _ in range(rng.integers(2, 6)):
            p0, p1 = rng.uniform(0, size, 2), rng.uniform(0, size, 2)
            a = _segment_alpha(yy, xx, p0, p1, rng.uniform(0.5, 1.2)) * rng.uniform(0.4, 0.8)
            img = paint(img, a, _hsv(rng.uniform(), rng.uniform(0.3, 1), rng.uniform(0.3, 0.7)))
        # clutter 2: two fragments (a 4x4 corner) of other digits, enlarged
        for _ in range(2):
            j = rng.integers(n)
            oy, ox = rng.integers(0, 5, 2)
            s = int(rng.integers(8, 13))
            frag = F.interpolate(src[j : j + 1, :, oy : oy + 4, ox : ox + 4], size=(s, s), mode="bilinear")
            y0, x0 = rng.integers(0, size - s + 1, 2)
            a = np.zeros((size, size), np.float32)
            a[y0 : y0 + s, x0 : x0 + s] = np.clip(frag[0, 0].numpy() * 1.5, 0, 1) * rng.uniform(0.4, 0.7)
            img = paint(img, a, _hsv(rng.uniform(), rng.uniform(0.3, 1), rng.uniform(0.4, 0.7)))
        # the digit: random scale, position and hue, light (luma 0.8 whatever the hue)
        s = int(rng.integers(20, 28))
        dig = F.interpolate(src[i : i + 1], size=(s, s), mode="bilinear", align_corners=False)[0, 0].numpy()
        y0, x0 = rng.integers(0, size - s + 1, 2)
        a = np.zeros((size, size), np.float32)
        a[y0 : y0 + s, x0 : x0 + s] = np.clip(dig * 2.0, 0, 1)
        img = paint(img, a, _light(_hsv(rng.uniform(), rng.uniform(0.0, 0.8), 1.0)))
        img = img + rng.normal(0, 0.04, img.shape)
        out[i] = np.clip(img * 255 + 0.5, 0, 255).astype(np.uint8)
    return out


def _digits(cluttered: bool, copies: int) -> tuple[dict[str, tuple[np.ndarray, np.ndarray]], int]:
    from sklearn.datasets import load_digits

    d = load_digits()
    x, y = d.images.astype(np.float32), d.target.astype(np.int64)
    rng = np.random.default_rng(DATA_SEED)
    splits = dict(zip(("train", "val", "test"), _source_splits(len(y), rng)))
    if cluttered:
        reps = np.tile(np.arange(len(y)), copies)  # copy c of digit i at row c * n + i
        imgs = render_cluttered(x[reps], 32, DATA_SEED)
        ys = y[reps]
        pick = {k: np.concatenate([v + c * len(y) for c in range(copies)]) for k, v in splits.items()}
        return {k: (imgs[v], ys[v]) for k, v in pick.items()}, 32
    # plain digits: grey, upsampled to 32 x 32
    t = F.interpolate(
        torch.from_numpy(x / 16.0)[:, None], size=(32, 32), mode="bilinear", align_corners=False
    )
    imgs = (t.clamp(0, 1) * 255 + 0.5).to(torch.uint8).repeat(1, 3, 1, 1).numpy()
    return {k: (imgs[v], y[v]) for k, v in splits.items()}, 32


# ------------------------------------------------------------------------------------------------
# torchvision sets (local files only)


def _torchvision_sets(name: str, root: str) -> tuple[dict[str, tuple[np.ndarray, np.ndarray]], int]:
    if not HAVE_TORCHVISION:
        raise RuntimeError(f"dataset={name!r} needs torchvision (pip install torchvision)")
    from torchvision import datasets

    if not root:
        raise ValueError(f"dataset={name!r} needs data_root, the local folder of the data set")
    if name in ("cifar10", "cifar100"):
        cls = datasets.CIFAR10 if name == "cifar10" else datasets.CIFAR100
        tr, te = cls(root, train=True, download=False), cls(root, train=False, download=False)
        xtr, ytr = tr.data.transpose(0, 3, 1, 2), np.asarray(tr.targets)
        xte, yte = te.data.transpose(0, 3, 1, 2), np.asarray(te.targets)
    elif name == "svhn":
        tr, te = (
            datasets.SVHN(root, split="train", download=False),
            datasets.SVHN(root, split="test", download=False),
        )
        xtr, ytr, xte, yte = tr.data, np.asarray(tr.labels), te.data, np.asarray(te.labels)
    else:
        raise ValueError(f"unknown dataset {name!r}")
    perm = np.random.default_rng(DATA_SEED).permutation(len(ytr))
    nval = len(ytr) // 10
    val, train = np.sort(perm[:nval]), np.sort(perm[nval:])
    return {"train": (xtr[train], ytr[train]), "val": (xtr[val], ytr[val]), "test": (xte, yte)}, 32


def _imagefolder(root: str, size: int) -> Data:
    if not HAVE_TORCHVISION:
        raise RuntimeError("dataset='imagefolder' needs torchvision (pip install torchvision)")
    from torchvision import datasets, transforms

    mean, std = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
    tf = transforms.Compose(
        [
            transforms.Resize(int(size * 256 / 224)),
            transforms.CenterCrop(size),
            transforms.PILToTensor(),
        ]
    )
    train_all = datasets.ImageFolder(str(Path(root) / "train"), transform=tf)
    test = datasets.ImageFolder(str(Path(root) / "val"), transform=tf)
    y = np.asarray(train_all.targets)
    perm = np.random.default_rng(DATA_SEED).permutation(len(y))
    nval = min(10000, len(y) // 20)
    val_idx, train_idx = np.sort(perm[:nval]), np.sort(perm[nval:])
    sub = torch.utils.data.Subset
    return Data(
        "imagefolder",
        len(train_all.classes),
        size,
        mean,
        std,
        Split(y[train_idx], files=sub(train_all, train_idx)),
        Split(y[val_idx], files=sub(train_all, val_idx)),
        Split(np.asarray(test.targets), files=test),
    )


def imbalance_indices(targets: np.ndarray, kind: str, num_classes: int) -> np.ndarray:
    """Training indices kept under the paper's imbalance settings (Table 8): ``light`` drops
    50 % of the last class; ``heavy`` drops 10 %·c of class c (0 % of class 0 ... 90 % of
    class 9). Deterministic."""
    keep = np.ones(len(targets), dtype=bool)
    if kind == "full":
        return np.arange(len(targets))
    rng = np.random.default_rng(DATA_SEED + 1)
    for c in range(num_classes):
        frac = {"light": 0.5 if c == num_classes - 1 else 0.0, "heavy": min(0.1 * c, 0.9)}[kind]
        idx = np.flatnonzero(targets == c)
        drop = rng.permutation(idx)[: int(round(frac * len(idx)))]
        keep[drop] = False
    return np.flatnonzero(keep)


def load_data(cfg) -> Data:
    """Build the three splits named by ``cfg.dataset`` (see :class:`Config`)."""
    if cfg.dataset == "imagefolder":
        data = _imagefolder(cfg.data_root, cfg.image_size or 224)
    else:
        if cfg.dataset in ("digits", "cluttered_digits"):
            arrays, size = _digits(cfg.dataset == "cluttered_digits", cfg.copies)
        else:
            arrays, size = _torchvision_sets(cfg.dataset, cfg.data_root)
        xtr = torch.from_numpy(np.ascontiguousarray(arrays["train"][0]))
        f = xtr.float() / 255
        mean = tuple(f.mean(dim=(0, 2, 3)).tolist())
        std = tuple(f.std(dim=(0, 2, 3)).clamp_min(1e-3).tolist())
        split = {
            k: Split(np.asarray(v[1], dtype=np.int64), torch.from_numpy(np.ascontiguousarray(v[0])))
            for k, v in arrays.items()
        }
        ncls = int(max(s.targets.max() for s in split.values())) + 1
        data = Data(cfg.dataset, ncls, size, mean, std, split["train"], split["val"], split["test"])
        if cfg.image_size and cfg.image_size != size:
            for s in (data.train, data.val, data.test):
                s.images = _resize_uint8(s.images, cfg.image_size)
            data.image_size = cfg.image_size
    keep = imbalance_indices(data.train.targets, cfg.imbalance, data.num_classes)
    if cfg.max_train:
        keep = keep[: cfg.max_train]
    if len(keep) < len(data.train):
        data.train = _subset(data.train, keep)
    log.info(
        "data %s: train %d, val %d, test %d images of %d px, %d classes (imbalance=%s)",
        data.name,
        len(data.train),
        len(data.val),
        len(data.test),
        data.image_size,
        data.num_classes,
        cfg.imbalance,
    )
    return data


def _subset(split: Split, idx: np.ndarray) -> Split:
    if split.images is not None:
        return Split(split.targets[idx], images=split.images[torch.from_numpy(idx)])
    return Split(split.targets[idx], files=torch.utils.data.Subset(split.files, idx))


def _resize_uint8(x: torch.Tensor, size: int) -> torch.Tensor:
    y = F.interpolate(x.float(), size=(size, size), mode="bilinear", antialias=True, align_corners=False)
    return y.round().clamp(0, 255).to(torch.uint8)


# ------------------------------------------------------------------------------------------------
# Batches


class Batches:
    """Turns a split into normalised float batches ``(x, idx)``, optionally augmented.

    Order and augmentation depend only on ``(seed, epoch, batch)``, so a run resumed at batch b
    of an epoch sees exactly what the uninterrupted run saw. Under ``world_size > 1`` every rank
    draws the same global permutation and takes its own slice of each global batch.
    """

    def __init__(self, data: Data, cfg, device: torch.device, rank: int = 0, world_size: int = 1):
        self.data, self.cfg, self.device = data, cfg, device
        self.rank, self.world = rank, world_size
        self.mean = torch.tensor(data.mean, device=device).view(1, 3, 1, 1)
        self.std = torch.tensor(data.std, device=device).view(1, 3, 1, 1)
        mode = cfg.augment
        if mode == "auto":
            mode = "tensor" if data.in_memory else "torchvision"
        self.aug_mode = mode
        self.tensor_aug = TensorAugment(cfg.crop_scale, cfg.hflip, cfg.jitter, cfg.hue, cfg.grayscale)
        self._tv_aug = None
        if mode == "torchvision":
            if not HAVE_TORCHVISION:
                raise RuntimeError("augment='torchvision' needs torchvision")
            from torchvision.transforms import v2

            s = data.image_size
            self._tv_aug = v2.Compose(
                [
                    v2.RandomResizedCrop(s, scale=cfg.crop_scale, antialias=True),
                    v2.RandomHorizontalFlip(cfg.hflip),
                    v2.ColorJitter(cfg.jitter, cfg.jitter, cfg.jitter, cfg.hue),
                    v2.RandomGrayscale(cfg.grayscale),
                ]
            )

    def num_batches(self, n: int) -> int:
        return (n + self.cfg.batch_size - 1) // self.cfg.batch_size

    def train_epoch(
        self, split: Split, epoch: int, start_batch: int = 0
    ) -> Iterator[tuple[int, torch.Tensor, torch.Tensor]]:
        """Yields ``(batch, x, idx)`` of one shuffled, augmented epoch from ``start_batch``."""
        n = len(split)
        g = torch.Generator().manual_seed(self.cfg.seed * 1_000_003 + epoch)
        perm = torch.randperm(n, generator=g)
        bs = self.cfg.batch_size
        for b in range(start_batch, self.num_batches(n)):
            idx = perm[b * bs : (b + 1) * bs]
            idx = idx.tensor_split(self.world)[self.rank]  # this rank's slice of the global batch
            gen = batch_generator(self.cfg.seed, epoch, b)
            x = self._load(split, idx, augment=self.aug_mode != "none", gen=gen)
            yield b, x, idx

    def eval_batches(self, split: Split, batch_size: int | None = None, *, shard: bool = False):
        """Yields ``(x, idx)`` over the split in order, unaugmented. ``shard``: this rank's
        strided part only (rank r gets indices r, r + world, ...)."""
        n = len(split)
        order = torch.arange(n)
        if shard:
            order = order[self.rank :: self.world]
        bs = batch_size or 2 * self.cfg.batch_size
        for s in range(0, len(order), bs):
            idx = order[s : s + bs]
            yield self._load(split, idx, augment=False, gen=None), idx

    def _load(self, split: Split, idx: torch.Tensor, *, augment: bool, gen) -> torch.Tensor:
        if split.images is not None:
            x = split.images[idx].to(self.device, non_blocking=True)
        else:
            x = torch.stack([split.files[int(i)][0] for i in idx]).to(self.device)
        x = x.float().div_(255)
        if augment:
            if self._tv_aug is not None:
                torch.manual_seed(int(torch.randint(0, 2**62, (1,), generator=gen)))
                x = torch.stack([self._tv_aug(xi) for xi in x])
            else:
                x = self.tensor_aug(x, gen)
        return (x - self.mean) / self.std
