"""SqueezeNet 1.0 (Iandola et al., 2016, arXiv:1602.07360) and 1.1 (the authors' v1.1 release).

Fire modules squeeze the channels with 1x1 convs, then expand with a mix of
1x1 and 3x3 convs, so most filters are cheap 1x1s. There is no BatchNorm and
no fully connected layer: a 1x1 conv to `num_classes` and global average
pooling form the head. 1.1 moves the max-pools earlier and uses a 3x3/64
first conv, for 2.4x less compute at the same accuracy and ~the same size.
`bypass="simple"` adds the paper's identity shortcuts around Fire modules
whose input and output widths match (fire3, fire5, fire7, fire9).
"""

from __future__ import annotations

import torch
from torch import nn

from .base import StudentNet, input_size_for
from .layers import ConvBnAct, check_choice, check_range
from .registry import register_model

# Fire module (squeeze, expand) widths, fire2 ... fire9; each expands to 2 * expand channels.
FIRES = ((16, 64), (16, 64), (32, 128), (32, 128), (48, 192), (48, 192), (64, 256), (64, 256))
# Fire modules per stage; a stride-2 max-pool opens every stage after the first.
STAGE_SPLITS = {"1_0": (3, 4, 1), "1_1": (2, 2, 4)}
BYPASS = ("none", "simple")


class Fire(nn.Module):
    """1x1 squeeze, then parallel 1x1 and 3x3 expands concatenated; optional identity bypass."""

    def __init__(self, in_chs: int, squeeze: int, expand: int, bypass: bool) -> None:
        super().__init__()
        self.squeeze = ConvBnAct(in_chs, squeeze, 1, norm=False)
        self.expand1x1 = ConvBnAct(squeeze, expand, 1, norm=False)
        self.expand3x3 = ConvBnAct(squeeze, expand, 3, norm=False)
        self.bypass = bypass and in_chs == 2 * expand

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = self.squeeze(x)
        out = torch.cat((self.expand1x1(s), self.expand3x3(s)), dim=1)
        return out + x if self.bypass else out


class SqueezeHead(nn.Module):
    """Dropout, 1x1 conv to classes with ReLU, global average pool (the paper's conv10 + pool).

    ``relu=False`` drops the ReLU on the class scores: a score the ReLU holds at zero gets no
    gradient (on CIFAR-10 at 2 epochs it trained better without, with hard labels and KD alike;
    BENCHMARKS.md).
    """

    def __init__(self, in_chs: int, num_classes: int, drop_rate: float, relu: bool = True) -> None:
        super().__init__()
        self.drop = nn.Dropout(drop_rate)
        act = nn.ReLU if relu else None
        self.conv = ConvBnAct(in_chs, num_classes, 1, norm=False, act=act) if num_classes > 0 else nn.Identity()
        self.pool = nn.AdaptiveAvgPool2d(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.flatten(self.pool(self.conv(self.drop(x))), 1)


class SqueezeNet(StudentNet):
    def __init__(
        self,
        num_classes: int = 1000,
        in_chans: int = 3,
        variant: str = "imagenet",
        version: str = "1_0",
        bypass: str = "none",
        drop_rate: float = 0.5,
        head_relu: bool = True,
    ) -> None:
        super().__init__()
        cifar = variant == "cifar"
        chs = 96 if version == "1_0" else 64
        pool = lambda: nn.MaxPool2d(3, 2, ceil_mode=True)
        if cifar:  # CIFAR: no stem downsampling, and a 3x3 instead of a 7x7 on small images
            stem: list[nn.Module] = [ConvBnAct(in_chans, chs, 3, norm=False)]
        elif version == "1_0":
            stem = [ConvBnAct(in_chans, chs, 7, stride=2, norm=False, padding=0), pool()]
        else:
            stem = [ConvBnAct(in_chans, chs, 3, stride=2, norm=False, padding=0), pool()]
        self.stem = nn.Sequential(*stem)
        fires = iter(FIRES)
        stages = []
        for i, count in enumerate(STAGE_SPLITS[version]):
            layers: list[nn.Module] = [pool()] if i > 0 else []
            for _ in range(count):
                squeeze, expand = next(fires)
                layers.append(Fire(chs, squeeze, expand, bypass == "simple"))
                chs = 2 * expand
            stages.append(nn.Sequential(*layers))
        self.stages = nn.Sequential(*stages)
        self.final = nn.Identity()
        self.num_features = chs
        self.head = SqueezeHead(chs, num_classes, drop_rate, head_relu)
        self.default_input_size = input_size_for(variant, in_chans)
        self._init_weights()

    def _init_weights(self) -> None:
        # Reference init: He-uniform for Fire convs, small normal for the classifier conv,
        # whose outputs must start near zero because a ReLU follows it.
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_uniform_(m.weight)
                nn.init.zeros_(m.bias)
        if isinstance(self.head.conv, ConvBnAct):
            nn.init.normal_(self.head.conv[0].weight, 0.0, 0.01)


def _build(
    name: str, version: str, num_classes: int, in_chans: int, variant: str, bypass: str, drop_rate: float,
    head_relu: bool,
) -> SqueezeNet:
    check_choice(name, "bypass", bypass, BYPASS)
    check_range(name, "drop_rate", drop_rate, 0.0, 1.0, include_low=True)
    check_choice(name, "head_relu", head_relu, (True, False))
    return SqueezeNet(num_classes, in_chans, variant, version=version, bypass=bypass, drop_rate=drop_rate,
                      head_relu=head_relu)


@register_model("squeezenet1_0", paper="arXiv:1602.07360")
def squeezenet1_0(
    num_classes: int, in_chans: int, variant: str, *, bypass: str = "none", drop_rate: float = 0.5,
    head_relu: bool = True,
) -> SqueezeNet:
    """SqueezeNet 1.0 (7x7/96 first conv); `bypass` is "none" or "simple"; `head_relu=False`
    drops the ReLU on the class scores (SqueezeHead)."""
    return _build("squeezenet1_0", "1_0", num_classes, in_chans, variant, bypass, drop_rate, head_relu)


@register_model("squeezenet1_1", paper="arXiv:1602.07360 (v1.1 release, github.com/forresti/SqueezeNet)")
def squeezenet1_1(
    num_classes: int, in_chans: int, variant: str, *, bypass: str = "none", drop_rate: float = 0.5,
    head_relu: bool = True,
) -> SqueezeNet:
    """SqueezeNet 1.1 (3x3/64 first conv, earlier pooling); `bypass` is "none" or "simple"; `head_relu=False`
    drops the ReLU on the class scores (SqueezeHead)."""
    return _build("squeezenet1_1", "1_1", num_classes, in_chans, variant, bypass, drop_rate, head_relu)
