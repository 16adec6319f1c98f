"""Packed ternary/binary kernels against their plain-torch spec (kernels/reference.py).

Integer results must match exactly; float results to fp32 rounding. Every
instruction set the CPU has is tested (scalar, AVX2, AVX-VNNI, AVX-512).
"""

from __future__ import annotations

import os
import platform

import pytest
import torch
import torch.nn.functional as F

from kernels import _cpu, ops, packing, reference

# (M, K, N): M=1, K and N off every block size, K < one tile, a tail of 1.
SHAPES = [
    (1, 1, 1),
    (1, 100, 7),
    (2, 33, 17),
    (3, 300, 33),
    (5, 64, 16),
    (9, 257, 70),
    (1, 1000, 40),
    (0, 20, 5),
]

ON_ARM = platform.machine() in ("aarch64", "arm64")  # NEON paths; also checked under qemu on x86 (test_arm.py)
ISAS = ["scalar", "neon", "neondot"] if ON_ARM else ["scalar", "avx2", "avxvnni", "avx512"]


pytestmark = pytest.mark.usefixtures("one_thread")


def cpp_or_skip() -> None:
    if _cpu.backend() != "cpp":
        pytest.skip("compiled kernels not in use (no compiler, or DISTILL_KERNELS_BACKEND=torch)")


@pytest.fixture(params=ISAS)
def isa(request):
    cpp_or_skip()
    if request.param not in _cpu.supported_isas():
        pytest.skip(f"this CPU (or compiler) has no {request.param}")
    _cpu.set_isa(request.param)
    yield request.param
    _cpu.set_isa(None)


def close(a: torch.Tensor, b: torch.Tensor) -> None:
    torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


# ---------------------------------------------------------------- build policy


def test_compiled_path_is_used_when_a_compiler_exists():
    """A broken build must fail here, not fall back to the reference silently."""
    if os.environ.get("DISTILL_KERNELS_BACKEND", "").lower() == "torch":
        pytest.skip("DISTILL_KERNELS_BACKEND=torch forces the reference")
    if not _cpu.compiler_available():
        pytest.skip("no C++ compiler on this machine")
    assert _cpu.backend() == "cpp"
    assert _cpu.isa() in _cpu.supported_isas()
    assert "scalar" in _cpu.supported_isas()


def test_fallback_without_compiler_warns_and_matches_reference(monkeypatch):
    monkeypatch.setattr(_cpu, "_backend", None)
    monkeypatch.delenv("DISTILL_KERNELS_BACKEND", raising=False)
    monkeypatch.setattr(_cpu, "compiler_available", lambda: False)
    with pytest.warns(RuntimeWarning, match="no C\\+\\+ compiler"):
        assert _cpu.backend() == "torch"
    x = torch.randn(3, 40)
    w = packing.pack_ternary(torch.randint(-1, 2, (9, 40)))
    s = torch.rand(9)
    assert torch.equal(ops.ternary_linear(x, w, 40, s), reference.ternary_linear(x, w, 40, s))


# ---------------------------------------------------------------- packing


@pytest.mark.parametrize("n,k", [(1, 1), (17, 33), (16, 16), (5, 100), (32, 64), (0, 3)])
def test_pack_round_trips(n, k):
    t = torch.randint(-1, 2, (n, k))
    p = packing.pack_ternary(t)
    assert p.shape == packing.ternary_packed_shape(n, k) and p.dtype == torch.uint8
    assert torch.equal(packing.unpack_ternary(p, n, k), t.to(torch.int8))
    b = torch.randint(0, 2, (n, k)) * 2 - 1
    p = packing.pack_binary(b)
    assert p.shape == packing.binary_packed_shape(n, k)
    assert torch.equal(packing.unpack_binary(p, n, k), b.to(torch.int8))
    x = torch.randn(n, k).relu()  # zeros are -1 (sgn(x) = +1 if x > 0 else -1, as kernels.ste.sgn)
    assert torch.equal(packing.unpack_signs(packing.pack_signs(x), k), torch.where(x > 0, 1, -1).to(torch.int8))


def test_packed_bit_positions_follow_the_spec():
    # ternary: w[16nb + l, 16kb + 4s + j] sits in bits 2s..2s+1 of byte 4l + j of tile (nb, kb)
    w = torch.zeros(20, 40, dtype=torch.int64)
    w[16 + 3, 16 * 2 + 4 * 1 + 2] = -1  # nb=1, l=3, kb=2, s=1, j=2
    p = packing.pack_ternary(w)
    assert int(p[1, 2, 4 * 3 + 2]) == 0x55 & ~(0b11 << 2)  # code 0 in bits 2..3, code 1 elsewhere
    assert int(p[0, 0, 0]) == 0x55
    # binary: bit s of byte 4l + j of tile (nb, kb) is w[16nb + l, 32kb + 4s + j] == +1
    b = -torch.ones(16, 64, dtype=torch.int64)
    b[5, 32 + 4 * 6 + 1] = 1  # l=5, kb=1, s=6, j=1
    p = packing.pack_binary(b)
    assert int(p[0, 1, 4 * 5 + 1]) == 1 << 6 and int(p.sum()) == 1 << 6
    # activation signs: bit 8j + s of word kb <- x[32kb + 4s + j] > 0
    x = torch.zeros(1, 64)
    x[0, 32 + 4 * 3 + 2] = 0.5  # kb=1, s=3, j=2
    word = int.from_bytes(bytes(packing.pack_signs(x)[0, 4:8].tolist()), "little")
    assert word == 1 << (8 * 2 + 3)


def test_pack_rejects_values_outside_the_alphabet():
    with pytest.raises(ValueError, match="-1, 0 or \\+1"):
        packing.pack_ternary(torch.tensor([[0.5, 1.0]]))
    with pytest.raises(ValueError, match="-1, 0 or \\+1"):
        packing.pack_ternary(torch.tensor([[2, 1]]))
    with pytest.raises(ValueError, match="-1 or \\+1"):
        packing.pack_binary(torch.tensor([[0, 1]]))
    with pytest.raises(ValueError, match="expected uint8"):
        packing.unpack_ternary(torch.zeros(1, 1, 64, dtype=torch.uint8), 1, 17)


def test_float_decomposition():
    codes = torch.randint(-1, 2, (6, 30))
    wp, wn = torch.rand(6) + 0.5, torch.rand(6) + 0.5
    w = torch.where(codes > 0, wp[:, None], -wn[:, None]) * codes.abs()
    c, sp, sn = packing.ternary_from_float(w)
    assert torch.equal(c, codes.to(torch.int8)) and torch.allclose(sp, wp) and torch.allclose(sn, wn)
    c, sp, sn = packing.ternary_from_float(codes * wp[:, None])  # TWN: one magnitude per row
    assert sn is None and torch.allclose(sp, wp)
    signs, scale = packing.binary_from_float(torch.where(codes > 0, 1.0, -1.0) * wp[:, None])
    assert torch.equal(signs, torch.where(codes > 0, 1, -1).to(torch.int8)) and torch.allclose(scale, wp)
    with pytest.raises(ValueError, match="single magnitude"):
        packing.ternary_from_float(torch.tensor([[0.5, 0.7, 0.0]]))
    with pytest.raises(ValueError, match="not binary"):
        packing.binary_from_float(torch.tensor([[0.5, 0.0, -0.5]]))


# ---------------------------------------------------------------- activations


def test_quantize_rows_rounds_half_to_even(isa):
    x = torch.tensor([[127.0, 2.5, 3.5, -2.5, 0.5, -127.0, 1.5], [0.0] * 7])
    for q, s in (ops.quantize_rows_int8(x), reference.quantize_rows_int8(x)):
        assert q.tolist() == [[127, 2, 4, -2, 0, -127, 2], [0] * 7]
        assert s.tolist() == [1.0, 0.0]


@pytest.mark.parametrize("m,k", [(1, 1), (3, 31), (4, 32), (2, 100), (5, 1000)])
def test_quantize_and_binarize_match_reference(isa, m, k):
    x = (torch.randn(m, k) * 3).relu() - 1.0  # exact zeros (sgn 0 = -1) and negatives
    x[:, ::3] = 0.0
    q, s = ops.quantize_rows_int8(x)
    qr, sr = reference.quantize_rows_int8(x)
    assert torch.equal(q, qr) and torch.equal(s, sr)
    bits, beta = ops.binarize_rows(x)
    bits_r, beta_r = reference.binarize_rows(x)
    assert torch.equal(bits, bits_r)
    assert torch.equal(beta, beta_r)  # the exact sum: same float whatever the summation order


def test_binarize_beta_is_exact_at_ties_extremes_and_nan(isa):
    """The kernels sum beta in integers (|x| scaled by a power of two and rounded half to even) where
    a float can hold the scale, else in doubles: rows at rounding ties, of subnormal, huge and
    infinite absmax, with a NaN, and over 9 decades, against the spec's double sums."""
    g = torch.Generator().manual_seed(3)
    tie = 2.0**-28  # the grid of a row whose absmax is in [1, 2): 1.5 and 2.5 grid steps are ties
    rows = [torch.tensor([1.0, 1.5 * tie, 2.5 * tie, -3.5 * tie, 0.5 * tie] + [0.0] * 40),
            torch.randn(45, generator=g) * 1e-39, torch.randn(45, generator=g) * 1e37,
            torch.randn(45, generator=g) * 3e38, torch.randn(45, generator=g) * 1e-30,
            torch.randn(45, generator=g) * torch.logspace(-6, 3, 45)]
    x = torch.stack(rows)
    x[3, 7] = float("inf")
    nan_row = torch.randn(1, 45, generator=g)
    nan_row[0, 40] = float("nan")
    bits, beta = ops.binarize_rows(x)
    bits_r, beta_r = reference.binarize_rows(x)
    assert torch.equal(bits, bits_r) and torch.equal(beta, beta_r)
    assert beta[0] == reference.row_abs_mean(x[:1])[0] and beta[1] > 0  # a subnormal row's beta is not lost
    assert torch.isnan(ops.binarize_rows(nan_row)[1]).all() == torch.isnan(reference.binarize_rows(nan_row)[1]).all()
    # 16 rows at a time: every kind of row among ordinary ones, in a batch of 40
    many = torch.cat([torch.randn(12, 45, generator=g), x, nan_row, torch.randn(21, 45, generator=g)])
    (bits, beta), (bits_r, beta_r) = ops.binarize_rows(many), reference.binarize_rows(many)
    assert torch.equal(bits, bits_r)
    torch.testing.assert_close(beta, beta_r, rtol=0, atol=0, equal_nan=True)


def test_row_abs_mean_is_the_mean_and_does_not_depend_on_order():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(64, 777, generator=g) * torch.logspace(-6, 3, 777)  # values over 9 decades
    beta = reference.row_abs_mean(x)
    torch.testing.assert_close(beta, x.double().abs().mean(1).float(), rtol=1e-6, atol=0)
    for _ in range(3):
        assert torch.equal(reference.row_abs_mean(x[:, torch.randperm(777, generator=g)]), beta)


# ---------------------------------------------------------------- GEMMs


def _problem(m, k, n, seed=0):
    g = torch.Generator().manual_seed(seed + 1000 * m + 7 * k + n)
    x = torch.randn(m, k, generator=g)
    tern = packing.pack_ternary(torch.randint(-1, 2, (n, k), generator=g))
    binw = packing.pack_binary(torch.randint(0, 2, (n, k), generator=g) * 2 - 1)
    sp, sn = torch.rand(n, generator=g) + 0.5, torch.rand(n, generator=g) + 0.5
    bias = torch.randn(n, generator=g)
    return x, tern, binw, sp, sn, bias


@pytest.mark.parametrize("m,k,n", SHAPES)
def test_integer_gemms_are_exact(isa, m, k, n):
    x, tern, binw, *_ = _problem(m, k, n)
    q, _ = reference.quantize_rows_int8(x)
    assert torch.equal(ops.ternary_mm_int(q, tern, n), reference.ternary_mm_int(q, tern, n))
    assert torch.equal(ops.binary_mm_int(q, binw, n), reference.binary_mm_int(q, binw, n))
    bits, _ = reference.binarize_rows(x)
    assert torch.equal(ops.xnor_mm_int(bits, binw, n, k), reference.xnor_mm_int(bits, binw, n, k))


def test_integer_gemm_extremes(isa):
    """Activations at the int8 limits against all-(+1) / all-(-1) rows: the largest sums, no saturation."""
    k, n = 1000, 3
    q = torch.tensor([[127] * k, [-127] * k, [-128] * k], dtype=torch.int8)
    w = torch.stack([torch.ones(k), -torch.ones(k), torch.zeros(k)]).long()
    out = ops.ternary_mm_int(q, packing.pack_ternary(w), n)
    assert out.tolist() == [[127 * k, -127 * k, 0], [-127 * k, 127 * k, 0], [-128 * k, 128 * k, 0]]
    b = torch.stack([torch.ones(k), -torch.ones(k), torch.ones(k)]).long()
    out = ops.binary_mm_int(q, packing.pack_binary(b), n)
    assert out[0].tolist() == [127 * k, -127 * k, 127 * k] and out[2].tolist() == [
        -128 * k,
        128 * k,
        -128 * k,
    ]


@pytest.mark.parametrize("m,k,n", SHAPES)
def test_float_linears_match_reference(isa, m, k, n):
    """Bit for bit: the float epilogue is written in the same order in kernels and spec."""
    x, tern, binw, sp, sn, bias = _problem(m, k, n)
    for neg in (None, sn):
        for b in (None, bias):
            assert torch.equal(ops.ternary_linear(x, tern, k, sp, neg, b), reference.ternary_linear(x, tern, k, sp, neg, b))
    assert torch.equal(ops.binary_linear(x, binw, k, sp, bias), reference.binary_linear(x, binw, k, sp, bias))
    close(ops.xnor_linear(x, binw, k, sp, bias), reference.xnor_linear(x, binw, k, sp, None) + bias)
    xr = x.relu()  # many exact zeros: sgn(0) = -1 in kernel and spec alike
    assert torch.equal(ops.xnor_linear(xr, binw, k, sp, bias), reference.xnor_linear(xr, binw, k, sp, bias))
    assert torch.equal(ops.xnor_linear(x, binw, k, sp, None, False), reference.xnor_linear(x, binw, k, sp, None, False))


@pytest.mark.parametrize("m,k,n", [(5, 40, 24), (9, 100, 70)])
def test_fused_clamp_matches_reference(isa, m, k, n):
    """act_min / act_max (a fused ReLU6, or a one-sided ReLU) clamp in the epilogue; NaN passes."""
    x, tern, binw, sp, sn, bias = _problem(m, k, n)
    bias[2] = float("nan")  # a NaN output column stays NaN, as torch.clamp leaves it
    same = lambda a, b: torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5, equal_nan=True)
    for lo, hi in ((0.0, 6.0), (0.0, None), (None, 0.5)):
        for neg in (None, sn):
            y = ops.ternary_linear(x, tern, k, sp, neg, bias, lo, hi)
            same(y, reference.ternary_linear(x, tern, k, sp, neg, bias).clamp(lo, hi))
        y = ops.binary_linear(x, binw, k, sp, bias, lo, hi)
        same(y, reference.binary_linear(x, binw, k, sp, bias, lo, hi))
        y = ops.xnor_linear(x, binw, k, sp, bias, True, lo, hi)
        same(y, reference.xnor_linear(x, binw, k, sp, bias, True, lo, hi))
    assert torch.isnan(ops.ternary_linear(x, tern, k, sp, None, bias, 0.0, 6.0)[:, 2]).all()


def test_ternary_linear_is_close_to_float_math():
    """The spec itself: int8 activations x ternary weights approximate the float product."""
    x, tern, _, sp, _, _ = _problem(16, 512, 64)
    w = packing.unpack_ternary(tern, 64, 512).float() * sp[:, None]
    y = reference.ternary_linear(x, tern, 512, sp)
    assert (y - x @ w.T).abs().max() < 0.02 * (x @ w.T).abs().max()


@pytest.mark.parametrize("m,n", [(16, 800), (640, 20)])  # split over output blocks / over rows
def test_two_threads_match_one(m, n):
    cpp_or_skip()
    k = 400  # m * n * k above the kernels' threshold for using a second thread
    x, tern, binw, sp, sn, bias = _problem(m, k, n)
    torch.set_num_threads(2)
    try:
        outs = [
            ops.ternary_linear(x, tern, k, sp, sn, bias),
            ops.binary_linear(x, binw, k, sp, bias),
            ops.xnor_linear(x, binw, k, sp, bias),
        ]
    finally:
        torch.set_num_threads(1)
    close(outs[0], reference.ternary_linear(x, tern, k, sp, sn, bias))
    close(outs[1], reference.binary_linear(x, binw, k, sp, bias))
    close(outs[2], reference.xnor_linear(x, binw, k, sp, bias))


def test_leading_dims_and_dtypes():
    x, tern, _, sp, _, bias = _problem(6, 40, 24)
    y = ops.ternary_linear(x.view(2, 3, 40), tern, 40, sp, None, bias)
    assert y.shape == (2, 3, 24)
    close(y.reshape(6, 24), reference.ternary_linear(x, tern, 40, sp, None, bias))
    yb = ops.ternary_linear(x.bfloat16(), tern, 40, sp, None, bias)
    assert yb.dtype == torch.bfloat16


def test_bad_arguments_name_the_problem():
    x, tern, binw, sp, _, _ = _problem(2, 40, 24)
    with pytest.raises(ValueError, match="input has 40 features, the packed weights expect 41"):
        ops.ternary_linear(x, tern, 41, sp)
    with pytest.raises(ValueError, match="packed weights for 24 outputs x 40 inputs"):
        ops.ternary_linear(x, binw, 40, sp)
    with pytest.raises(ValueError, match="bias must have shape \\[24\\]"):
        ops.binary_linear(x, binw, 40, sp, torch.zeros(3))


# ---------------------------------------------------------------- convolution


CONVS = [  # (C, O, kernel, stride, padding, dilation, H, W)
    (8, 20, 1, 1, 0, 1, 5, 6),
    (8, 20, 1, 2, 0, 1, 7, 7),
    (3, 17, 3, 1, 1, 1, 8, 8),
    (6, 10, 3, 2, 1, 1, 9, 7),
    (4, 8, 3, 1, 2, 2, 6, 6),
    (5, 12, (1, 3), 1, (0, 1), 1, 4, 5),
]


@pytest.mark.parametrize("c,o,ks,st,pad,dil,h,w", CONVS)
def test_im2col_rows_reproduce_conv2d(c, o, ks, st, pad, dil, h, w):
    x, wt = torch.randn(2, c, h, w), torch.randn(o, c, *reference._pair(ks))
    p = reference._pair
    rows, shape = reference.conv_rows(x, p(ks), p(st), p(pad), p(dil))
    y = reference.rows_to_nchw(rows @ reference.conv_weight_rows(wt).T, shape)
    close(y, F.conv2d(x, wt, stride=st, padding=pad, dilation=dil))


@pytest.mark.parametrize("c,o,ks,st,pad,dil,h,w", CONVS)
def test_convolutions_match_reference(c, o, ks, st, pad, dil, h, w):
    x = torch.randn(2, c, h, w)
    kk = c * reference._pair(ks)[0] * reference._pair(ks)[1]
    _, tern, binw, sp, sn, bias = _problem(1, kk, o)
    args = dict(stride=st, padding=pad, dilation=dil)
    close(ops.ternary_conv2d(x, tern, ks, sp, sn, bias, **args),
          reference.ternary_conv2d(x, tern, ks, sp, sn, bias, **args))  # fmt: skip
    xr = x.relu()  # exact zeros, and zero padding, binarize to -1
    for xnor, act_scale in ((False, True), (True, True), (True, False)):
        close(
            ops.binary_conv2d(xr, binw, ks, sp, bias, **args, xnor=xnor, act_scale=act_scale),
            reference.binary_conv2d(xr, binw, ks, sp, bias, **args, xnor=xnor, act_scale=act_scale),
        )


# ---------------------------------------------------------------- torch.library


def test_opcheck():
    x, tern, binw, sp, sn, bias = _problem(3, 40, 20)
    q, _ = reference.quantize_rows_int8(x)
    bits, _ = reference.binarize_rows(x)
    cases = [
        (ops.ternary_linear, (x, tern, 40, sp, sn, bias)),
        (ops.ternary_linear, (x, tern, 40, sp, None, None)),
        (ops.binary_linear, (x, binw, 40, sp, bias)),
        (ops.xnor_linear, (x, binw, 40, sp, None)),
        (ops.xnor_linear, (x, binw, 40, sp, bias, False)),
        (ops.ternary_linear, (x, tern, 40, sp, sn, bias, 0.0, 6.0)),
        (ops.binary_linear, (x, binw, 40, sp, bias, 0.0, None)),
        (ops.xnor_linear, (x, binw, 40, sp, bias, True, None, 1.0)),
        (ops.ternary_mm_int, (q, tern, 20)),
        (ops.binary_mm_int, (q, binw, 20)),
        (ops.xnor_mm_int, (bits, binw, 20, 40)),
        (ops.quantize_rows_int8, (x,)),
        (ops.binarize_rows, (x,)),
    ]
    for op, args in cases:
        torch.library.opcheck(op, args)
