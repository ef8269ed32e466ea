"""Batched tensor augmentations: random resized crop, horizontal flip, colour jitter, greyscale.

The same transforms as torchvision's (RandomResizedCrop, RandomHorizontalFlip, ColorJitter,
RandomGrayscale), drawn independently per image but applied to a whole batch at once with a
handful of tensor ops, so they run on CPU or GPU without torchvision. All randomness comes from
the ``torch.Generator`` passed in, which makes a batch a pure function of (seed, epoch, batch).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

# RGB -> luma (ITU-R 601), as torchvision's rgb_to_grayscale
_LUMA = (0.299, 0.587, 0.114)
# RGB <-> YIQ: a hue shift is a rotation of the (I, Q) plane
_RGB2YIQ = torch.tensor([[0.299, 0.587, 0.114], [0.596, -0.274, -0.322], [0.211, -0.523, 0.312]])
_YIQ2RGB = torch.linalg.inv(_RGB2YIQ)


def batch_generator(seed: int, epoch: int, batch: int) -> torch.Generator:
    """The generator of one training batch; nothing else feeds its augmentation."""
    return torch.Generator().manual_seed((seed * 1_000_003 + epoch) * 100_003 + batch + 1)


def _uniform(n: int, lo: float, hi: float, gen: torch.Generator) -> torch.Tensor:
    return torch.rand(n, generator=gen) * (hi - lo) + lo


class TensorAugment:
    def __init__(
        self,
        crop_scale=(0.5, 1.0),
        hflip=0.5,
        jitter=0.4,
        hue=0.1,
        grayscale=0.2,
        ratio=(3 / 4, 4 / 3),
    ):
        self.crop_scale, self.hflip, self.jitter, self.hue = crop_scale, hflip, jitter, hue
        self.gray, self.ratio = grayscale, ratio

    def __call__(self, x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        """x: float images in [0, 1] of shape (B, 3, H, W); returns the same shape."""
        b = x.shape[0]
        # Draw every random number on the CPU generator first (device-independent results).
        area = _uniform(b, *self.crop_scale, gen)
        logr = _uniform(b, math.log(self.ratio[0]), math.log(self.ratio[1]), gen)
        pos = torch.rand(b, 2, generator=gen) * 2 - 1
        flip = torch.rand(b, generator=gen) < self.hflip
        j = self.jitter
        bri, con, sat = (_uniform(b, max(0.0, 1 - j), 1 + j, gen) for _ in range(3))
        hue = _uniform(b, -self.hue, self.hue, gen) * 2 * math.pi
        gray = torch.rand(b, generator=gen) < self.gray
        dev = x.device

        # random resized crop + flip as one affine resampling (normalised coords in [-1, 1])
        r = torch.exp(logr)
        w = torch.sqrt(area * r).clamp(max=1.0)
        h = torch.sqrt(area / r).clamp(max=1.0)
        theta = torch.zeros(b, 2, 3)
        theta[:, 0, 0] = torch.where(flip, -w, w)
        theta[:, 1, 1] = h
        theta[:, 0, 2] = pos[:, 0] * (1 - w)
        theta[:, 1, 2] = pos[:, 1] * (1 - h)
        grid = F.affine_grid(theta.to(dev), list(x.shape), align_corners=False)
        x = F.grid_sample(x, grid, mode="bilinear", padding_mode="reflection", align_corners=False)

        if j > 0 or self.hue > 0:
            v = lambda t: t.to(dev).view(b, 1, 1, 1)  # noqa: E731
            luma = torch.tensor(_LUMA, device=dev).view(1, 3, 1, 1)
            x = (x * v(bri)).clamp(0, 1)
            m = (x * luma).sum(1, keepdim=True).mean(dim=(2, 3), keepdim=True)
            x = ((x - m) * v(con) + m).clamp(0, 1)
            g = (x * luma).sum(1, keepdim=True)
            x = ((x - g) * v(sat) + g).clamp(0, 1)
            c, s = torch.cos(hue), torch.sin(hue)
            rot = torch.zeros(b, 3, 3)
            rot[:, 0, 0] = 1
            rot[:, 1, 1], rot[:, 1, 2], rot[:, 2, 1], rot[:, 2, 2] = c, -s, s, c
            mat = (_YIQ2RGB @ rot @ _RGB2YIQ).to(dev)  # (B, 3, 3)
            x = torch.einsum("bij,bjhw->bihw", mat, x).clamp(0, 1)
        if self.gray > 0:
            luma = torch.tensor(_LUMA, device=dev).view(1, 3, 1, 1)
            g = (x * luma).sum(1, keepdim=True).expand_as(x)
            x = torch.where(gray.to(dev).view(b, 1, 1, 1), g, x)
        return x
