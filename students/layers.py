"""Building blocks shared by every student: conv-bn-act, channel shuffle, heads, init.

Each architecture file composes these instead of re-declaring its own conv
wrappers, so a change to (say) padding or initialisation lands everywhere.
"""

from __future__ import annotations

import math

import torch
from torch import nn

VARIANTS = ("imagenet", "cifar")


def make_divisible(value: float, divisor: int = 8, min_value: int | None = None) -> int:
    """Round a scaled channel count to a multiple of `divisor`, never losing more than 10%.

    This is the rounding rule of the reference MobileNetV2 code; hardware likes
    channel counts that are multiples of 8, and the 10% guard keeps thin
    models from collapsing to a much smaller width than asked for.
    """
    min_value = divisor if min_value is None else min_value
    rounded = max(min_value, int(value + divisor / 2) // divisor * divisor)
    if rounded < 0.9 * value:
        rounded += divisor
    return rounded


class ConvBnAct(nn.Sequential):
    """Conv2d with 'same' padding, then BatchNorm (optional) and an activation (optional).

    Without BatchNorm the conv gets a bias (SqueezeNet); with it the bias is
    redundant and dropped. `act=None` gives the linear output used by
    bottleneck projections.
    """

    def __init__(
        self,
        in_chs: int,
        out_chs: int,
        kernel_size: int = 1,
        stride: int = 1,
        groups: int = 1,
        act: type[nn.Module] | None = nn.ReLU,
        norm: bool = True,
        padding: int | None = None,
    ) -> None:
        padding = kernel_size // 2 if padding is None else padding
        layers: list[nn.Module] = [
            nn.Conv2d(in_chs, out_chs, kernel_size, stride, padding, groups=groups, bias=not norm)
        ]
        if norm:
            layers.append(nn.BatchNorm2d(out_chs))
        if act is not None:
            layers.append(act(inplace=True))
        super().__init__(*layers)


def channel_shuffle(x: torch.Tensor, groups: int) -> torch.Tensor:
    """Interleave channels across `groups` so the next group conv sees every group (ShuffleNet)."""
    if groups == 1:
        return x
    n, c, h, w = x.shape
    return x.view(n, groups, c // groups, h, w).transpose(1, 2).reshape(n, c, h, w)


class ChannelShuffle(nn.Module):
    """Module form of `channel_shuffle`, so it shows up in `print(model)` and module paths."""

    def __init__(self, groups: int) -> None:
        super().__init__()
        self.groups = groups

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return channel_shuffle(x, self.groups)

    def extra_repr(self) -> str:
        return f"groups={self.groups}"


class PoolLinearHead(nn.Module):
    """Global average pool, optional dropout, linear classifier.

    Adaptive pooling makes every model resolution-agnostic (8x8 inputs work).
    `num_classes=0` leaves the pooled features unclassified, as in timm.
    """

    def __init__(self, in_chs: int, num_classes: int, drop_rate: float = 0.0) -> None:
        super().__init__()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.drop = nn.Dropout(drop_rate) if drop_rate > 0 else nn.Identity()
        self.fc = nn.Linear(in_chs, num_classes) if num_classes > 0 else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.drop(torch.flatten(self.pool(x), 1)))


def init_weights(model: nn.Module) -> None:
    """He init for convs (fan-out, as the reference ImageNet models do), unit BN, small linear."""
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, 0.0, 0.01)
            nn.init.zeros_(m.bias)


def check_choice(model: str, option: str, value: object, allowed: tuple) -> None:
    """One-line ValueError naming the model and option when `value` is not one of `allowed`."""
    if value not in allowed:
        raise ValueError(f"{model}: option {option}={value!r} not supported; choose one of {list(allowed)}")


def check_range(
    model: str, option: str, value: object, low: float, high: float = math.inf, *, include_low: bool = False
) -> None:
    """One-line ValueError unless low < value <= high (low <= value with `include_low`)."""
    ok = isinstance(value, int | float) and not isinstance(value, bool)
    ok = ok and (low <= value if include_low else low < value) and value <= high
    if not ok:
        lower = f"{low} <=" if include_low else f"{low} <"
        upper = "" if high == math.inf else f" <= {high}"
        raise ValueError(f"{model}: option {option}={value!r} out of range; need {lower} {option}{upper}")
