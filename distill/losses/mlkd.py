"""Multi-level logit distillation, MLKD (Jin et al., 2023), without its strong augmentation.

At each temperature T in ``temperatures`` (the paper's set: 2, 3, 4, 5, 6), with
P_S = softmax(z_S / T) and P_T the soft target at T, both ``[B, C]``:

    instance  L_ins = KL(P_T || P_S)                       averaged over the batch
    batch     L_bat = ||P_S P_S^T - P_T P_T^T||_F^2 / B      (B x B: how alike the samples are)
    class     L_cls = ||P_S^T P_S - P_T^T P_T||_F^2 / C      (C x C: which classes go together)

    L_mlkd = mean_T  (T^2 * L_ins + L_bat + L_cls)

The T^2 factor is KD's, on the KL term only: the authors' code scales the instance term by T^2 and
leaves the two Gram-matrix terms as they are. (Scaling those too, as this term first did, made them
up to 36x larger: at batch 128 and 10 classes the class term of a near-uniform student starts in the
hundreds, and MobileNet v1 on CIFAR-10 finished at 0.2486 top-1 against 0.5842 with hard labels.)
The mean over temperatures (the paper sums) keeps the term's scale that of one KD term, so a spec
weight means the same as KD's. Left out: the paper's strong-augmentation views and its masking of the least
confident teacher predictions; this is the alignment that works on the one view every term sees.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from .base import LossInputs
from .soft_targets import SoftTargetTerm, Target


def mlkd_parts(z_s: torch.Tensor, p_t: torch.Tensor, temperature: float
               ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(L_ins, L_bat, L_cls) at one temperature, without the T^2 factor."""
    log_p_s = F.log_softmax(z_s / temperature, dim=1)
    p_s = log_p_s.exp()
    ins = F.kl_div(log_p_s, p_t, reduction="batchmean")
    bat = (p_s @ p_s.T - p_t @ p_t.T).pow(2).sum() / z_s.shape[0]
    cls = (p_s.T @ p_s - p_t.T @ p_t).pow(2).sum() / z_s.shape[1]
    return ins, bat, cls


class MLKDTerm(SoftTargetTerm):
    """Instance-, batch- and class-level alignment of softened predictions over several temperatures."""

    def __init__(self, name: str, temperatures: Sequence[float] = (2.0, 3.0, 4.0, 5.0, 6.0),
                 teacher: str | None = None, combine: str = "mean_probs", standardize: bool = False,
                 per_teacher: bool = False, start_epoch: int = 0) -> None:
        temps = [temperatures] if isinstance(temperatures, int | float) else list(temperatures)
        if not temps or any(not isinstance(t, int | float) or not t > 0 for t in temps):
            raise ValueError(f"loss term {name!r}: temperatures must be a non-empty list of numbers > 0, "
                             f"got {temperatures!r}")
        super().__init__(name, max(temps), teacher, combine, standardize, per_teacher, start_epoch)
        self.temperatures = [float(t) for t in temps]

    def soft_loss(self, z_s: torch.Tensor, target: Target, inp: LossInputs) -> torch.Tensor:
        total = z_s.new_zeros(())
        for t in self.temperatures:
            ins, bat, cls = mlkd_parts(z_s, target(t), t)
            total = total + t**2 * ins + bat + cls
        return total / len(self.temperatures)
