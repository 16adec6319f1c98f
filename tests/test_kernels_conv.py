"""The kernels at the shapes CNN students have: large-M GEMMs (1x1 convs: one row per pixel,
the row-panel path) and the depthwise 3x3 kernel, bit for bit against kernels/reference.py on
every instruction set this CPU has; the direct (ctypes) eager path against the ops."""

from __future__ import annotations

import pytest
import test_kernels
import torch
import torch.nn.functional as F
from torch import nn

from kernels import ops, packing, reference
from kernels.packed_layers import PackedDepthwiseConv2d, PackedTernaryConv2d, load_packed, save_packed

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
# window's interior, odd sizes at stride 2, batch > 1.
DEPTHWISE = [
    (1, 16, 32, 32, 1, 1), (2, 37, 9, 7, 2, 1), (1, 5, 3, 3, 1, 0), (1, 20, 1, 1, 1, 1), (1, 19, 2, 5, 2, 1),
    (1, 96, 17, 16, 2, 0), (3, 8, 4, 4, 1, 1), (1, 33, 8, 8, 2, 1),
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
    # the spec is a depthwise conv (to float rounding: no FMA, a fixed order of the taps)
    conv = F.conv2d(x, wt.permute(2, 0, 1).unsqueeze(1), bias, s, p, groups=c)
    torch.testing.assert_close(reference.depthwise3x3(x, wt, bias, s, p), conv, rtol=1e-5, atol=1e-5)


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


def test_depthwise_layer_folds_bn_fuses_relu6_and_round_trips(tmp_path):
    conv, bn = nn.Conv2d(16, 16, 3, 2, 1, groups=16, bias=False), nn.BatchNorm2d(16)
    with torch.no_grad():
        bn.running_mean.uniform_(-1, 1), bn.running_var.uniform_(0.5, 2), bn.weight.uniform_(0.5, 2)
    bn.eval()
    assert PackedDepthwiseConv2d.supports(conv) and not PackedDepthwiseConv2d.supports(nn.Conv2d(16, 16, 3, groups=8))
    layer = PackedDepthwiseConv2d.from_conv(conv, bn)
    layer.act_min, layer.act_max = 0.0, 6.0
    x = torch.randn(2, 16, 11, 11).contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        want = F.relu6(bn(conv(x)))
        got = layer(x)
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
        layer.use_reference = True
        assert torch.equal(layer(x), got)  # the direct path, the op and the spec: the same bits
        layer.use_reference = False
        assert torch.equal(ops.depthwise_conv2d(x, layer.weight, layer.bias, 2, 1, 0.0, 6.0), got)
    save_packed(layer, tmp_path / "dw.pt")
    assert torch.equal(load_packed(tmp_path / "dw.pt")(x), got)


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
