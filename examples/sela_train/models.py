"""Networks h∘Φ: a backbone Φ (AlexNet-BN or ResNet), an embedding, and T linear heads.

``forward(x)`` returns a list of T logit tensors, one per head (heads may differ in K).
``features(x)`` returns ``(pooled, embedding)``: the backbone's globally pooled output (for the
linear probe) and the embedding that feeds the heads (for weighted kNN).
"""

from __future__ import annotations

import torch
from torch import nn

ALEXNET_WIDTHS = {
    "alexnet": (96, 256, 384, 384, 256),  # Krizhevsky et al. 2012
    "alexnet_small": (64, 192, 384, 256, 256),  # Krizhevsky 2014 ("one weird trick")
}


def _w(c: int, width: float) -> int:
    return max(8, int(round(c * width)))


def _conv_bn(cin, cout, k, s=1, p=0):
    return [nn.Conv2d(cin, cout, k, s, p, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)]


class AlexNetBN(nn.Module):
    """AlexNet with BatchNorm after every conv. ``stem='imagenet'``: 11x11/4 conv and three 3x3/2
    max-pools (224 px in, 6x6 out); ``stem='small'``: 3x3/1 conv and 2x2 pools for 32 px inputs."""

    def __init__(self, widths, stem: str = "imagenet", width: float = 1.0):
        super().__init__()
        c = [_w(x, width) for x in widths]
        if stem == "imagenet":
            pool = lambda: nn.MaxPool2d(3, 2)  # noqa: E731
            layers = _conv_bn(3, c[0], 11, 4, 2) + [pool()] + _conv_bn(c[0], c[1], 5, 1, 2) + [pool()]
        elif stem == "small":
            pool = lambda: nn.MaxPool2d(2, 2)  # noqa: E731
            layers = _conv_bn(3, c[0], 3, 1, 1) + [pool()] + _conv_bn(c[0], c[1], 3, 1, 1) + [pool()]
        else:
            raise ValueError(f"stem must be 'imagenet' or 'small'; got {stem!r}")
        layers += (
            _conv_bn(c[1], c[2], 3, 1, 1) + _conv_bn(c[2], c[3], 3, 1, 1) + _conv_bn(c[3], c[4], 3, 1, 1)
        )
        layers += [pool()]
        self.body = nn.Sequential(*layers)
        self.out_dim = c[4]

    def forward(self, x):
        return self.body(x)


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, cin, planes, stride=1):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.short = _shortcut(cin, planes, stride)

    def forward(self, x):
        y = torch.relu(self.bn1(self.conv1(x)))
        return torch.relu(self.bn2(self.conv2(y)) + self.short(x))


class Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, cin, planes, stride=1):
        super().__init__()
        out = planes * 4
        self.conv1 = nn.Conv2d(cin, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, out, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(out)
        self.short = _shortcut(cin, out, stride)

    def forward(self, x):
        y = torch.relu(self.bn1(self.conv1(x)))
        y = torch.relu(self.bn2(self.conv2(y)))
        return torch.relu(self.bn3(self.conv3(y)) + self.short(x))


def _shortcut(cin, cout, stride):
    if stride == 1 and cin == cout:
        return nn.Identity()
    return nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))


class ResNet(nn.Module):
    """ResNet-18/50. ``stem='imagenet'``: 7x7/2 conv + 3x3/2 max-pool; ``stem='small'``: one
    3x3/1 conv, no pool (the usual stem for 32 px inputs)."""

    def __init__(self, block, depths, stem: str = "imagenet", width: float = 1.0):
        super().__init__()
        c0 = _w(64, width)
        if stem == "imagenet":
            self.stem = nn.Sequential(*_conv_bn(3, c0, 7, 2, 3), nn.MaxPool2d(3, 2, 1))
        elif stem == "small":
            self.stem = nn.Sequential(*_conv_bn(3, c0, 3, 1, 1))
        else:
            raise ValueError(f"stem must be 'imagenet' or 'small'; got {stem!r}")
        layers, cin = [], c0
        for i, n in enumerate(depths):
            planes = _w(64 * 2**i, width)
            for j in range(n):
                layers.append(block(cin, planes, 2 if (i > 0 and j == 0) else 1))
                cin = planes * block.expansion
        self.layers = nn.Sequential(*layers)
        self.out_dim = cin
        for m in self.modules():
            if isinstance(m, (Bottleneck, BasicBlock)):  # zero-init the last BN of each block
                nn.init.zeros_((m.bn3 if isinstance(m, Bottleneck) else m.bn2).weight)

    def forward(self, x):
        return self.layers(self.stem(x))


class SelaNet(nn.Module):
    """Backbone → global average pool → embedding MLP (optional) → T linear heads."""

    def __init__(
        self, backbone: nn.Module, num_clusters: tuple[int, ...], embed_dim: int, hidden_layers: int
    ):
        super().__init__()
        self.backbone = backbone
        d = backbone.out_dim
        mlp: list[nn.Module] = []
        for _ in range(hidden_layers if embed_dim else 0):
            mlp += [
                nn.Linear(d, embed_dim, bias=False),
                nn.BatchNorm1d(embed_dim),
                nn.ReLU(inplace=True),
            ]
            d = embed_dim
        self.embed = nn.Sequential(*mlp)
        self.embed_dim = d
        self.heads = nn.ModuleList(nn.Linear(d, k) for k in num_clusters)

    def features(self, x) -> tuple[torch.Tensor, torch.Tensor]:
        pooled = torch.flatten(nn.functional.adaptive_avg_pool2d(self.backbone(x), 1), 1)
        return pooled, self.embed(pooled)

    def forward(self, x) -> list[torch.Tensor]:
        e = self.features(x)[1]
        return [h(e) for h in self.heads]

    def reset_heads(self, generator_seed: int) -> None:
        """Fresh head weights (k-means baseline: its labels are a new permutation each time)."""
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(generator_seed)
            for h in self.heads:
                h.reset_parameters()


def build_model(cfg, image_size: int, num_clusters: tuple[int, ...]) -> SelaNet:
    stem = cfg.stem if cfg.stem != "auto" else ("small" if image_size <= 64 else "imagenet")
    if cfg.arch in ALEXNET_WIDTHS:
        backbone = AlexNetBN(ALEXNET_WIDTHS[cfg.arch], stem, cfg.width)
        hidden = 2  # AlexNet's two fully connected layers (4096 wide in the original)
    elif cfg.arch == "resnet18":
        backbone, hidden = ResNet(BasicBlock, (2, 2, 2, 2), stem, cfg.width), 1
    elif cfg.arch == "resnet50":
        backbone, hidden = ResNet(Bottleneck, (3, 4, 6, 3), stem, cfg.width), 1
    else:
        raise ValueError(f"arch must be alexnet|alexnet_small|resnet18|resnet50; got {cfg.arch!r}")
    return SelaNet(backbone, tuple(num_clusters), cfg.embed_dim, hidden)
