"""TensorBoard views of a low-precision student's weights.

For each quantized layer, at every validation: a histogram of the weight the
forward actually uses (``quantized_weight()``: for a ternary layer three
spikes at -wn, 0, +wp) and of the latent full-precision weight the optimizer
moves, and for schemes with integer codes (binary, ternary: the scheme's
``code_counts``) the fraction of each code (-1 / 0 / +1) as scalars. A ternary layer whose zero fraction climbs towards
1 is dying; one whose codes stop changing has converged. ``quant/frac_zero``
is the sparsity over all ternary layers together.

Under ZeRO-3 the parameters are partitioned across ranks, so every rank joins
the gather and rank 0 writes.
"""

from __future__ import annotations

import contextlib

import lightning.pytorch as pl
import torch

from students import quantized_layers


def code_fractions(counts: dict[str, int]) -> dict[str, float]:
    """{code name: fraction of the weights} from a scheme's ``code_counts``."""
    n = max(1, sum(counts.values()))
    return {code: count / n for code, count in counts.items()}


class QuantStats(pl.Callback):
    """Histograms of quantized and latent weights, and code fractions, for every low-bit layer."""

    def __init__(self, gather_zero3: bool = False) -> None:
        self.gather_zero3 = gather_zero3

    def _gathered(self, params: list[torch.nn.Parameter]):
        if not self.gather_zero3:
            return contextlib.nullcontext()
        import deepspeed

        return deepspeed.zero.GatheredParameters(params, modifier_rank=None)

    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.sanity_checking:
            return
        layers = quantized_layers(pl_module.student)
        if not layers:
            return
        params = [p for _, layer in layers for p in layer.parameters(recurse=False)]
        with self._gathered(params):
            if trainer.is_global_zero and trainer.logger is not None:
                self._log(trainer, layers)

    @torch.no_grad()
    def _log(self, trainer: pl.Trainer, layers: list) -> None:
        writer, step = trainer.logger.experiment, trainer.global_step
        metrics: dict[str, float] = {}
        zeros = total = 0
        for name, layer in layers:
            writer.add_histogram(f"quant/{name}/weight", layer.quantized_weight().float().cpu(), step)
            writer.add_histogram(f"quant/{name}/latent", layer.weight.detach().float().cpu(), step)
            counts = layer.scheme.code_counts(layer)
            for code, frac in code_fractions(counts).items():
                metrics[f"quant/{name}/frac_{code}"] = frac
            if "zero" in counts:  # ternary
                zeros += counts["zero"]
                total += sum(counts.values())
        if total:
            metrics["quant/frac_zero"] = zeros / total
        if metrics:
            trainer.logger.log_metrics(metrics, step=step)
