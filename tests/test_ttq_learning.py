"""Learning test for ternary students (the issue's acceptance test).

On scikit-learn's digits, a TTQ MobileNet v1 (alpha 0.25, cifar variant: the demo student)
distilled from two quickly trained demo teachers reaches within 3 points of the same student
in full precision, with the same budget: same init, same data order, the demo's loss
(0.3 CE + 0.7 KD at T = 4) and optimizer (SGD lr 0.1, Nesterov, momentum 0.9, weight decay
5e-4, cosine schedule), trained by the project's `DistillModule` under a plain single-process
Lightning Trainer (so its `configure_optimizers`, with the quantizer-scale groups, is what runs).
No Ray: the teachers' logits are computed once, as the offline soft-label cache would hold them.

Before the fix (`kernels.ste.TTQWeightSTE`, grads="normalized"; log-parametrized scales in
`students.qlayers`) this TTQ student stayed at chance (0.10): plain SGD turned its scales
negative within a few steps.
"""

from __future__ import annotations

import math
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
import yaml

ROOT = Path(__file__).resolve().parents[1]
EPOCHS = 15  # student budget, identical for both students
BATCH = 64
TEMPERATURE = 4.0


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def digits(tmp_path_factory):
    from distill.data import load_split, pack_source

    root = tmp_path_factory.mktemp("digits")
    meta = pack_source("sklearn-digits", root, shard_size=100, val_per_class=30)
    x, y = load_split(root, meta, "train")
    xv, yv = load_split(root, meta, "val")
    return SimpleNamespace(x=x, y=y, xv=xv, yv=yv, meta=meta)


def _train_teacher(arch: str, digits, seed: int, epochs: int, **options) -> torch.nn.Module:
    """A demo teacher in a plain loop (the recipe of distill.commands.teacher_training, no augmentation)."""
    from teachers.archs import create_teacher

    torch.manual_seed(seed)
    model = create_teacher(arch, num_classes=10, in_chans=1, **options)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4, nesterov=True)
    steps = epochs * math.ceil(len(digits.x) / BATCH)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=0.05, total_steps=steps)
    gen = torch.Generator().manual_seed(seed)
    model.train()
    for _ in range(epochs):
        for idx in torch.randperm(len(digits.x), generator=gen).split(BATCH):
            loss = F.cross_entropy(model(digits.x[idx]), digits.y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
    return model.eval()


@pytest.fixture(scope="module")
def teacher_logits(digits):
    """[n_teachers][N_train, 10] logits of two demo teachers (smaller widths: seconds to train)."""
    teachers = [
        _train_teacher("digits_cnn", digits, seed=0, epochs=6, width=16),
        _train_teacher("digits_mlp", digits, seed=1, epochs=8, hidden=256),
    ]
    with torch.inference_mode():
        accs = [(t(digits.xv).argmax(1) == digits.yv).float().mean().item() for t in teachers]
        assert min(accs) > 0.85, accs  # real teachers, so KD carries signal
        return [t(digits.x).float() for t in teachers]


def _spec(quantization: dict | None) -> dict:
    doc = yaml.safe_load((ROOT / "configs" / "demo.yaml").read_text())
    doc["student"]["quantization"] = quantization
    doc["trainer"].update({"epochs": EPOCHS, "batch_size": BATCH})
    return doc


def _distill(digits, teacher_logits, quantization: dict | None) -> float:
    """Train the demo student with DistillModule + a single-process Trainer; val top-1."""
    import lightning.pytorch as pl

    from distill.train.module import DistillModule

    n = len(digits.x)
    steps = math.ceil(n / BATCH)
    torch.manual_seed(0)  # same init for both students: quantize() copies the fp weights
    module = DistillModule(_spec(quantization), num_classes=10, in_chans=1, image_size=8, steps_per_epoch=steps)

    def collate(batch):
        idx = torch.tensor(batch)
        out = SimpleNamespace(logits=[z[idx] for z in teacher_logits], hints=[{} for _ in teacher_logits])
        return (digits.x[idx], digits.y[idx], idx.tolist()), out

    loader = torch.utils.data.DataLoader(
        list(range(n)), batch_size=BATCH, shuffle=True, collate_fn=collate,
        generator=torch.Generator().manual_seed(0))
    trainer = pl.Trainer(
        max_epochs=EPOCHS, accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0, limit_val_batches=0)
    trainer.fit(module, train_dataloaders=loader)
    student = module.student.eval()
    with torch.inference_mode():
        return (student(digits.xv).argmax(1) == digits.yv).float().mean().item()


@pytest.mark.filterwarnings("ignore::UserWarning")
@pytest.mark.filterwarnings("ignore::PendingDeprecationWarning")
def test_ttq_student_distills_within_3_points_of_fp(digits, teacher_logits):
    fp = _distill(digits, teacher_logits, None)
    ttq = _distill(digits, teacher_logits, {"scheme": "ttq"})
    print(f"val top-1: fp {fp:.3f}, ttq {ttq:.3f}")
    assert fp > 0.85, fp  # the fp student learned (chance is 0.10)
    assert ttq >= fp - 0.03, (fp, ttq)


def test_quantizer_scales_get_their_own_optimizer_group():
    """scale_lr reaches the optimizer: TTQ's log-scales train at lr x scale_lr without decay."""
    from distill.train.module import DistillModule
    from students.quantize import quantized_layers

    module = DistillModule(_spec({"scheme": "ttq", "options": {"scale_lr": 0.5}}), 10, 1, 8, 24)
    opt = module.configure_optimizers()["optimizer"]
    main, scales = opt.param_groups
    assert main["lr"] == pytest.approx(0.1) and main["weight_decay"] == pytest.approx(5e-4)
    assert scales["lr"] == pytest.approx(0.05) and scales["weight_decay"] == 0.0
    expected = {id(p) for _, m in quantized_layers(module.student) for p in (m.log_wp, m.log_wn)}
    assert {id(p) for p in scales["params"]} == expected
    assert not expected & {id(p) for p in main["params"]}
    fp = DistillModule(_spec(None), 10, 1, 8, 24).configure_optimizers()["optimizer"]
    assert len(fp.param_groups) == 1  # nothing changes for full-precision students
