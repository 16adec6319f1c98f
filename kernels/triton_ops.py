"""Triton kernels for the packed ternary/binary linears on GPU.

They read the same packed tiles as the CPU kernels (kernels/packing.py) and
follow the same spec (kernels/reference.py): int8 per-row activations and
int32 accumulation via ``tl.dot``, or XNOR + popcount on sign words, then the
float epilogue in the reference's order (fp fusion off, so no FMA contraction).

Activation quantization/binarization runs as plain torch ops on the GPU (it is
a small elementwise pass). ``available()`` is False without triton or CUDA;
kernels/ops.py then runs the reference on the GPU instead. With
``TRITON_INTERPRET=1`` the kernels also run on CPU tensors (used by the tests
where triton is installed but no GPU is present).
"""

from __future__ import annotations

import os

import torch

from kernels import reference
from kernels.packing import BINARY_TILE_K, BLOCK_N, TERNARY_TILE_K

try:  # triton is optional: CPU-only installs do not have it
    import triton
    import triton.language as tl

    HAVE_TRITON = True
except ImportError:  # pragma: no cover - depends on the environment
    HAVE_TRITON = False


def interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET") == "1"


def available() -> bool:
    """True when the Triton kernels can run here (triton + a CUDA GPU)."""
    return HAVE_TRITON and torch.cuda.is_available()


if HAVE_TRITON:
    BLOCK_N_C: tl.constexpr = tl.constexpr(BLOCK_N)

    @triton.jit
    def _ternary_weights(w_ptr, offs_k, offs_n, N, K, kblocks, POS_ONLY: tl.constexpr):
        """[BK, BN] int8 tile of ternary weights (or of their +1 indicator), from the packed tiles."""
        k = offs_k[:, None]
        n = offs_n[None, :]
        byte = (n // BLOCK_N_C) * kblocks * 64 + (k // 16) * 64 + (n % BLOCK_N_C) * 4 + (k % 4)
        valid = (k < K) & (n < N)
        packed = tl.load(w_ptr + byte, mask=valid, other=0x55).to(tl.int32)  # 0x55: all codes 1 (zero)
        code = (packed >> (2 * ((k % 16) // 4))) & 3
        if POS_ONLY:
            return (code == 2).to(tl.int8)
        return (code - 1).to(tl.int8)

    @triton.jit
    def _binary_weights(w_ptr, offs_k, offs_n, N, K, kblocks):
        """[BK, BN] int8 tile of +-1 weights from the packed binary tiles."""
        k = offs_k[:, None]
        n = offs_n[None, :]
        byte = (n // BLOCK_N_C) * kblocks * 64 + (k // 32) * 64 + (n % BLOCK_N_C) * 4 + (k % 4)
        valid = (k < K) & (n < N)
        packed = tl.load(w_ptr + byte, mask=valid, other=0).to(tl.int32)
        bit = (packed >> ((k % 32) // 4)) & 1
        return tl.where(valid, 2 * bit - 1, 0).to(tl.int8)

    @triton.jit
    def _epilogue(y_ptr, dot, pos, sx_ptr, wp_ptr, wn_ptr, b_ptr, offs_m, offs_n, M, N,
                  TTQ: tl.constexpr, HAS_BIAS: tl.constexpr):  # fmt: skip
        mmask = offs_m < M
        nmask = offs_n < N
        sx = tl.load(sx_ptr + offs_m, mask=mmask, other=0.0)
        wp = tl.load(wp_ptr + offs_n, mask=nmask, other=0.0)
        if TTQ:
            wn = tl.load(wn_ptr + offs_n, mask=nmask, other=0.0)
            neg = pos - dot
            y = pos.to(tl.float32) * wp[None, :] - neg.to(tl.float32) * wn[None, :]
            y = y * sx[:, None]
        else:
            y = (dot.to(tl.float32) * wp[None, :]) * sx[:, None]
        if HAS_BIAS:
            y = y + tl.load(b_ptr + offs_n, mask=nmask, other=0.0)[None, :]
        ptrs = y_ptr + offs_m[:, None] * N + offs_n[None, :]
        tl.store(ptrs, y, mask=mmask[:, None] & nmask[None, :])

    @triton.jit
    def _int8_linear_kernel(x_ptr, w_ptr, y_ptr, sx_ptr, wp_ptr, wn_ptr, b_ptr, M, N, K, kblocks,
                            TERNARY: tl.constexpr, TTQ: tl.constexpr, HAS_BIAS: tl.constexpr,
                            BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr):  # fmt: skip
        pid_m = tl.program_id(0)
        pid_n = tl.program_id(1)
        offs_m = pid_m * BM + tl.arange(0, BM)
        offs_n = pid_n * BN + tl.arange(0, BN)
        acc = tl.zeros((BM, BN), dtype=tl.int32)
        acc_pos = tl.zeros((BM, BN), dtype=tl.int32)
        for k0 in range(0, K, BK):
            offs_k = k0 + tl.arange(0, BK)
            xmask = (offs_m[:, None] < M) & (offs_k[None, :] < K)
            x = tl.load(x_ptr + offs_m[:, None] * K + offs_k[None, :], mask=xmask, other=0)
            if TERNARY:
                w = _ternary_weights(w_ptr, offs_k, offs_n, N, K, kblocks, False)
                if TTQ:
                    wpos = _ternary_weights(w_ptr, offs_k, offs_n, N, K, kblocks, True)
                    acc_pos += tl.dot(x, wpos, out_dtype=tl.int32)
            else:
                w = _binary_weights(w_ptr, offs_k, offs_n, N, K, kblocks)
            acc += tl.dot(x, w, out_dtype=tl.int32)
        _epilogue(y_ptr, acc, acc_pos, sx_ptr, wp_ptr, wn_ptr, b_ptr, offs_m, offs_n, M, N, TTQ, HAS_BIAS)

    @triton.jit
    def _popcount32(v):
        v = v.to(tl.uint32, bitcast=True)
        v = v - ((v >> 1) & 0x55555555)
        v = (v & 0x33333333) + ((v >> 2) & 0x33333333)
        v = (v + (v >> 4)) & 0x0F0F0F0F
        return ((v * 0x01010101) >> 24).to(tl.int32)

    @triton.jit
    def _xnor_linear_kernel(xw_ptr, ww_ptr, y_ptr, beta_ptr, s_ptr, b_ptr, M, N, K, kblocks,
                            HAS_BIAS: tl.constexpr, BM: tl.constexpr, BN: tl.constexpr):  # fmt: skip
        pid_m = tl.program_id(0)
        pid_n = tl.program_id(1)
        offs_m = pid_m * BM + tl.arange(0, BM)
        offs_n = pid_n * BN + tl.arange(0, BN)
        mmask = offs_m < M
        nmask = offs_n < N
        # 32-bit word index of (n, kb) inside the packed tiles, viewed as int32
        wbase = (offs_n // BLOCK_N_C) * kblocks * 16 + (offs_n % BLOCK_N_C)
        diff = tl.zeros((BM, BN), dtype=tl.int32)
        for kb in range(0, kblocks):
            xw = tl.load(xw_ptr + offs_m * kblocks + kb, mask=mmask, other=0)
            ww = tl.load(ww_ptr + wbase + kb * 16, mask=nmask, other=0)
            diff += _popcount32(xw[:, None] ^ ww[None, :])
        dot = K - 2 * diff
        _epilogue(y_ptr, dot, dot, beta_ptr, s_ptr, s_ptr, b_ptr, offs_m, offs_n, M, N, False, HAS_BIAS)


def _launch_opts() -> dict:
    # Keep mul and add separate (as the reference and the CPU kernels do).
    return {} if interpreting() else {"enable_fp_fusion": False}


def _int8_linear(x, w_packed, k, tile_k, scale_pos, scale_neg, bias, ternary: bool) -> torch.Tensor:
    q, sx = reference.quantize_rows_int8(x)
    m, n = x.shape[0], scale_pos.shape[0]
    y = torch.empty(m, n, dtype=torch.float32, device=x.device)
    bm, bn, bk = 32, 64, 64
    grid = (triton.cdiv(m, bm), triton.cdiv(n, bn))
    _int8_linear_kernel[grid](
        q.contiguous(), w_packed, y, sx, scale_pos,
        scale_neg if scale_neg is not None else scale_pos, bias if bias is not None else scale_pos,
        m, n, k, -(-k // tile_k),
        TERNARY=ternary, TTQ=scale_neg is not None, HAS_BIAS=bias is not None, BM=bm, BN=bn, BK=bk,
        **_launch_opts(),
    )  # fmt: skip
    return y


def ternary_linear(x, w_packed, k, scale_pos, scale_neg=None, bias=None) -> torch.Tensor:
    """Triton version of reference.ternary_linear (x: fp32 [M, k] rows)."""
    return _int8_linear(x, w_packed, k, TERNARY_TILE_K, scale_pos, scale_neg, bias, ternary=True)


def binary_linear(x, w_packed, k, scale, bias=None) -> torch.Tensor:
    """Triton version of reference.binary_linear (x: fp32 [M, k] rows)."""
    return _int8_linear(x, w_packed, k, BINARY_TILE_K, scale, None, bias, ternary=False)


def xnor_linear(x, w_packed, k, scale, bias=None, act_scale: bool = True) -> torch.Tensor:
    """Triton version of reference.xnor_linear (x: fp32 [M, k] rows)."""
    bits, beta = reference.binarize_rows(x)
    if not act_scale:
        beta = torch.ones_like(beta)
    m, n = x.shape[0], scale.shape[0]
    y = torch.empty(m, n, dtype=torch.float32, device=x.device)
    bm, bn = 32, 64
    grid = (triton.cdiv(m, bm), triton.cdiv(n, bn))
    _xnor_linear_kernel[grid](
        bits.view(torch.int32), w_packed.view(torch.int32), y, beta, scale,
        bias if bias is not None else scale, m, n, k, -(-k // BINARY_TILE_K),
        HAS_BIAS=bias is not None, BM=bm, BN=bn, **_launch_opts(),
    )  # fmt: skip
    return y
