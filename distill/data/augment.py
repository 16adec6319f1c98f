"""Augmentation written for this project (no torchvision).

Per-sample ops (random crop with reflect padding, horizontal flip) run in the
DataLoader workers; batch ops (mixup, cutmix) run on the assembled batch before
it is sent to the teachers, so teachers and student see the same view
("consistent teaching").
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F


def random_crop_flip(x: torch.Tensor, padding: int, hflip: bool, rng: np.random.Generator) -> torch.Tensor:
    """One ``[C, H, W]`` image: reflect-pad by ``padding``, crop back to H x W, maybe flip."""
    if padding > 0:
        h, w = x.shape[-2:]
        padded = F.pad(x[None], (padding,) * 4, mode="reflect")[0]
        top, left = rng.integers(0, 2 * padding + 1, size=2)
        x = padded[:, top:top + h, left:left + w]
    if hflip and rng.random() < 0.5:
        x = x.flip(-1)
    return x


def mix_batch(x: torch.Tensor, y: torch.Tensor, num_classes: int, mixup: float, cutmix: float,
              rng: np.random.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Mixup (Zhang et al.) or cutmix (Yun et al.) on a batch; returns soft targets ``[B, C]``.

    When both are enabled each batch picks one at random. Labels mix with the
    same ratio as the pixels (for cutmix, the exact pasted area).
    """
    onehot = F.one_hot(y, num_classes).float()
    if mixup <= 0 and cutmix <= 0:
        return x, onehot
    perm = torch.from_numpy(rng.permutation(x.shape[0]))
    use_cutmix = cutmix > 0 and (mixup <= 0 or rng.random() < 0.5)
    lam = float(rng.beta(cutmix, cutmix) if use_cutmix else rng.beta(mixup, mixup))
    if use_cutmix:
        h, w = x.shape[-2:]
        ch, cw = int(h * np.sqrt(1 - lam)), int(w * np.sqrt(1 - lam))
        cy, cx = rng.integers(0, h), rng.integers(0, w)
        y0, y1 = max(cy - ch // 2, 0), min(cy + ch // 2, h)
        x0, x1 = max(cx - cw // 2, 0), min(cx + cw // 2, w)
        x = x.clone()
        x[:, :, y0:y1, x0:x1] = x[perm][:, :, y0:y1, x0:x1]
        lam = 1.0 - (y1 - y0) * (x1 - x0) / (h * w)
    else:
        x = lam * x + (1 - lam) * x[perm]
    return x, lam * onehot + (1 - lam) * onehot[perm]


class MixedBatches:
    """Wraps a loader of ``(x, y, keys)`` batches and mixes each one (mixup/cutmix).

    It sits before the teacher prefetcher, so the teachers score exactly the
    mixed images the student trains on; targets become probabilities ``[B, C]``.
    """

    def __init__(self, loader, num_classes: int, mixup: float, cutmix: float, seed: int) -> None:
        self.loader, self.num_classes = loader, num_classes
        self.mixup, self.cutmix = mixup, cutmix
        self.rng = np.random.default_rng(seed)

    def __iter__(self):
        for x, y, keys in self.loader:
            x, soft = mix_batch(x, y, self.num_classes, self.mixup, self.cutmix, self.rng)
            yield x, soft, keys
