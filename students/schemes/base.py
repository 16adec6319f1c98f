"""What a quantization scheme is: its options, and what it does to the layer that holds it.

A scheme is a frozen dataclass whose fields are its options (torchao's ``quantize_`` configs:
one config class per method), found by name in ``students.schemes.registry`` (the student
zoo's and timm's registry). ``QConv2d`` / ``QLinear`` hold one and call it for everything
that differs between schemes; they contain no scheme names. The scheme keeps no tensors:
each method takes the layer, and the scheme's learned parameters and buffers are registered
on the layer itself (``attach``), so their state-dict keys are the layer's
(``<layer>.log_wp``, ``<layer>.binary_scale``, ...), as they were before the schemes became
classes, and one scheme object can serve every layer of a model.

Not ``torch.nn.utils.parametrize``: it would move the latent weight to
``parametrizations.weight.original`` (every checkpoint's keys change), ``layer.weight``
would become the quantized weight (the optimizer, DeepSpeed and BinaryConnect's clip all
need the latent one), and it covers weights only, where XNOR and int8 change the input and
the whole forward.

A layer's life, and the method each step calls:

    attach(layer)             register the scheme's parameters / buffers on a new layer
    init_from_weight(layer)   (re)derive the scales that start from the weight (after a copy too)
    forward(layer, x)         training and eval forward: quantize_input, quantized_weight, layer.op
    quantized_weight(layer)   the STE-quantized weight (kernels.ste); deterministic=True in eval
    quantizer_parameters(layer), quantizer_lr_scale   learned quantizer state for the optimizer
    clip_latent_(layer)       after every optimizer step (BinaryConnect clips its latent weight)
    on_train(layer, mode), on_apply(layer), upgrade_state_dict(layer, state, prefix)   hooks
    code_counts(layer)        TensorBoard: how many weights hold each code (distill.train.quant_stats)

Export targets, one method each; ``supports(target)`` says whether a scheme has one:

    export_state(layer)       integer codes and the scales that rebuild quantized_weight()
    packed(layer)             the layer on the packed 1- / 2-bit kernels (students.export)
    int8_module(layer, name)  a torch.ao int8 module (students.convert_int8)
    portable(layer)           standard ops with int8 weight codes, for onnxruntime / ExecuTorch
                              (students.deploy.portable: the codes and scales rebuild the eval weight exactly)

A new export target (e.g. a portable form for ONNX Runtime / ExecuTorch) is one more
method here that raises ``ValueError`` for schemes without one, and its override in each
scheme's file; callers ask ``scheme.supports("<method>")`` first.
"""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

CODE_NAMES = {-1: "minus1", 0: "zero", 1: "plus1"}


@dataclasses.dataclass(frozen=True)
class Scheme:
    """Base of every scheme; the defaults are a scheme that quantizes nothing."""

    name: ClassVar[str] = ""
    weight_bits: ClassVar[int] = 32
    codes: ClassVar[tuple[int, ...]] = ()  # the integer weight codes, for code_counts (binary, ternary)
    skip_depthwise: ClassVar[bool] = False  # quantize() keeps depthwise convs fp32 by default
    packed_int8_input: ClassVar[bool] = False  # the packed form rounds this layer's input to int8 per row
    no_packed_hint: ClassVar[str] = ""  # appended to export's "has no packed form" error

    def __post_init__(self) -> None:
        """Validate the options (override; raise ValueError naming the option)."""

    # ---------------------------------------------------------------- options

    @classmethod
    def option_names(cls) -> tuple[str, ...]:
        return tuple(f.name for f in dataclasses.fields(cls))

    @property
    def options(self) -> dict[str, Any]:
        """The resolved options, {name: value}."""
        return {name: getattr(self, name) for name in self.option_names()}

    @property
    def input_bits(self) -> int | None:
        """Bits of the input quantizer (the layer's ``act_bits``); None = full-precision input."""
        return None

    @classmethod
    def supports(cls, target: str) -> bool:
        """Whether this scheme overrides the export method ``target`` ("packed", "int8_module", ...)."""
        return getattr(cls, target) is not getattr(Scheme, target)

    # ---------------------------------------------------------------- the layer's state

    def attach(self, layer: nn.Module) -> None:
        """Register the scheme's parameters and buffers on a freshly built layer."""

    def init_from_weight(self, layer: nn.Module) -> None:
        """Set the state that starts from the weight (called by attach and after from_float's copy)."""

    def upgrade_state_dict(self, layer: nn.Module, state_dict: dict[str, Tensor], prefix: str) -> None:
        """Rewrite an older state dict of this scheme in place, before it loads into ``layer``."""

    def on_train(self, layer: nn.Module, mode: bool) -> None:
        """Called after ``layer.train(mode)``."""

    def on_apply(self, layer: nn.Module) -> None:
        """Called after ``layer._apply`` (``.to()``, ``.half()``, ...)."""

    # ---------------------------------------------------------------- training

    def quantized_weight(self, layer: nn.Module, deterministic: bool = False) -> Tensor:
        return layer.weight

    def quantize_input(self, layer: nn.Module, x: Tensor) -> Tensor:
        return x

    def forward(self, layer: nn.Module, x: Tensor) -> Tensor:
        return layer.op(self.quantize_input(layer, x), self.quantized_weight(layer), layer.bias)

    def quantizer_parameters(self, layer: nn.Module) -> list[nn.Parameter]:
        """The learned quantizer state, for an optimizer group of its own (no weight decay)."""
        return []

    @property
    def quantizer_lr_scale(self) -> float:
        """Learning-rate multiplier of ``quantizer_parameters``."""
        return 1.0

    def clip_latent_(self, layer: nn.Module) -> None:
        """Called after every optimizer step."""

    # ---------------------------------------------------------------- statistics

    @torch.no_grad()
    def code_counts(self, layer: nn.Module) -> dict[str, int]:
        """{code name: how many weights hold it} for binary / ternary schemes ({} for the others)."""
        if not self.codes:
            return {}
        codes = self.export_state(layer)["codes"]
        return {CODE_NAMES[v]: int((codes == v).sum()) for v in self.codes}

    # ---------------------------------------------------------------- export targets

    @torch.no_grad()
    def export_state(self, layer: nn.Module) -> dict[str, Any]:
        """Integer codes plus the scales that rebuild ``quantized_weight`` (see each scheme)."""
        return {"scheme": self.name, "weight_bits": self.weight_bits, "act_bits": self.input_bits,
                **self.codes_and_scales(layer, layer.weight.detach())}  # fmt: skip

    def codes_and_scales(self, layer: nn.Module, w: Tensor) -> dict[str, Any]:
        """The scheme's part of ``export_state`` (override)."""
        return {}

    def packed(self, layer: nn.Module) -> nn.Module:
        """The layer as it deploys on the packed kernels (kernels.packed_layers), BN not yet folded."""
        raise ValueError(f"scheme {self.name!r} has no packed form{self.no_packed_hint}")

    def portable(self, layer: nn.Module) -> nn.Module:
        """The layer as standard ops on int8 weight codes that rebuild its eval weight exactly
        (``students.deploy.portable.coded_layer``), for runtimes that know nothing of this project."""
        raise ValueError(f"scheme {self.name!r} has no portable form (int8 codes that rebuild its weight exactly)")

    def int8_module(self, layer: nn.Module, name: str) -> nn.Module:
        """The layer as a real int8 torch.ao module (int8 QAT)."""
        raise ValueError(f"scheme {self.name!r} has no int8 module")

    @property
    def int8_backend(self) -> str | None:
        """The torch.backends.quantized engine ``int8_module`` runs on (None: no int8 module)."""
        return None

    def __str__(self) -> str:
        opts = ", ".join(f"{k}={v}" for k, v in self.options.items())
        return f"scheme={self.name}" + (f", {opts}" if opts else "")


# ---------------------------------------------------------------- option checks the schemes share


def is_number_in(x: Any, lo: float, hi: float) -> bool:
    return isinstance(x, int | float) and not isinstance(x, bool) and lo < x < hi


def check_bools(scheme: Scheme, *names: str) -> None:
    for name in names:
        value = getattr(scheme, name)
        if not isinstance(value, bool):
            raise ValueError(f"option {name!r} must be a bool, got {value!r}")
