"""Batch mixing before the teachers: pixels and labels mix with one ratio."""

from __future__ import annotations

import torch

from distill.data.augment import MixedBatches


def test_mixup_mixes_pixels_and_targets_consistently():
    x = torch.stack([torch.full((1, 4, 4), float(i)) for i in range(8)])
    y = torch.arange(8) % 4
    (mx, soft, keys), = list(MixedBatches([(x, y, list("abcdefgh"))], 4, mixup=0.4, cutmix=0.0, seed=0))
    assert keys == list("abcdefgh")
    assert torch.allclose(soft.sum(1), torch.ones(8))
    lam = soft[torch.arange(8), y]  # weight on each sample's own class (classes repeat, so >= lam)
    assert (lam >= 0).all() and not torch.equal(mx, x)
    # each mixed image is a convex combination of two originals: its constant value lies between them
    assert (mx.amin(dim=(1, 2, 3)) >= 0).all() and (mx.amax(dim=(1, 2, 3)) <= 7).all()


def test_cutmix_label_weight_equals_pasted_area():
    x = torch.zeros(2, 1, 8, 8)
    x[1] = 1.0
    y = torch.tensor([0, 1])
    for seed in range(5):
        (mx, soft, _), = list(MixedBatches([(x, y, ["a", "b"])], 2, mixup=0.0, cutmix=1.0, seed=seed))
        # sample 0 is zeros; any ones in it were pasted from sample 1
        pasted = mx[0].mean().item() if not torch.equal(mx[0], x[1]) else 1.0
        assert abs(soft[0, 1].item() - pasted) < 1e-6 or soft[0, 0].item() == 1.0 - pasted
