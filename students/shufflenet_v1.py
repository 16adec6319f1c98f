"""ShuffleNet v1 (Zhang et al., 2017, arXiv:1707.01083), Table 1 and Fig. 2.

A ResNet bottleneck made cheap: both 1x1 convs are group convs (g groups),
and a channel shuffle between them lets information cross groups. The 3x3
is depthwise with no ReLU after it. Downsampling units concatenate a 3x3
average-pooled shortcut instead of adding it, so width grows for free. The
first 1x1 of stage 2 is not grouped because its input has only 24 channels.
"""

from __future__ import annotations

import torch
from torch import nn

from .base import StudentNet, input_size_for
from .layers import (
    ChannelShuffle,
    ConvBnAct,
    PoolLinearHead,
    check_choice,
    check_range,
    init_weights,
    make_divisible,
)
from .registry import register_model

STEM_CHANNELS = 24
REPEATS = (4, 8, 4)
# Table 1: stage-2 output channels per group count; stages 3 and 4 double each time.
STAGE2_CHANNELS = {1: 144, 2: 200, 3: 240, 4: 272, 8: 384}


class ShuffleV1Unit(nn.Module):
    """Grouped 1x1 -> shuffle -> 3x3 depthwise -> grouped 1x1; add (stride 1) or concat (stride 2)."""

    def __init__(self, in_chs: int, out_chs: int, stride: int, groups: int, first_groups: int) -> None:
        super().__init__()
        mid = out_chs // 4  # bottleneck width is a quarter of the unit's output (Sec. 4)
        branch_out = out_chs - in_chs if stride == 2 else out_chs
        self.stride = stride
        self.branch = nn.Sequential(
            ConvBnAct(in_chs, mid, 1, groups=first_groups),
            ChannelShuffle(first_groups),
            ConvBnAct(mid, mid, 3, stride, groups=mid, act=None),
            ConvBnAct(mid, branch_out, 1, groups=groups, act=None),
        )
        self.shortcut = nn.AvgPool2d(3, 2, 1) if stride == 2 else nn.Identity()
        self.act = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out, short = self.branch(x), self.shortcut(x)
        out = torch.cat((short, out), dim=1) if self.stride == 2 else out + short
        return self.act(out)


class ShuffleNetV1(StudentNet):
    def __init__(
        self,
        num_classes: int = 1000,
        in_chans: int = 3,
        variant: str = "imagenet",
        groups: int = 3,
        scale: float = 1.0,
    ) -> None:
        super().__init__()
        cifar = variant == "cifar"
        # Scaled widths are rounded so every group conv divides evenly: the stem to a
        # multiple of g, stage widths to a multiple of 4g (their quarter-width bottleneck
        # is grouped). At scale 1.0 this leaves Table 1's numbers unchanged.
        chs = make_divisible(STEM_CHANNELS * scale, groups)
        stem: list[nn.Module] = [ConvBnAct(in_chans, chs, 3, stride=1 if cifar else 2)]
        if not cifar:
            stem.append(nn.MaxPool2d(3, 2, 1))
        self.stem = nn.Sequential(*stem)
        stages = []
        for i, repeats in enumerate(REPEATS):
            out = make_divisible(STAGE2_CHANNELS[groups] * 2**i * scale, 4 * groups)
            units = []
            for j in range(repeats):
                first_groups = 1 if i == 0 and j == 0 else groups
                units.append(ShuffleV1Unit(chs, out, 2 if j == 0 else 1, groups, first_groups))
                chs = out
            stages.append(nn.Sequential(*units))
        self.stages = nn.Sequential(*stages)
        self.final = nn.Identity()
        self.num_features = chs
        self.head = PoolLinearHead(chs, num_classes)
        self.default_input_size = input_size_for(variant, in_chans)
        init_weights(self)


@register_model("shufflenet_v1", paper="arXiv:1707.01083")
def shufflenet_v1(
    num_classes: int, in_chans: int, variant: str, *, groups: int = 3, scale: float = 1.0
) -> ShuffleNetV1:
    """ShuffleNet v1 with `groups` in {1, 2, 3, 4, 8} and width `scale` (paper: 0.25, 0.5, 1.0)."""
    check_choice("shufflenet_v1", "groups", groups, tuple(STAGE2_CHANNELS))
    check_range("shufflenet_v1", "scale", scale, 0.0)
    return ShuffleNetV1(num_classes, in_chans, variant, groups=groups, scale=scale)
