"""Bit packing for ternary (2-bit) and binary (1-bit) weights.

This file is the spec of the packed layouts that the C++ and Triton kernels read.

Ternary: a row of K weights in {-1, 0, +1} is padded to a multiple of 128 and
stored as 4 weights per byte. Each group of 128 weights owns 32 bytes; bits
2s..2s+1 of byte j of the group hold ``w[32*s + j] + 1`` (so 0, 1 or 2).

Binary: a row of K weights in {-1, +1} is padded to a multiple of 256 and
stored as 8 weights per byte. Each group of 256 weights owns 32 bytes; bit s of
byte j of the group is 1 iff ``w[32*s + j] == +1``.

Why this order and not plain little-endian: one 32-byte load, a shift by 2s (or
s) and a mask give 32 *consecutive* weights as bytes, which line up with 32
consecutive int8 activations for a maddubs/vpdpbusd. Padding weights are code 1
(zero) for ternary and bit 0 for binary; padded activations are zero, so padding
never changes a result. Binary activations for XNOR use the same layout.

Scales live next to the codes: one float per output channel, and for TTQ a
second one for the negative weights (``w = +scale_pos`` for code +1,
``w = -scale_neg`` for code -1).
"""

from __future__ import annotations

import torch

TERNARY_GROUP = 128
BINARY_GROUP = 256

_TERNARY_SHIFTS = torch.tensor([0, 2, 4, 6], dtype=torch.uint8)
_BINARY_SHIFTS = torch.arange(8, dtype=torch.uint8)


def padded_k(k: int, group: int) -> int:
    """K rounded up to a whole number of groups."""
    return -(-k // group) * group


def ternary_row_bytes(k: int) -> int:
    """Bytes of one packed ternary row of k weights."""
    return padded_k(k, TERNARY_GROUP) // 4


def binary_row_bytes(k: int) -> int:
    """Bytes of one packed binary row of k weights (or activations)."""
    return padded_k(k, BINARY_GROUP) // 8


def _check_2d(t: torch.Tensor, name: str) -> None:
    if t.dim() != 2:
        raise ValueError(f"{name}: expected a 2-D [N, K] tensor, got shape {tuple(t.shape)}")


def pack_ternary(w: torch.Tensor) -> torch.Tensor:
    """Pack a [N, K] tensor with values in {-1, 0, +1} into uint8 [N, padded_k/4]."""
    _check_2d(w, "pack_ternary")
    if w.is_floating_point() and not torch.equal(w, w.round()):
        raise ValueError("pack_ternary: weights must be -1, 0 or +1")
    codes = w.to(torch.int16) + 1
    if codes.numel() and (codes.min() < 0 or codes.max() > 2):
        raise ValueError("pack_ternary: weights must be -1, 0 or +1")
    n, k = w.shape
    kp = padded_k(k, TERNARY_GROUP)
    full = torch.ones(n, kp, dtype=torch.uint8, device=w.device)  # code 1 == weight 0
    full[:, :k] = codes.to(torch.uint8)
    planes = full.view(n, kp // TERNARY_GROUP, 4, 32) << _TERNARY_SHIFTS.to(w.device).view(1, 1, 4, 1)
    packed = planes[:, :, 0] | planes[:, :, 1] | planes[:, :, 2] | planes[:, :, 3]
    return packed.reshape(n, kp // 4).contiguous()


def unpack_ternary(packed: torch.Tensor, k: int) -> torch.Tensor:
    """Inverse of :func:`pack_ternary`: int8 [N, k] with values in {-1, 0, +1}."""
    _check_2d(packed, "unpack_ternary")
    n, nbytes = packed.shape
    if packed.dtype != torch.uint8 or nbytes != ternary_row_bytes(k):
        raise ValueError(
            f"unpack_ternary: expected uint8 [N, {ternary_row_bytes(k)}] for k={k}, "
            f"got {packed.dtype} {tuple(packed.shape)}"
        )
    groups = packed.view(n, nbytes // 32, 1, 32)
    codes = (groups >> _TERNARY_SHIFTS.to(packed.device).view(1, 1, 4, 1)) & 3
    return codes.reshape(n, nbytes * 4)[:, :k].to(torch.int8) - 1


def pack_binary(w: torch.Tensor) -> torch.Tensor:
    """Pack a [N, K] tensor with values in {-1, +1} into uint8 [N, padded_k/8]."""
    _check_2d(w, "pack_binary")
    if w.numel() and not bool(((w == 1) | (w == -1)).all()):
        raise ValueError("pack_binary: weights must be -1 or +1")
    return _pack_bits(w > 0)


def _pack_bits(bits: torch.Tensor) -> torch.Tensor:
    n, k = bits.shape
    kp = padded_k(k, BINARY_GROUP)
    full = torch.zeros(n, kp, dtype=torch.uint8, device=bits.device)
    full[:, :k] = bits.to(torch.uint8)
    planes = full.view(n, kp // BINARY_GROUP, 8, 32) << _BINARY_SHIFTS.to(bits.device).view(1, 1, 8, 1)
    return planes.sum(dim=2, dtype=torch.uint8).reshape(n, kp // 8).contiguous()


def unpack_binary(packed: torch.Tensor, k: int) -> torch.Tensor:
    """Inverse of :func:`pack_binary`: int8 [N, k] with values in {-1, +1}."""
    _check_2d(packed, "unpack_binary")
    n, nbytes = packed.shape
    if packed.dtype != torch.uint8 or nbytes != binary_row_bytes(k):
        raise ValueError(
            f"unpack_binary: expected uint8 [N, {binary_row_bytes(k)}] for k={k}, "
            f"got {packed.dtype} {tuple(packed.shape)}"
        )
    groups = packed.view(n, nbytes // 32, 1, 32)
    bits = (groups >> _BINARY_SHIFTS.to(packed.device).view(1, 1, 8, 1)) & 1
    return bits.reshape(n, nbytes * 8)[:, :k].to(torch.int8) * 2 - 1


def pack_signs(x: torch.Tensor) -> torch.Tensor:
    """Sign bits of a float [M, K] tensor in the binary layout: +1 for x >= 0, else -1."""
    _check_2d(x, "pack_signs")
    return _pack_bits(x >= 0)


def _row_value(w: torch.Tensor, mask: torch.Tensor, name: str) -> torch.Tensor:
    """The one magnitude each row takes where mask holds (0 where it holds nowhere)."""
    mag = torch.where(mask, w.abs(), torch.zeros_like(w))
    hi = mag.amax(dim=1)
    lo = torch.where(mask, w.abs(), torch.full_like(w, float("inf"))).amin(dim=1)
    lo = torch.where(mask.any(dim=1), lo, hi)
    if not torch.allclose(lo, hi, rtol=1e-5, atol=0.0):
        raise ValueError(f"{name}: each output row must use a single magnitude (max spread {float((hi - lo).abs().max()):.3g})")
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

    Zeros count as +a_n (sign(0) = +1, as the kernels binarize activations).
    """
    w = w.detach().float().reshape(w.shape[0], -1)
    signs = torch.where(w >= 0, 1, -1).to(torch.int8)
    nonzero = w != 0
    scale = _row_value(w, nonzero, "binary_from_float")
    if bool((nonzero.sum(dim=1) < w.shape[1]).logical_and(scale > 0).any()):
        raise ValueError("binary_from_float: a row mixes zeros with nonzero weights; it is not binary")
    return signs, scale.contiguous()
