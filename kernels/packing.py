"""Bit packing for ternary (2-bit) and binary (1-bit) weights.

This file is the spec of the packed layouts that the C++ and Triton kernels read.

Weights [N, K] are stored in blocks of 16 output channels. Each block is a run
of 64-byte tiles along K; a packed tensor has shape [ceil(N/16), K tiles, 64]:

- ternary (values -1, 0, +1; 4 per byte): a tile covers 16 outputs x 16
  inputs. Bits 2s..2s+1 of byte 4*l + j hold ``w[16*nb + l, 16*kb + 4*s + j] + 1``
  (so 0, 1 or 2).
- binary (values -1, +1; 8 per byte): a tile covers 16 outputs x 32 inputs.
  Bit s of byte 4*l + j is 1 iff ``w[16*nb + l, 32*kb + 4*s + j] == +1``.

Why this order: shifting a tile by 2s (or s) and masking puts, in 32-bit lane l,
the 4 weights of output l that meet activations x[4s .. 4s+3]. One vpdpbusd
(or maddubs+madd) against those 4 activation bytes broadcast to every lane adds
4 products into each output channel's own lane, so accumulators need no
horizontal sums and the float epilogue runs on 16 outputs at once. Padding (N up
to a multiple of 16, K up to a multiple of 16 or 32) is weight 0 (ternary) or
bit 0 (binary); padded activations are zero and padded outputs are never
written, so padding never changes a result.

Binary activations for XNOR use the same bit order: a row's 32-bit word kb has
bit 8*j + s set iff ``x[32*kb + 4*s + j] > 0`` (see :func:`pack_signs`).

Scales live next to the codes: one float per output channel, and for TTQ a
second one for the negative weights (``w = +scale_pos`` for code +1,
``w = -scale_neg`` for code -1).
"""

from __future__ import annotations

import torch

BLOCK_N = 16  # output channels per block
TERNARY_TILE_K = 16  # inputs per ternary tile
BINARY_TILE_K = 32  # inputs per binary tile
TILE_BYTES = 64


def _cdiv(a: int, b: int) -> int:
    return -(-a // b)


def ternary_packed_shape(n: int, k: int) -> tuple[int, int, int]:
    """Shape of the packed tensor for n x k ternary weights."""
    return (_cdiv(n, BLOCK_N), _cdiv(k, TERNARY_TILE_K), TILE_BYTES)


def binary_packed_shape(n: int, k: int) -> tuple[int, int, int]:
    """Shape of the packed tensor for n x k binary weights."""
    return (_cdiv(n, BLOCK_N), _cdiv(k, BINARY_TILE_K), TILE_BYTES)


def sign_bytes(k: int) -> int:
    """Bytes per row of packed activation signs (:func:`pack_signs`)."""
    return _cdiv(k, BINARY_TILE_K) * 4


def _check_2d(t: torch.Tensor, name: str) -> None:
    if t.dim() != 2:
        raise ValueError(f"{name}: expected a 2-D [N, K] tensor, got shape {tuple(t.shape)}")


def _shifts(count: int, step: int, device: torch.device) -> torch.Tensor:
    return torch.arange(0, count * step, step, dtype=torch.uint8, device=device)


def _to_tiles(values: torch.Tensor, pad: int, tile_k: int, planes: int, bits: int) -> torch.Tensor:
    """[N, K] small unsigned values -> [N/16, K/tile_k, 64] tiles (planes packed into bytes)."""
    n, k = values.shape
    np_, kp = _cdiv(n, BLOCK_N) * BLOCK_N, _cdiv(k, tile_k) * tile_k
    full = torch.full((np_, kp), pad, dtype=torch.uint8, device=values.device)
    full[:n, :k] = values.to(torch.uint8)
    # [nb, l, kb, s, j] -> [nb, kb, l, j, s]
    t = full.view(np_ // BLOCK_N, BLOCK_N, kp // tile_k, planes, 4).permute(0, 2, 1, 4, 3)
    t = t << _shifts(planes, bits, values.device)
    return t.sum(dim=-1, dtype=torch.uint8).reshape(np_ // BLOCK_N, kp // tile_k, TILE_BYTES).contiguous()


def _from_tiles(packed: torch.Tensor, n: int, k: int, tile_k: int, planes: int, bits: int) -> torch.Tensor:
    nb, kb, _ = packed.shape
    t = packed.view(nb, kb, BLOCK_N, 4, 1) >> _shifts(planes, bits, packed.device)
    t = t & ((1 << bits) - 1)  # [nb, kb, l, j, s]
    return t.permute(0, 2, 1, 4, 3).reshape(nb * BLOCK_N, kb * tile_k)[:n, :k]


def _check_packed(packed: torch.Tensor, shape: tuple[int, int, int], name: str) -> None:
    if packed.dtype != torch.uint8 or tuple(packed.shape) != shape:
        raise ValueError(f"{name}: expected uint8 {list(shape)}, got {packed.dtype} {list(packed.shape)}")


def pack_ternary(w: torch.Tensor) -> torch.Tensor:
    """Pack a [N, K] tensor with values in {-1, 0, +1} into uint8 tiles (see module doc)."""
    _check_2d(w, "pack_ternary")
    if w.is_floating_point() and not torch.equal(w, w.round()):
        raise ValueError("pack_ternary: weights must be -1, 0 or +1")
    codes = w.to(torch.int16) + 1
    if codes.numel() and (codes.min() < 0 or codes.max() > 2):
        raise ValueError("pack_ternary: weights must be -1, 0 or +1")
    return _to_tiles(codes, 1, TERNARY_TILE_K, 4, 2)


def unpack_ternary(packed: torch.Tensor, n: int, k: int) -> torch.Tensor:
    """Inverse of :func:`pack_ternary`: int8 [n, k] with values in {-1, 0, +1}."""
    _check_packed(packed, ternary_packed_shape(n, k), "unpack_ternary")
    return _from_tiles(packed, n, k, TERNARY_TILE_K, 4, 2).to(torch.int8) - 1


def pack_binary(w: torch.Tensor) -> torch.Tensor:
    """Pack a [N, K] tensor with values in {-1, +1} into uint8 tiles (see module doc)."""
    _check_2d(w, "pack_binary")
    if w.numel() and not bool(((w == 1) | (w == -1)).all()):
        raise ValueError("pack_binary: weights must be -1 or +1")
    return _to_tiles(w > 0, 0, BINARY_TILE_K, 8, 1)


def unpack_binary(packed: torch.Tensor, n: int, k: int) -> torch.Tensor:
    """Inverse of :func:`pack_binary`: int8 [n, k] with values in {-1, +1}."""
    _check_packed(packed, binary_packed_shape(n, k), "unpack_binary")
    return _from_tiles(packed, n, k, BINARY_TILE_K, 8, 1).to(torch.int8) * 2 - 1


def pack_signs(x: torch.Tensor) -> torch.Tensor:
    """XNOR activation bits of a float [M, K] tensor: uint8 [M, sign_bytes(K)].

    Bit 8*j + s of the little-endian 32-bit word kb is 1 iff x[32*kb + 4*s + j] > 0:
    sgn(x) = +1 if x > 0 else -1, the convention of kernels/ste.py (zeros are -1).
    """
    _check_2d(x, "pack_signs")
    m, k = x.shape
    kp = _cdiv(k, BINARY_TILE_K) * BINARY_TILE_K
    full = torch.zeros(m, kp, dtype=torch.uint8, device=x.device)
    full[:, :k] = (x > 0).to(torch.uint8)
    t = full.view(m, kp // BINARY_TILE_K, 8, 4).permute(0, 1, 3, 2) << _shifts(8, 1, x.device)
    return t.sum(dim=-1, dtype=torch.uint8).reshape(m, kp // 8).contiguous()


def unpack_signs(bits: torch.Tensor, k: int) -> torch.Tensor:
    """Inverse of :func:`pack_signs`: int8 [M, k] with values in {-1, +1}."""
    m = bits.shape[0]
    if bits.dtype != torch.uint8 or tuple(bits.shape) != (m, sign_bytes(k)):
        raise ValueError(
            f"unpack_signs: expected uint8 [M, {sign_bytes(k)}], got {bits.dtype} {list(bits.shape)}"
        )
    kb = sign_bytes(k) // 4
    t = (bits.view(m, kb, 4, 1) >> _shifts(8, 1, bits.device)) & 1  # [m, kb, j, s]
    return (t.permute(0, 1, 3, 2).reshape(m, kb * BINARY_TILE_K)[:, :k].to(torch.int8)) * 2 - 1


def _row_value(w: torch.Tensor, mask: torch.Tensor, name: str) -> torch.Tensor:
    """The one magnitude each row takes where mask holds (0 where it holds nowhere)."""
    mag = torch.where(mask, w.abs(), torch.zeros_like(w))
    hi = mag.amax(dim=1)
    lo = torch.where(mask, w.abs(), torch.full_like(w, float("inf"))).amin(dim=1)
    lo = torch.where(mask.any(dim=1), lo, hi)
    if not torch.allclose(lo, hi, rtol=1e-5, atol=0.0):
        raise ValueError(
            f"{name}: each output row must use a single magnitude "
            f"(max spread {float((hi - lo).abs().max()):.3g})"
        )
    return hi


def ternary_from_float(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Split a dequantized ternary weight into codes and per-row scales.

    Each row n of w (any shape [N, ...], flattened to [N, K]) must take values in
    {-a_n, 0, +b_n}. Returns (codes int8 [N, K], scale_pos [N], scale_neg [N] or
    None when a_n == b_n for every row, i.e. TWN-style symmetric).
    """
    w = w.detach().float().reshape(w.shape[0], -1)
    codes = torch.sign(w).to(torch.int8)
    pos = _row_value(w, codes > 0, "ternary_from_float (+ weights)")
    neg = _row_value(w, codes < 0, "ternary_from_float (- weights)")
    has_pos, has_neg = (codes > 0).any(dim=1), (codes < 0).any(dim=1)
    pos = torch.where(has_pos, pos, neg)
    neg = torch.where(has_neg, neg, pos)
    if torch.allclose(pos, neg, rtol=1e-6, atol=0.0):
        return codes, pos.contiguous(), None
    return codes, pos.contiguous(), neg.contiguous()


def binary_from_float(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Split a dequantized binary weight (row n in {-a_n, +a_n}) into signs and scales.

    An all-zero row (a_n = 0) gets scale 0 and signs -1 (sgn(0) = -1, as in kernels/ste.py).
    """
    w = w.detach().float().reshape(w.shape[0], -1)
    signs = torch.where(w > 0, 1, -1).to(torch.int8)
    nonzero = w != 0
    scale = _row_value(w, nonzero, "binary_from_float")
    if bool((nonzero.sum(dim=1) < w.shape[1]).logical_and(scale > 0).any()):
        raise ValueError("binary_from_float: a row mixes zeros with nonzero weights; it is not binary")
    return signs, scale.contiguous()


def dw_codes_shape(c: int) -> tuple[int, int, int]:
    """Bytes of a ternary depthwise 3x3 weight's codes: [3, 3, ceil(C / 4)]."""
    return (3, 3, _cdiv(c, 4))


def pack_dw_ternary(codes: torch.Tensor) -> torch.Tensor:
    """Ternary depthwise codes int8 [3, 3, C] in {-1, 0, +1} (the kernels' (kh, kw, C) layout) as
    uint8 [3, 3, ceil(C / 4)]: byte j of tap (kh, kw) holds channel 4j + i's code + 1 in bits 2i..2i+1."""
    if codes.dim() != 3 or tuple(codes.shape[:2]) != (3, 3):
        raise ValueError(f"pack_dw_ternary: expected codes [3, 3, C], got {list(codes.shape)}")
    c = codes.shape[2]
    u = (codes.to(torch.int16) + 1).clamp(0, 2).to(torch.uint8)
    u = torch.nn.functional.pad(u, (0, 4 * _cdiv(c, 4) - c), value=1).view(3, 3, -1, 4)
    return (u << _shifts(4, 2, codes.device)).sum(dim=3, dtype=torch.uint8)


def unpack_dw_ternary(packed: torch.Tensor, c: int) -> torch.Tensor:
    """Inverse of :func:`pack_dw_ternary`: int8 [3, 3, C] in {-1, 0, +1}."""
    if packed.dtype != torch.uint8 or tuple(packed.shape) != dw_codes_shape(c):
        raise ValueError(f"unpack_dw_ternary: expected uint8 {list(dw_codes_shape(c))}, got {packed.dtype} "
                         f"{list(packed.shape)}")  # fmt: skip
    t = (packed.unsqueeze(3) >> _shifts(4, 2, packed.device)) & 3
    return t.reshape(3, 3, -1)[:, :, :c].to(torch.int8) - 1
