"""Trained low-bit students for export tests: exported files must be judged on trained weights
(a fresh student in eval mode gives nearly the same output for every input)."""

from __future__ import annotations


def train_simulated(scheme: str, arch: dict, x, y, steps: int, batch: int = 32, lr: float = 1e-2):
    """A zoo student quantized with ``scheme``, trained ``steps`` Adam steps (one-cycle) on (x, y) under
    ``students.simulate_export`` (hooks kept), returned in eval mode: trained weights for export tests."""
    import torch
    import torch.nn.functional as F

    import students

    torch.manual_seed(0)
    model = students.quantize(students.create_model(**arch), scheme).train()
    students.simulate_export(model)
    opt = torch.optim.Adam(model.parameters(), lr)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, lr, total_steps=steps)
    g = torch.Generator().manual_seed(0)
    for _ in range(steps):
        idx = torch.randint(0, len(x), (batch,), generator=g)
        loss = F.cross_entropy(model(x[idx]), y[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        students.clip_latent_(model)
    return model.eval()
