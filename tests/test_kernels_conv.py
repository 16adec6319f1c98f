"""The kernels at the shapes CNN students have: large-M GEMMs (1x1 convs: one row per pixel,
the row-panel path) and the depthwise 3x3 kernel, bit for bit against kernels/reference.py on
every instruction set this CPU has; the direct (ctypes) eager path against the ops."""

from __future__ import annotations

import math
import struct
from fractions import Fraction

import pytest
import test_kernels
import torch
import torch.nn.functional as F
from torch import nn

from kernels import ops, packing, reference
from kernels.packed_layers import PackedBinaryConv2d, PackedDepthwiseConv2d, PackedTernaryConv2d, load_packed, save_packed

isa = test_kernels.isa  # the fixture: every instruction set this CPU has, then back to the best

pytestmark = pytest.mark.usefixtures("one_thread")


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# (M, K, N): many rows (panels of rows, a last partial panel), K and N off the block sizes,
# narrow layers (1 or 2 output blocks: the 8-row path), one K above the panel limit.
GEMMS = [(1024, 16, 96), (100, 8, 48), (257, 33, 17), (77, 24, 16), (45, 96, 32), (64, 576, 35), (40, 3000, 20)]


@pytest.mark.parametrize("m,k,n", GEMMS)
@pytest.mark.parametrize("threads", [1, 2])
def test_large_m_gemms_match_reference(isa, m, k, n, threads):
    g = _gen(m + k + n)
    x = torch.randn(m, k, generator=g)
    sp, sn, bias = torch.rand(n, generator=g) + 0.5, torch.rand(n, generator=g) + 0.5, torch.randn(n, generator=g)
    tern = packing.pack_ternary(torch.randint(-1, 2, (n, k), generator=g))
    binw = packing.pack_binary(torch.randint(0, 2, (n, k), generator=g) * 2 - 1)
    torch.set_num_threads(threads)
    for neg in (None, sn):
        for lo, hi in ((None, None), (0.0, 6.0)):
            assert torch.equal(ops.ternary_linear(x, tern, k, sp, neg, bias, lo, hi),
                               reference.ternary_linear(x, tern, k, sp, neg, bias, lo, hi))  # fmt: skip
    assert torch.equal(ops.binary_linear(x, binw, k, sp, bias), reference.binary_linear(x, binw, k, sp, bias))
    assert torch.equal(ops.xnor_linear(x.relu(), binw, k, sp, bias), reference.xnor_linear(x.relu(), binw, k, sp, bias))
    q, _ = reference.quantize_rows_int8(x)
    assert torch.equal(ops.ternary_mm_int(q, tern, n), reference.ternary_mm_int(q, tern, n))


# (B, C, H, W, stride, padding): channel tails of every vector width, images smaller than the
# window's interior, odd sizes at stride 2, batch > 1, an interior of column blocks and a remainder.
DEPTHWISE = [
    (1, 16, 32, 32, 1, 1), (2, 37, 9, 7, 2, 1), (1, 5, 3, 3, 1, 0), (1, 20, 1, 1, 1, 1), (1, 19, 2, 5, 2, 1),
    (1, 96, 17, 16, 2, 0), (3, 8, 4, 4, 1, 1), (1, 33, 8, 8, 2, 1), (1, 21, 5, 11, 1, 1),
]  # fmt: skip


@pytest.mark.parametrize("b,c,h,w,s,p", DEPTHWISE)
def test_depthwise_matches_reference(isa, b, c, h, w, s, p):
    g = _gen(c * h + w)
    x, wt, bias = torch.randn(b, c, h, w, generator=g), torch.randn(3, 3, c, generator=g), torch.randn(c, generator=g)
    for bv in (None, bias):
        for lo, hi in ((None, None), (0.0, 6.0), (0.0, None)):
            y = ops.depthwise_conv2d(x, wt, bv, s, p, lo, hi)
            assert y.is_contiguous(memory_format=torch.channels_last)
            assert torch.equal(y, reference.depthwise3x3(x, wt, bv, s, p, lo, hi))
    # the spec is a depthwise conv (to float rounding: a fused multiply-add per tap, a fixed order)
    conv = F.conv2d(x, wt.permute(2, 0, 1).unsqueeze(1), bias, s, p, groups=c)
    torch.testing.assert_close(reference.depthwise3x3(x, wt, bias, s, p), conv, rtol=1e-5, atol=1e-5)


def _f32_nearest(q: Fraction) -> float:
    """The float32 nearest to the rational q, ties to even: the oracle of an exact rounding."""
    r = torch.tensor(float(q), dtype=torch.float64).float()
    near = [r, torch.nextafter(r, torch.tensor(math.inf)), torch.nextafter(r, torch.tensor(-math.inf))]
    dist = [abs(Fraction(float(v)) - q) for v in near]
    best = [v for v, dv in zip(near, dist, strict=True) if dv == min(dist)]
    even = [v for v in best if not struct.unpack("<I", struct.pack("<f", float(v)))[0] & 1]
    return float((even or best)[0])


def test_fma32_rounds_once():
    """reference.fma32 is a * b + c rounded once, checked against exact rationals: on random
    triples over 60 binades, and on products that fall on a midpoint between two floats, where
    rounding the float64 sum a second time (what a plain float64 evaluation does) goes wrong."""
    g = _gen(3)
    n = 3000
    a = torch.randn(n, generator=g) * torch.exp2(torch.randint(-30, 30, (n,), generator=g).float())
    b = torch.randn(n, generator=g)
    c = torch.randn(n, generator=g) * torch.exp2(torch.randint(-60, 30, (n,), generator=g).float())
    # (1 + 2^-12)^2 = 1 + 2^-11 + 2^-24: a midpoint; c nudges the exact sum off it by less than
    # a float64 can hold next to 1, so the sum in float64 is the midpoint itself
    m = torch.tensor([1 + 2**-12, -(1 + 2**-12), 1 + 3 * 2**-12, 1 + 2**-12])
    cm = torch.tensor([2.0**-80, -(2.0**-80), -(2.0**-90), -(2.0**-100)])
    a, b, c = torch.cat([a, m]), torch.cat([b, m.abs()]), torch.cat([c, cm])
    got = reference.fma32(a, b, c)
    want = torch.tensor([_f32_nearest(Fraction(float(x)) * Fraction(float(y)) + Fraction(float(z)))
                         for x, y, z in zip(a.tolist(), b.tolist(), c.tolist(), strict=True)])
    assert torch.equal(got, want)
    twice = (a.double() * b.double() + c.double()).float()
    assert not torch.equal(twice[-4:], want[-4:])  # the midpoint cases do catch a double rounding
    # a multiply and an add rounded apart differ from it on random data
    assert (a * b + c != want).any()


def test_depthwise_two_threads_and_nan(isa):
    x, wt, bias = torch.randn(2, 24, 20, 20), torch.randn(3, 3, 24), torch.randn(24)
    bias[3] = float("nan")
    torch.set_num_threads(2)
    y = ops.depthwise_conv2d(x, wt, bias, 1, 1, 0.0, 6.0)
    torch.testing.assert_close(y, reference.depthwise3x3(x, wt, bias, 1, 1, 0.0, 6.0), rtol=0, atol=0, equal_nan=True)
    assert torch.isnan(y[:, 3]).all()


def test_depthwise_bad_arguments():
    x = torch.randn(1, 8, 5, 5)
    with pytest.raises(ValueError, match="weight must be \\[3, 3, 8\\]"):
        ops.depthwise_conv2d(x, torch.randn(8, 1, 3, 3))
    with pytest.raises(ValueError, match="stride 1/2, padding 0/1"):
        ops.depthwise_conv2d(x, torch.randn(3, 3, 8), None, 3, 1)


def test_depthwise_opcheck():
    x, wt, bias = torch.randn(2, 12, 6, 5), torch.randn(3, 3, 12), torch.randn(12)
    for args in ((x, wt, bias, 1, 1, 0.0, 6.0), (x, wt, None, 2, 0, None, None)):
        torch.library.opcheck(ops.depthwise_conv2d, args)


def _check_depthwise_layer(layer, conv, bn, x, tmp_path) -> None:
    """The layer (ReLU6 fused) computes relu6(bn(conv(x))); the direct path, the op on the stored weight
    and the spec give the same bits; a saved file loads back to them."""
    layer.act_min, layer.act_max = 0.0, 6.0
    with torch.no_grad():
        got = layer(x)
        torch.testing.assert_close(got, F.relu6(bn(conv(x))), rtol=1e-5, atol=1e-5)
        w, scale = layer.kernel_weight()
        stride = layer.stride
        assert torch.equal(ops.depthwise_conv2d(x, w, layer.bias, stride, 1, 0.0, 6.0, scale), got)
        layer.use_reference = True
        assert torch.equal(layer(x), got)
        layer.use_reference = False
    save_packed(layer, tmp_path / "dw.pt")
    assert torch.equal(load_packed(tmp_path / "dw.pt")(x), got)


def _bn(c: int) -> nn.BatchNorm2d:
    bn = nn.BatchNorm2d(c)
    with torch.no_grad():
        bn.running_mean.uniform_(-1, 1), bn.running_var.uniform_(0.5, 2), bn.weight.uniform_(-2, 2)
    return bn.eval()


def test_depthwise_layer_folds_bn_fuses_relu6_and_round_trips(tmp_path):
    conv, bn = nn.Conv2d(16, 16, 3, 2, 1, groups=16, bias=False), _bn(16)
    assert PackedDepthwiseConv2d.supports(conv) and not PackedDepthwiseConv2d.supports(nn.Conv2d(16, 16, 3, groups=8))
    layer = PackedDepthwiseConv2d.from_conv(conv, bn)
    assert not layer.ternary
    _check_depthwise_layer(layer, conv, bn, torch.randn(2, 16, 11, 11).contiguous(memory_format=torch.channels_last),
                           tmp_path)  # fmt: skip


def test_ternary_depthwise_ships_codes_and_computes_the_same(tmp_path):
    """A TWN depthwise conv (weights code x one value per channel), BN folded, is stored as 2-bit codes
    and a scale per channel: under a quarter of the float bytes, the same output bits as its float form."""
    conv, bn, g = nn.Conv2d(24, 24, 3, 1, 1, groups=24, bias=False), _bn(24), _gen(3)
    with torch.no_grad():
        codes = torch.randint(-1, 2, (24, 1, 3, 3), generator=g).float()
        conv.weight.copy_(codes * (torch.rand(24, 1, 1, 1, generator=g) + 0.1))
    layer = PackedDepthwiseConv2d.from_conv(conv, bn)
    assert layer.ternary and layer.weight_codes.dtype == torch.uint8 and not hasattr(layer, "weight")
    stored = sum(b.numel() * b.element_size() for n, b in layer.named_buffers() if n.startswith("weight"))
    assert stored < 3 * 3 * 24 * 4 / 4
    x = torch.randn(2, 24, 9, 7).contiguous(memory_format=torch.channels_last)
    _check_depthwise_layer(layer, conv, bn, x, tmp_path)
    with torch.no_grad():
        assert torch.equal(ops.depthwise_conv2d(x, layer.float_weight(), layer.bias, 1, 1, 0.0, 6.0), layer(x))
    conv.weight.data[0, 0, 0, 0] += 1e-3  # no longer one value per channel: the float form
    assert not PackedDepthwiseConv2d.from_conv(conv, bn).ternary
    w, scale = layer.kernel_weight()
    with pytest.raises(ValueError, match="ternary depthwise"):
        ops.depthwise_conv2d(x, w, layer.bias, 1, 1, 0.0, 6.0, scale[:5])


def test_direct_pointwise_path_equals_the_op():
    """A 1x1 packed conv on a channels-last input skips the dispatcher; same bits as the op and
    the spec, and an NCHW input (no direct path) too."""
    conv = nn.Conv2d(24, 40, 1)
    codes = torch.randint(-1, 2, conv.weight.shape).float() * 0.3
    layer = PackedTernaryConv2d.from_conv(conv, codes).eval()
    layer.act_min, layer.act_max = 0.0, 6.0
    x = torch.randn(2, 24, 9, 7)
    xc = x.contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        assert ops.direct(xc)
        got = layer(xc)
        want = reference.ternary_conv2d(x, layer.weight_packed, 1, layer.scale_pos, None, layer.bias,
                                        act_min=0.0, act_max=6.0)  # fmt: skip
        assert torch.equal(got, want) and torch.equal(layer(x), want)
    assert not ops.direct(torch.randn(2, 3, requires_grad=True))


def _block(cin: int, cmid: int, cout: int, stride: int, expand: bool, ttq: bool, g: torch.Generator,
           xnor: str | None = None):
    """A zoo-like inverted residual (conv Sequential of conv-bn-act stages, as export leaves them); its
    1x1s ternary (TTQ: two scales), or with ``xnor`` "beta" / "unit" XNOR convs with or without beta."""

    def pointwise(k, n, act):
        conv = nn.Conv2d(k, n, 1)
        codes = torch.randint(-1, 2, (n, k, 1, 1), generator=g).float()
        pos, neg = torch.rand(n, 1, 1, 1, generator=g) + 0.5, torch.rand(n, 1, 1, 1, generator=g) + 0.5
        if xnor:
            w = torch.where(codes > 0, pos, -pos)
            layer = PackedBinaryConv2d.from_conv(conv, w, binary_activations=True, act_scale=xnor == "beta")
            if act:
                layer.act_min, layer.act_max = 0.0, 6.0
            return nn.Sequential(layer, nn.Identity(), nn.Identity())
        w = torch.where(codes > 0, pos, neg if ttq else pos) * codes
        layer = PackedTernaryConv2d.from_conv(conv, w)
        if act:
            layer.act_min, layer.act_max = 0.0, 6.0
        return nn.Sequential(layer, nn.Identity(), nn.Identity())

    dw = PackedDepthwiseConv2d(cmid, stride, 1)
    with torch.no_grad():
        dw.weight.copy_(torch.randn(3, 3, cmid, generator=g)), dw.bias.copy_(torch.randn(cmid, generator=g))
    dw.act_min, dw.act_max = 0.0, 6.0
    stages = ([pointwise(cin, cmid, True)] if expand else []) + [nn.Sequential(dw, nn.Identity()),
                                                                 pointwise(cmid, cout, False)]  # fmt: skip
    return nn.Sequential(*stages)


# (C_in, C_mid, C_out, stride, H, W, expand, residual, ttq)
BLOCKS = [
    (16, 96, 16, 1, 9, 8, True, True, False), (8, 48, 24, 2, 11, 7, True, False, True),
    (16, 16, 8, 1, 6, 6, False, False, False), (24, 144, 24, 1, 1, 1, True, True, False),
    (40, 240, 48, 2, 2, 3, True, False, False),
    # big enough for two threads (over 256k multiply-adds): one band per thread on small maps ...
    (48, 288, 48, 1, 8, 8, True, True, False), (64, 384, 64, 2, 12, 12, True, False, True),
    # ... and bands of at least 16 output rows
    (16, 96, 16, 1, 40, 12, True, True, False), (32, 32, 24, 1, 36, 10, False, False, False),
]  # fmt: skip


# XNOR blocks (the XNOR student's, whose depthwise convs stay float): K off the 32-input tile,
# without expansion, two threads, and beta off.
XNOR_BLOCKS = [
    (16, 96, 16, 1, 9, 8, True, True, "beta"), (8, 40, 24, 2, 11, 7, True, False, "beta"),
    (24, 24, 16, 1, 6, 6, False, False, "unit"), (48, 288, 48, 1, 8, 8, True, True, "beta"),
    (16, 96, 16, 1, 40, 12, True, True, "unit"),
]  # fmt: skip


@pytest.mark.parametrize("cin,cmid,cout,s,h,w,expand,residual,ttq", BLOCKS + XNOR_BLOCKS)
@pytest.mark.parametrize("threads", [1, 2])
def test_fused_block_equals_its_layers(isa, cin, cmid, cout, s, h, w, expand, residual, ttq, threads):
    from kernels.packed_layers import PackedInvertedResidual

    g = _gen(cin + cmid + h)
    xnor = ttq if isinstance(ttq, str) else None
    conv = _block(cin, cmid, cout, s, expand, ttq is True, g, xnor)
    assert PackedInvertedResidual.fusable(conv)
    block = PackedInvertedResidual(conv, residual)
    x = torch.randn(2, cin, h, w, generator=g).contiguous(memory_format=torch.channels_last)
    torch.set_num_threads(threads)
    with torch.no_grad():
        out = conv(x)
        want = x + out if residual else out
        assert torch.equal(block(x), want)  # the direct C call
        e, d, p = block.layers()
        layers = [e, d, p] if e is not None else [d, p]
        for m in layers:
            m.use_reference = True
        assert torch.equal(block(x), want)  # the spec, layer by layer
        for m in layers:
            m.use_reference = False
        assert torch.equal(block(x.contiguous()), want)  # NCHW input: the op


@pytest.mark.parametrize("xnor", [None, "beta"])
def test_fused_block_op_and_export(xnor):
    from kernels.packed_layers import PackedInvertedResidual, _pointwise_args

    g = _gen(3)
    block = PackedInvertedResidual(_block(16, 64, 16, 1, True, False, g, xnor), True)
    x = torch.randn(1, 16, 5, 5, generator=g)
    e, d, p = block.layers()
    e, p = _pointwise_args(e), _pointwise_args(p)
    assert p[8] == (ops.PW_XNOR if xnor else ops.PW_TERNARY)
    args = (x, e[0], e[3], e[4], e[5], e[6], e[7], d.weight, d.bias, d.stride, d.act_min, d.act_max,
            p[0], p[3], p[4], p[5], p[6], p[7], True, None, p[8])  # fmt: skip
    torch.library.opcheck(ops.inverted_residual, args)
    ep = torch.export.export(block, (x,))
    assert "distill.inverted_residual" in str(ep.graph)
    with torch.no_grad():
        assert torch.equal(ep.module()(x), block(x))


# (B, C_in, C_out, H, W, stride, padding): the stems (3 -> 32 / 16), one input channel, a
# vector tail of C_out, images narrower than the 4-column steps.
STEMS = [(1, 3, 32, 20, 18, 2, 1), (2, 3, 16, 9, 7, 1, 1), (1, 1, 5, 3, 3, 1, 0), (1, 4, 33, 1, 1, 1, 1),
         (1, 3, 17, 6, 5, 2, 0), (1, 3, 24, 5, 40, 1, 1)]  # fmt: skip


@pytest.mark.parametrize("b,c,o,h,w,s,p", STEMS)
def test_stem_conv_matches_reference(isa, b, c, o, h, w, s, p):
    g = _gen(c * o + h)
    x, wt, bias = torch.randn(b, c, h, w, generator=g), torch.randn(3, 3, c, o, generator=g), torch.randn(o, generator=g)
    for xx in (x, x.contiguous(memory_format=torch.channels_last)):  # read through strides: either layout
        for lo, hi in ((None, None), (0.0, 6.0)):
            assert torch.equal(ops.conv3x3(xx, wt, bias, s, p, lo, hi), reference.conv3x3(x, wt, bias, s, p, lo, hi))
    conv = F.conv2d(x, wt.permute(3, 2, 0, 1), bias, s, p)
    torch.testing.assert_close(reference.conv3x3(x, wt, bias, s, p), conv, rtol=1e-5, atol=1e-5)


def test_stem_layer_and_opcheck(tmp_path):
    from kernels.packed_layers import PackedConv3x3

    conv, bn = nn.Conv2d(3, 16, 3, 2, 1, bias=False), nn.BatchNorm2d(16).eval()
    with torch.no_grad():
        bn.running_mean.uniform_(-1, 1), bn.running_var.uniform_(0.5, 2)
    assert PackedConv3x3.supports(conv) and not PackedConv3x3.supports(nn.Conv2d(16, 16, 3))
    layer = PackedConv3x3.from_conv(conv, bn).to(memory_format=torch.channels_last)  # as export does
    x = torch.randn(2, 3, 15, 15)
    with torch.no_grad():
        got = layer(x)
        torch.testing.assert_close(got, bn(conv(x)), rtol=1e-5, atol=1e-5)
        layer.use_reference = True
        assert torch.equal(layer(x), got)
    save_packed(layer, tmp_path / "stem.pt")
    assert torch.equal(load_packed(tmp_path / "stem.pt")(x), got)
    torch.library.opcheck(ops.conv3x3, (x, layer.weight, layer.bias, 2, 1, 0.0, 6.0))
