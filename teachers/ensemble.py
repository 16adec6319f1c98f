"""Combining an ensemble's outputs into one soft target.

Three rules, as the job spec's ``teachers.combine`` names them:
- ``mean_probs``: p = sum_i w_i softmax(z_i / T) / sum_i w_i  (Hinton's ensemble target);
- ``mean_logits``: p = softmax( sum_i w_i z_i / sum_i w_i / T );
- per-teacher weights come in through ``weights`` for both.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

COMBINE_RULES = ("mean_probs", "mean_logits")


def combine_probs(logits: Sequence[torch.Tensor], weights: Sequence[float], temperature: float = 1.0,
                  rule: str = "mean_probs") -> torch.Tensor:
    """Soft target ``[B, C]`` from per-teacher logits ``[B, C]``."""
    if not logits:
        raise ValueError("combine_probs needs at least one teacher's logits")
    if rule not in COMBINE_RULES:
        raise ValueError(f"unknown ensemble rule {rule!r}; expected one of {COMBINE_RULES}")
    w = torch.tensor([float(x) for x in weights], dtype=torch.float32, device=logits[0].device)
    w = w / w.sum()
    stacked = torch.stack([z.float() for z in logits])  # [n, B, C]
    if rule == "mean_logits":
        return torch.softmax((w[:, None, None] * stacked).sum(0) / temperature, dim=1)
    return (w[:, None, None] * torch.softmax(stacked / temperature, dim=2)).sum(0)
