"""ShuffleNet V2 (Ma et al., 2018, arXiv:1807.11164), Table 5 and Fig. 3(c, d).

The paper's guidelines (equal in/out widths, no group convs, few branches,
few element-wise ops) give this unit: split the channels in half, leave one
half untouched, run the other through 1x1 -> 3x3 depthwise -> 1x1, concatenate
and shuffle so the halves mix in the next unit. Downsampling units skip the
split and give both branches a stride-2 depthwise conv, doubling the width.
"""

from __future__ import annotations

import torch
from torch import nn

from .base import StudentNet, input_size_for
from .layers import ConvBnAct, PoolLinearHead, channel_shuffle, check_choice, init_weights
from .registry import register_model

STEM_CHANNELS = 24
REPEATS = (4, 8, 4)
# Table 5: output channels of stages 2-4 and of conv5, per width.
WIDTHS: dict[float, tuple[int, int, int, int]] = {
    0.5: (48, 96, 192, 1024),
    1.0: (116, 232, 464, 1024),
    1.5: (176, 352, 704, 1024),
    2.0: (244, 488, 976, 2048),
}


def _branch(in_chs: int, out_chs: int, stride: int) -> nn.Sequential:
    """1x1 conv -> 3x3 depthwise (no ReLU: it would add cost for no accuracy) -> 1x1 conv."""
    return nn.Sequential(
        ConvBnAct(in_chs, out_chs, 1),
        ConvBnAct(out_chs, out_chs, 3, stride, groups=out_chs, act=None),
        ConvBnAct(out_chs, out_chs, 1),
    )


class ShuffleV2Unit(nn.Module):
    """Basic unit (stride 1, channel split) or downsampling unit (stride 2, both branches convolved)."""

    def __init__(self, in_chs: int, out_chs: int, stride: int) -> None:
        super().__init__()
        half = out_chs // 2
        self.stride = stride
        if stride == 1:
            if in_chs != out_chs:
                raise ValueError(f"ShuffleV2Unit: stride-1 unit needs in == out, got {in_chs} -> {out_chs}")
            self.left = nn.Identity()
            self.right = _branch(half, half, 1)
        else:
            self.left = nn.Sequential(
                ConvBnAct(in_chs, in_chs, 3, stride, groups=in_chs, act=None),
                ConvBnAct(in_chs, half, 1),
            )
            self.right = _branch(in_chs, half, stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.stride == 1:
            a, b = x.chunk(2, dim=1)
        else:
            a = b = x
        return channel_shuffle(torch.cat((self.left(a), self.right(b)), dim=1), 2)


class ShuffleNetV2(StudentNet):
    def __init__(
        self, num_classes: int = 1000, in_chans: int = 3, variant: str = "imagenet", width: float = 1.0
    ) -> None:
        super().__init__()
        *stage_chs, self.num_features = WIDTHS[width]
        cifar = variant == "cifar"
        stem: list[nn.Module] = [ConvBnAct(in_chans, STEM_CHANNELS, 3, stride=1 if cifar else 2)]
        if not cifar:
            stem.append(nn.MaxPool2d(3, 2, 1))
        self.stem = nn.Sequential(*stem)
        chs = STEM_CHANNELS
        stages = []
        for out, repeats in zip(stage_chs, REPEATS, strict=True):
            units = [ShuffleV2Unit(chs, out, 2)] + [ShuffleV2Unit(out, out, 1) for _ in range(repeats - 1)]
            stages.append(nn.Sequential(*units))
            chs = out
        self.stages = nn.Sequential(*stages)
        self.final = ConvBnAct(chs, self.num_features, 1)
        self.head = PoolLinearHead(self.num_features, num_classes)
        self.default_input_size = input_size_for(variant, in_chans)
        init_weights(self)


@register_model("shufflenet_v2", paper="arXiv:1807.11164")
def shufflenet_v2(num_classes: int, in_chans: int, variant: str, *, width: float = 1.0) -> ShuffleNetV2:
    """ShuffleNet V2 at one of the paper's widths: 0.5, 1.0, 1.5 or 2.0."""
    check_choice("shufflenet_v2", "width", width, tuple(WIDTHS))
    return ShuffleNetV2(num_classes, in_chans, variant, width=float(width))
