"""MobileNet v1 (Howard et al., 2017, arXiv:1704.04861), Table 1.

A 3x3 stem and 13 depthwise-separable blocks (3x3 depthwise + 1x1 pointwise,
each followed by BN and ReLU). Two multipliers trade accuracy for cost:
width `alpha` thins every layer (cost ~ alpha^2) and resolution `rho` shrinks
the input (cost ~ rho^2). The net is resolution-agnostic, so `rho` only sets
`default_input_size` (224 * rho at ImageNet size: 224/192/160/128 for rho =
1, 6/7, 5/7, 4/7).
"""

from __future__ import annotations

from torch import nn

from .base import StudentNet, input_size_for
from .layers import ConvBnAct, PoolLinearHead, check_range, init_weights
from .registry import register_model

# (output channels, stride) per block, grouped into stages by output resolution.
# Table 1 prints s2 for the second-last 1024 block; its output stays 7x7, so it is s1.
STAGES: tuple[tuple[tuple[int, int], ...], ...] = (
    ((64, 1),),
    ((128, 2), (128, 1)),
    ((256, 2), (256, 1)),
    ((512, 2),) + ((512, 1),) * 5,
    ((1024, 2), (1024, 1)),
)


class DepthwiseSeparable(nn.Sequential):
    """3x3 depthwise conv (filters each channel) then 1x1 pointwise conv (mixes channels)."""

    def __init__(self, in_chs: int, out_chs: int, stride: int) -> None:
        super().__init__(
            ConvBnAct(in_chs, in_chs, 3, stride, groups=in_chs),
            ConvBnAct(in_chs, out_chs, 1),
        )


class MobileNetV1(StudentNet):
    def __init__(
        self,
        num_classes: int = 1000,
        in_chans: int = 3,
        variant: str = "imagenet",
        alpha: float = 1.0,
        rho: float = 1.0,
        drop_rate: float = 0.0,
    ) -> None:
        super().__init__()
        # The reference (TF-slim) width rule: truncate, but never below 8 channels.
        width = lambda c: max(8, int(c * alpha))
        cifar = variant == "cifar"
        chs = width(32)
        self.stem = ConvBnAct(in_chans, chs, 3, stride=1 if cifar else 2)
        stages = []
        for i, blocks in enumerate(STAGES):
            layers = []
            for j, (out, stride) in enumerate(blocks):
                # CIFAR: the stem and the first stride-2 stage keep full resolution.
                stride = 1 if cifar and i == 1 and j == 0 else stride
                layers.append(DepthwiseSeparable(chs, width(out), stride))
                chs = width(out)
            stages.append(nn.Sequential(*layers))
        self.stages = nn.Sequential(*stages)
        self.final = nn.Identity()
        self.num_features = chs
        self.head = PoolLinearHead(chs, num_classes, drop_rate)
        self.default_input_size = input_size_for(variant, in_chans, rho)
        init_weights(self)


@register_model("mobilenet_v1", paper="arXiv:1704.04861")
def mobilenet_v1(
    num_classes: int,
    in_chans: int,
    variant: str,
    *,
    alpha: float = 1.0,
    rho: float = 1.0,
    drop_rate: float = 0.0,
) -> MobileNetV1:
    """MobileNet v1 with width multiplier `alpha` and resolution multiplier `rho` (0 < rho <= 1)."""
    check_range("mobilenet_v1", "alpha", alpha, 0.0)
    check_range("mobilenet_v1", "rho", rho, 0.0, 1.0)
    check_range("mobilenet_v1", "drop_rate", drop_rate, 0.0, 1.0, include_low=True)
    return MobileNetV1(num_classes, in_chans, variant, alpha=alpha, rho=rho, drop_rate=drop_rate)
