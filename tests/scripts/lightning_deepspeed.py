"""Plain Lightning (no Ray) on the CPU DeepSpeed strategy; run under torchrun with 2 processes.

Usage: torchrun --nproc_per_node 2 tests/scripts/lightning_deepspeed.py STAGE OUT_JSON
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


class Regression(pl.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(8, 32), nn.ReLU(), nn.Linear(32, 1))
        self.losses: list[float] = []

    def training_step(self, batch, _):
        x, y = batch
        loss = nn.functional.mse_loss(self.net(x), y)
        self.losses.append(loss.item())
        return loss

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.05)


def main() -> None:
    stage, out = int(sys.argv[1]), sys.argv[2]
    torch.set_num_threads(1)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(512, 8, generator=g)
    y = x @ torch.randn(8, 1, generator=g)
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=32)
    model = Regression()
    trainer = pl.Trainer(max_epochs=3, accelerator="cpu", devices=2, num_nodes=1,
                         strategy=make_strategy(stage, "32", 32), logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, use_distributed_sampler=True)
    trainer.fit(model, loader)
    if trainer.global_rank == 0:
        with open(out, "w") as f:
            json.dump({"first": sum(model.losses[:4]) / 4, "last": sum(model.losses[-4:]) / 4,
                       "world": trainer.world_size, "engine": type(trainer.strategy.model).__name__}, f)
    # Tear the gloo group down before the interpreter does: left to exit, its threads were once
    # destroyed while joinable ("terminate called without an active exception", SIGABRT).
    if torch.distributed.is_initialized():
        torch.distributed.barrier()
        torch.distributed.destroy_process_group()


if __name__ == "__main__":
    main()
