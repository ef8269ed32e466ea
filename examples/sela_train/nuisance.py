"""What do a run's self-labels partition the images by? (a diagnostic for the offline sets)

    python -m examples.sela_train.nuisance runs/sela [--labels final.npz]

For simple image statistics of the training split (background colour and brightness, the
digit's brightness, its area and centre, the image's contrast) and for the digit's identity,
prints the fraction of the statistic's variance explained by each head's labels (the
correlation ratio eta^2 = 1 - within-cluster / total sum of squares). A head that partitions by
digit identity explains much of "digit" and little else; one that has latched onto a nuisance
factor explains that factor. The statistics are estimated from the pixels: background = median
of the border, digit = pixels far from the background.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from .config import Config
from .data import load_data


def image_statistics(images: np.ndarray) -> dict[str, np.ndarray]:
    """Per-image statistics of uint8 images (N, 3, H, W)."""
    x = images.astype(np.float32) / 255.0
    luma = np.array([0.299, 0.587, 0.114], np.float32)
    border = np.concatenate([x[:, :, 0], x[:, :, -1], x[:, :, :, 0], x[:, :, :, -1]], axis=2)
    bg = np.median(border, axis=2)  # (N, 3)
    mask = np.abs(x - bg[:, :, None, None]).sum(1) > 0.6  # digit-ish pixels
    count = np.maximum(mask.sum((1, 2)), 1)
    fg = np.einsum("nchw,nhw->nc", x, mask) / count[:, None]
    h, w = mask.shape[1:]
    ys, xs = np.mgrid[0:h, 0:w]
    return {
        "background luma": bg @ luma,
        "background R": bg[:, 0],
        "background G": bg[:, 1],
        "background B": bg[:, 2],
        "digit luma": fg @ luma,
        "digit area": mask.mean((1, 2)),
        "digit centre y": (mask * ys).sum((1, 2)) / count,
        "digit centre x": (mask * xs).sum((1, 2)) / count,
        "contrast": (np.einsum("nchw,c->nhw", x, luma)).std((1, 2)),
    }


def explained(values: np.ndarray, labels: np.ndarray) -> float:
    """eta^2: the fraction of the variance of ``values`` explained by the partition ``labels``."""
    values = np.asarray(values, np.float64)
    total = ((values - values.mean()) ** 2).sum()
    if total == 0:
        return 0.0
    within = sum(((values[labels == c] - values[labels == c].mean()) ** 2).sum() for c in np.unique(labels))
    return float(1.0 - within / total)


def report(run: Path, label_file: str = "final.npz") -> dict[str, list[float]]:
    cfg = Config.from_dict(json.loads((run / "config.json").read_text()))
    data = load_data(cfg)
    labels = np.load(run / "labels" / label_file)["labels"]
    stats = image_statistics(np.asarray(data.train.images))
    targets = np.asarray(data.train.targets)
    # digit identity as a variance: one-hot classes, summed over classes
    onehot = np.eye(data.num_classes)[targets]
    out = {name: [explained(v, lab) for lab in labels] for name, v in stats.items()}
    out["digit identity"] = [
        float(np.mean([explained(onehot[:, c], lab) for c in range(data.num_classes)])) for lab in labels
    ]
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run", type=Path, help="a run's --out-dir")
    p.add_argument("--labels", default="final.npz", help="file under RUN/labels/")
    a = p.parse_args(argv)
    res = report(a.run, a.labels)
    width = max(map(len, res))
    print(
        f"{'variance explained by the labels of head':{width}s}  "
        + " ".join(f"{t:>5d}" for t in range(len(next(iter(res.values())))))
    )
    for name, vals in res.items():
        print(f"{name:{width}s}  " + " ".join(f"{v:5.2f}" for v in vals))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
