"""Combining an ensemble's outputs into one soft target.

Four rules, as a logit term's ``combine`` option names them (``teachers.combine`` takes the first two):
- ``mean_probs``: p = sum_i w_i softmax(z_i / T) / sum_i w_i  (Hinton's ensemble target);
- ``mean_logits``: p = softmax( sum_i w_i z_i / sum_i w_i / T );
- ``entropy_weighted``: per-sample weights that trust the teachers that are sure of this sample,
      a_ib = w_i exp(-H(softmax(z_ib))) / sum_j w_j exp(-H(softmax(z_jb)))
  (a softmax over teachers of the negative entropy of each one's own, T = 1, prediction;
  entropy-based adaptive KD, Kwon et al. 2020), then p_b = sum_i a_ib softmax(z_ib / T);
- ``label_weighted``: per-sample weights that trust the teachers that are right about this sample,
      a_ib = w_i exp(-CE(z_ib, y_b)) / sum_j w_j exp(-CE(z_jb, y_b)) = w_i p_ib(y_b) / sum_j w_j p_jb(y_b)
  (CA-MKD's confidence weights, Zhang et al. 2022), then the same mixture. With mixup/cutmix
  probability targets, CE(z, y) = -sum_c y_c log softmax(z)_c.
Confidence is read at T = 1 (what each teacher actually predicts); the mixture is of the softened
probabilities, so T still sets how soft the target is. The weights are bounded: under the entropy
rule no teacher gets more than C times another's static weight.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

COMBINE_RULES = ("mean_probs", "mean_logits", "entropy_weighted", "label_weighted")


def confidence_weights(stacked: torch.Tensor, w: torch.Tensor, rule: str,
                       targets: torch.Tensor | None = None) -> torch.Tensor:
    """Per-sample teacher weights ``[n, B, 1]`` (summing to 1 over teachers) for the confidence rules."""
    log_p = F.log_softmax(stacked, dim=2)  # [n, B, C] at T = 1
    if rule == "entropy_weighted":
        score = (log_p.exp() * log_p).sum(2)  # -H
    else:
        if targets is None:
            raise ValueError("combine rule 'label_weighted' needs the batch's labels")
        y = F.one_hot(targets, stacked.shape[2]).to(log_p.dtype) if targets.dim() == 1 else targets.to(log_p.dtype)
        score = (y[None] * log_p).sum(2)  # -CE
    return torch.softmax(score + w.log()[:, None], dim=0)[..., None]


def combine_probs(logits: Sequence[torch.Tensor], weights: Sequence[float], temperature: float = 1.0,
                  rule: str = "mean_probs", targets: torch.Tensor | None = None) -> torch.Tensor:
    """Soft target ``[B, C]`` from per-teacher logits ``[B, C]`` (``targets``: labels, for ``label_weighted``)."""
    if not logits:
        raise ValueError("combine_probs needs at least one teacher's logits")
    if rule not in COMBINE_RULES:
        raise ValueError(f"unknown ensemble rule {rule!r}; expected one of {COMBINE_RULES}")
    dtype = torch.promote_types(logits[0].dtype, torch.float32)
    w = torch.tensor([float(x) for x in weights], dtype=dtype, device=logits[0].device)
    w = w / w.sum()
    stacked = torch.stack([z.to(dtype) for z in logits])  # [n, B, C]
    if rule == "mean_logits":
        return torch.softmax((w[:, None, None] * stacked).sum(0) / temperature, dim=1)
    a = w[:, None, None] if rule == "mean_probs" else confidence_weights(stacked, w, rule, targets)
    return (a * torch.softmax(stacked / temperature, dim=2)).sum(0)
