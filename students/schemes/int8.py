"""int8 quantization-aware training with torch.ao fake-quant modules, and its real int8 form.

The layer gets the fake-quant submodules ``input_fake_quant``, ``weight_fake_quant`` and
``output_fake_quant`` (their ``.scale`` / ``.zero_point`` buffers are the export state). Their
observers learn ranges in training mode only; eval uses the frozen scales. Its export target
is ``int8_module``: a torch.ao quantized Conv2d / Linear between Quantize and DeQuantize
(``students.convert_int8`` converts a whole model).
"""

from __future__ import annotations

import dataclasses
import warnings
from typing import Any

import torch
import torch.ao.nn.quantized as nnq
from torch import Tensor, nn

from kernels import ste

from .base import Scheme
from .registry import register_scheme

FAKE_QUANTS = ("input_fake_quant", "weight_fake_quant", "output_fake_quant")


def quantize_weight_int8(w: Tensor, scale: Tensor, zero_point: Tensor) -> Tensor:
    """A per-output-channel qint8 tensor of `w` (torch.ao quantized tensors, what nnq layers take).

    torch 2.13 marks quantized-tensor creation as deprecated (pytorch/pytorch#184982) but its
    eager int8 kernels still need them; the warning is silenced here, once, on purpose.
    """
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r"torch\.quantize_per_tensor, torch\.quantize_per_channel")
        return torch.quantize_per_channel(w.detach().float(), scale, zero_point.long(), 0, torch.qint8)


@register_scheme
@dataclasses.dataclass(frozen=True)
class Int8(Scheme):
    backend: str = "x86"

    name = "int8"
    weight_bits = 8
    no_packed_hint = " (use students.convert_int8)"

    def __post_init__(self) -> None:
        engines = [e for e in torch.backends.quantized.supported_engines if e != "none"]
        if self.backend not in engines:
            raise ValueError(f"option 'backend' must be one of {engines}, got {self.backend!r}")

    @property
    def input_bits(self) -> int | None:
        return 8

    @property
    def int8_backend(self) -> str | None:
        return self.backend

    # ---------------------------------------------------------------- state on the layer

    def attach(self, layer: nn.Module) -> None:
        act_fq, weight_fq = ste.int8_fake_quant_factories(self.backend)
        device = layer.weight.device
        layer.input_fake_quant = act_fq().to(device)
        layer.weight_fake_quant = weight_fq().to(device)
        layer.output_fake_quant = act_fq().to(device)
        self.on_train(layer, layer.training)

    def on_train(self, layer: nn.Module, mode: bool) -> None:
        """Observers learn ranges in training mode only; eval uses the frozen scales."""
        for part in FAKE_QUANTS:
            fq = getattr(layer, part)
            if mode:
                fq.enable_observer()
            else:
                fq.disable_observer()

    def on_apply(self, layer: nn.Module) -> None:
        """.to(dtype) / .half() / .bfloat16() reach here: keep the fake-quant state in fp32, the
        only dtype torch.ao's fused fake-quant accepts."""
        for part in FAKE_QUANTS:
            getattr(layer, part).float()

    # ---------------------------------------------------------------- forward

    def quantized_weight(self, layer: nn.Module, deterministic: bool = False) -> Tensor:
        fq, w = layer.weight_fake_quant, layer.weight.float()  # torch.ao fake-quant runs in fp32 only
        if deterministic:  # the frozen scales, without feeding the observer
            return torch.fake_quantize_per_channel_affine(
                w, fq.scale, fq.zero_point, fq.ch_axis, fq.quant_min, fq.quant_max
            )
        return fq(w)

    def forward(self, layer: nn.Module, x: Tensor) -> Tensor:
        """fq_out(op(fq_in(x), fq_w(W)) + b), in fp32 (torch.ao's fake-quant ops take nothing else),
        so it also runs inside bf16 autocast or a bf16 model; the result comes back in x's dtype."""
        bias = layer.bias
        with torch.autocast(x.device.type, enabled=False):
            xq = layer.input_fake_quant(x.float())
            out = layer.op(xq, self.quantized_weight(layer), None if bias is None else bias.float())
            out = layer.output_fake_quant(out)
        return out.to(x.dtype)

    # ---------------------------------------------------------------- export

    def codes_and_scales(self, layer: nn.Module, w: Tensor) -> dict[str, Any]:
        ifq, wfq, ofq = (getattr(layer, part) for part in FAKE_QUANTS)
        return {"codes": quantize_weight_int8(w, wfq.scale, wfq.zero_point).int_repr(),
                "scale": wfq.scale.clone(), "zero_point": wfq.zero_point.clone(),
                "input_scale": ifq.scale.clone(), "input_zero_point": ifq.zero_point.clone(),
                "output_scale": ofq.scale.clone(), "output_zero_point": ofq.zero_point.clone()}  # fmt: skip

    @torch.no_grad()
    def int8_module(self, layer: nn.Module, name: str) -> nn.Module:
        """Sequential(Quantize, nnq.Conv2d / nnq.Linear, DeQuantize) with the learned scales.
        Raises ValueError when an observer has seen no data."""
        for part in FAKE_QUANTS:
            obs = getattr(layer, part).activation_post_process
            if not torch.isfinite(obs.min_val).all():
                raise ValueError(f"convert_int8: {name}.{part} has seen no data; run training-mode batches first")
        wfq = layer.weight_fake_quant
        qweight = quantize_weight_int8(layer.weight.detach().float(), wfq.scale, wfq.zero_point)
        bias = None if layer.bias is None else layer.bias.detach().float()
        if isinstance(layer, nn.Conv2d):
            if layer.padding_mode != "zeros":
                mode = layer.padding_mode
                raise ValueError(f"convert_int8: {name} uses padding_mode={mode!r}; only 'zeros' converts")
            q = nnq.Conv2d(layer.in_channels, layer.out_channels, layer.kernel_size, stride=layer.stride,
                           padding=layer.padding, dilation=layer.dilation, groups=layer.groups,
                           bias=bias is not None)  # fmt: skip
        else:
            q = nnq.Linear(layer.in_features, layer.out_features, bias_=bias is not None)
        q.set_weight_bias(qweight, bias)
        ofq = layer.output_fake_quant
        q.scale = float(ofq.scale)
        q.zero_point = int(ofq.zero_point)
        ifq = layer.input_fake_quant
        quant = nnq.Quantize(float(ifq.scale), int(ifq.zero_point), torch.quint8)
        return nn.Sequential(quant, q, nnq.DeQuantize())
