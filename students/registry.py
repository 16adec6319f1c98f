"""Model registry by name with one constructor signature, timm style.

Every architecture registers a builder `fn(num_classes, in_chans, variant, *, <options>)`.
The keyword-only parameters of the builder *are* its option list, so
`create_model` can reject a misspelt option with a one-line error instead of a
TypeError traceback from deep inside a constructor.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass, field

from torch import nn

from .base import input_size_for
from .layers import VARIANTS

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
CIFAR_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR_STD = (0.2470, 0.2435, 0.2616)


@dataclass(frozen=True)
class ModelInfo:
    """What a data pipeline needs to feed a model, plus where it comes from.

    `input_size` and `mean`/`std` are per variant ("imagenet", "cifar"), for 3
    input channels; models built with other `in_chans` report their own
    `default_input_size`. `options` lists the builder's keyword options.
    """

    name: str
    paper: str
    input_size: dict[str, tuple[int, int, int]] = field(
        default_factory=lambda: {v: input_size_for(v, 3) for v in VARIANTS}
    )
    mean: dict[str, tuple[float, ...]] = field(
        default_factory=lambda: {"imagenet": IMAGENET_MEAN, "cifar": CIFAR_MEAN}
    )
    std: dict[str, tuple[float, ...]] = field(
        default_factory=lambda: {"imagenet": IMAGENET_STD, "cifar": CIFAR_STD}
    )
    options: tuple[str, ...] = ()


Builder = Callable[..., nn.Module]
_BUILDERS: dict[str, Builder] = {}
_INFO: dict[str, ModelInfo] = {}


def register_model(name: str, paper: str) -> Callable[[Builder], Builder]:
    """Decorator: register `fn` under `name`; its keyword-only parameters become the options."""

    def wrap(fn: Builder) -> Builder:
        if name in _BUILDERS:
            raise ValueError(f"model {name!r} registered twice")
        params = inspect.signature(fn).parameters.values()
        options = tuple(p.name for p in params if p.kind is inspect.Parameter.KEYWORD_ONLY)
        _BUILDERS[name] = fn
        _INFO[name] = ModelInfo(name=name, paper=paper, options=options)
        return fn

    return wrap


def _lookup(name: str) -> None:
    if name not in _BUILDERS:
        raise ValueError(f"unknown model {name!r}; known: {', '.join(list_models())}")


def list_models() -> list[str]:
    """Registered model names, sorted."""
    return sorted(_BUILDERS)


def model_info(name: str) -> ModelInfo:
    """Metadata (input size, mean/std per variant, paper, options) for a registered model."""
    _lookup(name)
    return _INFO[name]


def create_model(
    name: str,
    num_classes: int = 1000,
    in_chans: int = 3,
    variant: str = "imagenet",
    **options: object,
) -> nn.Module:
    """Build a registered student.

    `variant="imagenet"` keeps the paper's stem strides (224x224 inputs);
    `variant="cifar"` removes the first 4x of downsampling for 32x32 (and
    smaller) inputs. `num_classes=0` returns pooled features instead of logits.
    Raises ValueError naming the model, variant or option that is wrong.
    """
    _lookup(name)
    if variant not in VARIANTS:
        raise ValueError(f"{name}: unknown variant {variant!r}; choose one of {list(VARIANTS)}")
    if not isinstance(num_classes, int) or num_classes < 0:
        raise ValueError(f"{name}: num_classes={num_classes!r} must be an int >= 0")
    if not isinstance(in_chans, int) or in_chans < 1:
        raise ValueError(f"{name}: in_chans={in_chans!r} must be an int >= 1")
    allowed = _INFO[name].options
    for key in options:
        if key not in allowed:
            raise ValueError(f"{name}: unknown option {key!r}; accepted: {list(allowed) or 'none'}")
    return _BUILDERS[name](num_classes, in_chans, variant, **options)
