"""One SGD step (lr 1, no momentum) through the CPU DeepSpeed strategy; prints the weight change.

With ``gradient_clipping`` c in the DeepSpeed config the change is the clipped
gradient, so its norm is at most c; without clipping it is the full gradient.
Usage: torchrun --nproc_per_node 2 tests/scripts/deepspeed_clip.py STAGE PRECISION CLIP OUT_JSON
(CLIP 0 = no clipping).
"""

from __future__ import annotations

import json
import os
import sys

os.environ.setdefault("DS_ACCELERATOR", "cpu")

import lightning.pytorch as pl  # noqa: E402
import torch  # noqa: E402
from torch import nn  # noqa: E402

from cluster.deepspeed_strategy import make_strategy  # noqa: E402
from distill.train.precision import LIGHTNING_PRECISION  # noqa: E402


class Regression(pl.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.net = nn.Sequential(nn.Linear(8, 32), nn.ReLU(), nn.Linear(32, 1))
        self.before: torch.Tensor | None = None

    def _flat(self) -> torch.Tensor:
        return torch.cat([p.detach().float().flatten().clone() for p in self.net.parameters()])

    def on_train_start(self) -> None:
        self.before = self._flat()

    def training_step(self, batch, _):
        x, y = batch
        return 1000 * nn.functional.mse_loss(self.net(x).float(), y)  # a large gradient

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=1.0)


def main() -> None:
    stage, precision, clip, out = int(sys.argv[1]), sys.argv[2], float(sys.argv[3]), sys.argv[4]
    torch.set_num_threads(1)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(64, 8, generator=g)
    y = x @ torch.randn(8, 1, generator=g)
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=32)
    model = Regression()
    trainer = pl.Trainer(max_steps=1, accelerator="cpu", devices=int(os.environ.get("WORLD_SIZE", "1")),
                         strategy=make_strategy(stage, precision, 32, clip or None),
                         precision=LIGHTNING_PRECISION[precision], logger=False, enable_checkpointing=False,
                         enable_progress_bar=False)
    trainer.fit(model, loader)
    if trainer.global_rank == 0:
        change = float((model._flat() - model.before).norm())
        with open(out, "w") as f:
            json.dump({"change_norm": change, "dtype": str(next(model.net.parameters()).dtype),
                       "engine": type(trainer.strategy.model).__name__}, f)


if __name__ == "__main__":
    main()
