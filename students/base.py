"""The shape every student shares: stem -> stages -> head, timm style.

Distillation needs two things from a student beyond logits: a pooled-feature
/ classifier split (for feature-level losses and fine-tuning a new head), and
stable module paths for intermediate outputs (for FitNets/attention hints).
Putting both here means the training code never special-cases an architecture.
"""

from __future__ import annotations

import torch
from torch import nn

# Side length each variant is designed for; resolution multipliers scale it.
BASE_SIDE = {"imagenet": 224, "cifar": 32}


def input_size_for(variant: str, in_chans: int, resolution: float = 1.0) -> tuple[int, int, int]:
    """Default (C, H, W) for a variant, with MobileNet's resolution multiplier rho applied."""
    side = round(BASE_SIDE[variant] * resolution)
    return (in_chans, side, side)


class StudentNet(nn.Module):
    """Base for zoo models. Subclasses set `stem`, `stages`, `head` and optionally `final`.

    - `stem`: the first convs (and max-pool at ImageNet size).
    - `stages`: nn.Sequential, one entry per resolution level; `stages.N` paths are hint points.
    - `final`: layers after the last stage that still belong to the feature map (e.g. 1x1 conv to 1280).
    - `head`: pooling + classifier, mapping the feature map to logits.
    """

    stem: nn.Module
    stages: nn.Sequential
    final: nn.Module
    head: nn.Module
    num_features: int
    default_input_size: tuple[int, int, int]

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Feature map before pooling: (N, num_features, H', W')."""
        return self.final(self.stages(self.stem(x)))

    def forward_head(self, x: torch.Tensor) -> torch.Tensor:
        """Logits from the feature map (pooled features when num_classes=0)."""
        return self.head(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))

    def hint_points(self) -> list[str]:
        """Module paths of stage outputs, shallow to deep, for `get_submodule` / forward hooks."""
        return [f"stages.{i}" for i in range(len(self.stages))]
