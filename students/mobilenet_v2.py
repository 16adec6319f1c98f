"""MobileNetV2 (Sandler et al., 2018, arXiv:1801.04381), Table 2.

Inverted residual blocks: a 1x1 conv expands the channels by t, a 3x3
depthwise conv filters them, and a 1x1 conv projects back *without* an
activation (the "linear bottleneck": ReLU on a thin tensor loses
information). The shortcut joins the thin ends when shape allows. ReLU6
throughout, as in the paper. Channel counts are rounded to multiples of 8 as
the reference implementations do, which is what the published 3,504,872
parameters correspond to.
"""

from __future__ import annotations

import torch
from torch import nn

from .base import StudentNet, input_size_for
from .layers import ConvBnAct, PoolLinearHead, check_range, init_weights, make_divisible
from .registry import register_model

# Table 2: expansion t, output channels c, repeats n, first stride s. One stage per row.
SETTINGS: tuple[tuple[int, int, int, int], ...] = (
    (1, 16, 1, 1),
    (6, 24, 2, 2),
    (6, 32, 3, 2),
    (6, 64, 4, 2),
    (6, 96, 3, 1),
    (6, 160, 3, 2),
    (6, 320, 1, 1),
)


class InvertedResidual(nn.Module):
    """Expand (1x1) -> depthwise (3x3) -> linear project (1x1), residual when stride 1 and in == out."""

    def __init__(self, in_chs: int, out_chs: int, stride: int, expand: int) -> None:
        super().__init__()
        mid = in_chs * expand
        layers: list[nn.Module] = []
        if expand != 1:
            layers.append(ConvBnAct(in_chs, mid, 1, act=nn.ReLU6))
        layers += [
            ConvBnAct(mid, mid, 3, stride, groups=mid, act=nn.ReLU6),
            ConvBnAct(mid, out_chs, 1, act=None),
        ]
        self.conv = nn.Sequential(*layers)
        self.use_residual = stride == 1 and in_chs == out_chs

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv(x)
        return x + out if self.use_residual else out


class MobileNetV2(StudentNet):
    def __init__(
        self,
        num_classes: int = 1000,
        in_chans: int = 3,
        variant: str = "imagenet",
        width_mult: float = 1.0,
        drop_rate: float = 0.2,
    ) -> None:
        super().__init__()
        cifar = variant == "cifar"
        chs = make_divisible(32 * width_mult)
        self.stem = ConvBnAct(in_chans, chs, 3, stride=1 if cifar else 2, act=nn.ReLU6)
        stages = []
        for i, (t, c, n, s) in enumerate(SETTINGS):
            out = make_divisible(c * width_mult)
            # CIFAR: the stem and the first stride-2 stage (24 channels) keep full resolution.
            s = 1 if cifar and i == 1 else s
            blocks = []
            for j in range(n):
                blocks.append(InvertedResidual(chs, out, s if j == 0 else 1, t))
                chs = out
            stages.append(nn.Sequential(*blocks))
        self.stages = nn.Sequential(*stages)
        # The last 1x1 conv is not thinned below 1280 for width < 1 (paper, Sec. 6.1).
        self.num_features = make_divisible(1280 * max(1.0, width_mult))
        self.final = ConvBnAct(chs, self.num_features, 1, act=nn.ReLU6)
        self.head = PoolLinearHead(self.num_features, num_classes, drop_rate)
        self.default_input_size = input_size_for(variant, in_chans)
        init_weights(self)


@register_model("mobilenet_v2", paper="arXiv:1801.04381")
def mobilenet_v2(
    num_classes: int,
    in_chans: int,
    variant: str,
    *,
    width_mult: float = 1.0,
    drop_rate: float = 0.2,
) -> MobileNetV2:
    """MobileNetV2 with width multiplier `width_mult` (paper: 0.35 ... 1.4)."""
    check_range("mobilenet_v2", "width_mult", width_mult, 0.0)
    check_range("mobilenet_v2", "drop_rate", drop_rate, 0.0, 1.0, include_low=True)
    return MobileNetV2(num_classes, in_chans, variant, width_mult=width_mult, drop_rate=drop_rate)
