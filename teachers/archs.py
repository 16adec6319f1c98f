"""Project teacher architectures for the embedded demo data (scikit-learn digits, 8x8 grayscale).

Users normally bring their own teachers (see ``teachers.load``); these exist so the demo
has teachers to train in seconds. Both keep the zoo's constructor signature
(``num_classes``, ``in_chans``, a width knob), expose their hint layers as ``stages.0``,
``stages.1``, ... and carry ``input_size`` (C, H, W) for the loader's dry run. Both are
well above a MobileNet v1 alpha=0.25 student (~200k parameters), so distilling into one
actually compresses.
"""

from __future__ import annotations

from collections.abc import Callable

from torch import nn


def _conv_bn_relu(cin: int, cout: int) -> list[nn.Module]:
    return [nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)]


def _linear_bn_relu(cin: int, cout: int) -> list[nn.Module]:
    return [nn.Linear(cin, cout), nn.BatchNorm1d(cout), nn.ReLU(inplace=True)]


class DigitsCNN(nn.Module):
    """Three conv stages (w, 2w, 4w channels at 8x8, 4x4, 2x2) and a linear head.

    Pooling before the wider convs keeps it at ~2.4M MACs, so it trains in seconds."""

    def __init__(self, num_classes: int = 10, in_chans: int = 1, width: int = 64) -> None:
        super().__init__()
        self.stages = nn.Sequential(
            nn.Sequential(*_conv_bn_relu(in_chans, width)),
            nn.Sequential(nn.MaxPool2d(2), *_conv_bn_relu(width, 2 * width)),
            nn.Sequential(nn.MaxPool2d(2), *_conv_bn_relu(2 * width, 4 * width)),
        )
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.head = nn.Linear(4 * width, num_classes)
        self.input_size = (in_chans, 8, 8)

    def forward(self, x):
        return self.head(self.pool(self.stages(x)).flatten(1))


class DigitsMLP(nn.Module):
    """Two hidden layers on the flattened image; each hidden layer is one stage."""

    def __init__(self, num_classes: int = 10, in_chans: int = 1, hidden: int = 512,
                 image_size: int = 8) -> None:
        super().__init__()
        flat = in_chans * image_size * image_size
        self.stages = nn.Sequential(
            nn.Sequential(nn.Flatten(), *_linear_bn_relu(flat, hidden)),
            nn.Sequential(*_linear_bn_relu(hidden, hidden)),
        )
        self.head = nn.Linear(hidden, num_classes)
        self.input_size = (in_chans, image_size, image_size)

    def forward(self, x):
        return self.head(self.stages(x))


def digits_cnn(num_classes: int = 10, in_chans: int = 1, width: int = 64) -> DigitsCNN:
    """~373k parameters at width 64; hints ``stages.0..2`` are [N,w,8,8], [N,2w,4,4], [N,4w,2,2]."""
    return DigitsCNN(num_classes=num_classes, in_chans=in_chans, width=width)


def digits_mlp(num_classes: int = 10, in_chans: int = 1, hidden: int = 512, image_size: int = 8) -> DigitsMLP:
    """~303k parameters at hidden 512; hints ``stages.0..1`` are [N,hidden]."""
    return DigitsMLP(num_classes=num_classes, in_chans=in_chans, hidden=hidden, image_size=image_size)


TEACHER_ARCHS: dict[str, Callable[..., nn.Module]] = {
    "digits_cnn": digits_cnn,
    "digits_mlp": digits_mlp,
}


def create_teacher(name: str, **kwargs) -> nn.Module:
    """Build a project teacher by name, e.g. ``create_teacher("digits_cnn", num_classes=10)``."""
    if name not in TEACHER_ARCHS:
        raise ValueError(f"unknown teacher architecture {name!r}; "
                         f"project teachers are {sorted(TEACHER_ARCHS)}")
    return TEACHER_ARCHS[name](**kwargs)
