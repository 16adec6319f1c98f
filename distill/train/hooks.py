"""Capturing a module's intermediate outputs by module path with forward hooks."""

from __future__ import annotations

import torch
from torch import nn


class FeatureTap:
    """Keeps the latest output of each named submodule (for hint losses)."""

    def __init__(self, model: nn.Module, paths: list[str]) -> None:
        self.features: dict[str, torch.Tensor] = {}
        self._handles = []
        for path in paths:
            try:
                module = model.get_submodule(path)
            except AttributeError:
                raise ValueError(f"no submodule {path!r} in {type(model).__name__}") from None
            self._handles.append(module.register_forward_hook(self._store(path)))

    def _store(self, path: str):
        def hook(_module: nn.Module, _inputs: tuple, output: torch.Tensor) -> None:
            self.features[path] = output

        return hook

    def pop(self) -> dict[str, torch.Tensor]:
        feats, self.features = self.features, {}
        return feats

    def remove(self) -> None:
        for h in self._handles:
            h.remove()
