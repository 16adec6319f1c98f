"""Deployable packed layers: conversion from float, forward vs the spec, BN folding, save/load, export."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from kernels import packed_layers as PL
from kernels import reference

pytestmark = pytest.mark.usefixtures("one_thread")


def ternary_weight(shape, asymmetric=False, seed=0):
    g = torch.Generator().manual_seed(seed)
    codes = torch.randint(-1, 2, shape, generator=g).float()
    view = (shape[0],) + (1,) * (len(shape) - 1)
    wp = (torch.rand(shape[0], generator=g) + 0.5).view(view)
    wn = (torch.rand(shape[0], generator=g) + 0.5).view(view) if asymmetric else wp
    return torch.where(codes > 0, wp, -wn) * codes.abs()


def binary_weight(shape, seed=0):
    g = torch.Generator().manual_seed(seed)
    view = (shape[0],) + (1,) * (len(shape) - 1)
    return torch.where(torch.rand(shape, generator=g) > 0.5, 1.0, -1.0) * (torch.rand(shape[0], generator=g) + 0.5).view(
        view
    )


def close(a, b, tol=1e-5):
    torch.testing.assert_close(a, b, rtol=tol, atol=tol)


@pytest.mark.parametrize("asymmetric", [False, True])
def test_ternary_linear_from_float(asymmetric):
    w, b = ternary_weight((70, 130), asymmetric), torch.randn(70)
    layer = PL.PackedTernaryLinear.from_float(w, b)
    assert layer.asymmetric == asymmetric and (layer.scale_neg is not None) == asymmetric
    close(layer.dequantize(), w, 1e-6)
    x = torch.randn(4, 130)
    close(layer(x), reference.ternary_linear(x, layer.weight_packed, 130, layer.scale_pos, layer.scale_neg, b))
    close(layer(x), x @ w.T + b, 0.05 * float((x @ w.T).abs().max()))  # int8 activations: close to float


@pytest.mark.parametrize("binary_activations", [False, True])
def test_binary_linear_from_float(binary_activations):
    w = binary_weight((20, 77))
    layer = PL.PackedBinaryLinear.from_float(w, None, binary_activations=binary_activations)
    close(layer.dequantize(), w, 1e-6)
    x = torch.randn(3, 77)
    fn = reference.xnor_linear if binary_activations else reference.binary_linear
    close(layer(x), fn(x, layer.weight_packed, 77, layer.scale_pos, None))


@pytest.mark.parametrize("kind", ["ternary", "ternary_ttq", "binary", "xnor"])
def test_conv_from_conv(kind):
    conv = nn.Conv2d(6, 18, 3, stride=2, padding=1)
    with torch.no_grad():
        if kind.startswith("ternary"):
            conv.weight.copy_(ternary_weight(conv.weight.shape, kind == "ternary_ttq"))
        else:
            conv.weight.copy_(binary_weight(conv.weight.shape))
    if kind.startswith("ternary"):
        layer = PL.PackedTernaryConv2d.from_conv(conv)
        assert layer.asymmetric == (kind == "ternary_ttq")
    else:
        layer = PL.PackedBinaryConv2d.from_conv(conv, binary_activations=kind == "xnor")
    close(layer.dequantize(), conv.weight.detach(), 1e-6)
    x = torch.randn(2, 6, 9, 8)
    y = layer(x)
    assert y.shape == conv(x).shape == (2, 18, 5, 4)
    if kind.startswith("ternary"):
        ref = reference.ternary_conv2d(x, layer.weight_packed, 3, layer.scale_pos, layer.scale_neg, layer.bias, 2, 1)
    else:
        ref = reference.binary_conv2d(x, layer.weight_packed, 3, layer.scale_pos, layer.bias, 2, 1, xnor=kind == "xnor")
    close(y, ref)
    if kind != "xnor":  # int8 activations: close to the float convolution
        yf = conv(x).detach()
        close(y, yf, 0.05 * float(yf.abs().max()))


def test_grouped_conv_is_refused():
    with pytest.raises(ValueError, match="groups=1 only"):
        PL.PackedTernaryConv2d.from_conv(nn.Conv2d(8, 8, 3, groups=8))


@pytest.mark.parametrize("with_bias", [False, True])
def test_fold_batchnorm(with_bias):
    conv = nn.Conv2d(4, 10, 3, padding=1, bias=with_bias)
    with torch.no_grad():
        conv.weight.copy_(ternary_weight(conv.weight.shape, asymmetric=True))
    layer = PL.PackedTernaryConv2d.from_conv(conv)
    bn = nn.BatchNorm2d(10).eval()
    with torch.no_grad():
        bn.running_mean.normal_()
        bn.running_var.uniform_(0.5, 2.0)
        bn.weight.normal_()  # some negative gammas
        bn.bias.normal_()
    x = torch.randn(2, 4, 6, 6)
    expected = bn(layer(x)).detach()
    PL.fold_batchnorm(layer, bn)
    assert layer.bias is not None
    close(layer(x), expected, 1e-4)


@pytest.mark.parametrize("act", [nn.ReLU(), nn.ReLU6(), nn.Hardtanh(-1.0, 2.0)])
def test_fuse_activation(tmp_path, act):
    conv = nn.Conv2d(4, 10, 1)
    with torch.no_grad():
        conv.weight.copy_(ternary_weight(conv.weight.shape, asymmetric=True))
    layer = PL.PackedTernaryConv2d.from_conv(conv)
    x = torch.randn(2, 4, 5, 5) * 3
    expected = act(layer(x)).detach()
    PL.fuse_activation(layer, act)
    close(layer(x), expected, 0.0)  # the same float outputs, clamped in the epilogue
    assert "act_min" in repr(layer)
    PL.save_packed(layer, tmp_path / "layer.pt")
    assert torch.equal(PL.load_packed(tmp_path / "layer.pt")(x), layer(x))
    with pytest.raises(ValueError, match="fold BN first"):
        PL.fold_batchnorm(layer, nn.BatchNorm2d(10).eval())
    with pytest.raises(ValueError, match="cannot fuse GELU"):
        PL.fuse_activation(PL.PackedTernaryConv2d.from_conv(conv), nn.GELU())


def test_state_dict_and_bytes():
    layer = PL.PackedTernaryLinear.from_float(ternary_weight((1024, 1024)))
    fresh = PL.PackedTernaryLinear(1024, 1024, bias=False)
    fresh.load_state_dict(layer.state_dict())
    assert torch.equal(fresh.weight_packed, layer.weight_packed)
    assert layer.packed_bytes() == 1024 * 1024 // 4 + 1024 * 4  # 2 bits a weight + one fp32 scale a row


def test_save_load_single_layer(tmp_path):
    layer = PL.PackedBinaryConv2d.from_conv(_binary_conv(), binary_activations=True, act_scale=False)
    PL.save_packed(layer, tmp_path / "layer.pt")
    loaded = PL.load_packed(tmp_path / "layer.pt")
    assert isinstance(loaded, PL.PackedBinaryConv2d) and loaded.binary_activations and not loaded.act_scale
    x = torch.randn(1, 3, 7, 7)
    assert torch.equal(loaded(x), layer(x))


def _binary_conv():
    conv = nn.Conv2d(3, 8, 3)
    with torch.no_grad():
        conv.weight.copy_(binary_weight(conv.weight.shape))
    return conv


def _skeleton(arch):
    return nn.Sequential(nn.Identity(), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 25, arch["hidden"]), nn.Identity())


def _model():
    head = PL.PackedTernaryLinear.from_float(ternary_weight((10, 32), asymmetric=True), torch.randn(10))
    return nn.Sequential(PL.PackedBinaryConv2d.from_conv(_binary_conv()), nn.ReLU(), nn.Flatten(),
                         nn.Linear(8 * 25, 32), head).eval()  # fmt: skip


def test_save_load_model(tmp_path):
    model = _model()
    PL.save_packed(model, tmp_path / "model.pt", arch={"hidden": 32})
    loaded = PL.load_packed(tmp_path / "model.pt", build=_skeleton)
    x = torch.randn(2, 3, 7, 7)
    assert torch.equal(loaded(x), model(x))
    with pytest.raises(ValueError, match="pass build="):
        PL.load_packed(tmp_path / "model.pt")
    torch.save({"something": 1}, tmp_path / "other.pt")
    with pytest.raises(ValueError, match="not a packed model file"):
        PL.load_packed(tmp_path / "other.pt")


def test_torch_export_with_dynamic_batch(tmp_path):
    model = _model()
    x = torch.randn(2, 3, 7, 7)
    ep = torch.export.export(model, (x,), dynamic_shapes=({0: torch.export.Dim("batch", max=64)},))
    targets = {str(n.target) for n in ep.graph.nodes}
    assert "distill.binary_linear.default" in targets and "distill.ternary_linear.default" in targets
    torch.export.save(ep, tmp_path / "model.pt2")
    loaded = torch.export.load(tmp_path / "model.pt2").module()
    x5 = torch.randn(5, 3, 7, 7)
    assert torch.equal(loaded(x5), model(x5))


def test_torch_compile_traces_without_graph_breaks():
    model = _model()
    compiled = torch.compile(model, backend="aot_eager", fullgraph=True, dynamic=False)
    x = torch.randn(2, 3, 7, 7)
    with torch.no_grad():
        assert torch.equal(compiled(x), model(x))


@pytest.mark.parametrize("scheme", ["xnor", "binary-connect", "twn", "ttq"])
def test_matches_the_training_layers_eval_forward(scheme):
    """A packed layer built from a students.qlayers layer's quantized weight computes what that
    layer computes in eval: exactly for XNOR (binary activations, padding as -1, K scaling), and
    up to int8 activation rounding for the schemes that keep fp activations in training."""
    qlayers = pytest.importorskip("students.qlayers")
    torch.manual_seed(0)
    q = qlayers.QConv2d(8, 16, 3, padding=1, scheme=scheme).eval()
    with torch.no_grad():
        q.bias.normal_()
    if scheme in ("xnor", "binary-connect"):
        packed = PL.PackedBinaryConv2d.from_conv(q, q.quantized_weight(), binary_activations=scheme == "xnor")
    else:
        packed = PL.PackedTernaryConv2d.from_conv(q, q.quantized_weight())
        assert packed.asymmetric == (scheme == "ttq")
    x = torch.randn(2, 8, 9, 9).relu()  # exact zeros: sgn(0) = -1 on both sides
    with torch.no_grad():
        expected, got = q(x), packed(x)
    close(got, expected, 1e-5 if scheme == "xnor" else 0.01 * float(expected.abs().max()))
