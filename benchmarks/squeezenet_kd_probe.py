"""Why KD failed for SqueezeNet: a small in-process probe on scikit-learn digits.

Not the real path (no Ray, no DeepSpeed): one process, one thread, the repository's own loss
terms (``CrossEntropyTerm``, ``KDTerm``), so that the variables that matter can be swept in
minutes: the ReLU on the class scores (``head_relu``), logit standardization (``standardize``),
the temperature and the lr. A digits CNN teacher (20 epochs, 0.99 val) is trained first and its
logits cached. Each student trains ``--steps`` SGD steps (Nesterov, one-cycle, wd 5e-4, batch 64)
on 1,400 digits and is scored on the other 397; one JSON line per run.

    .venv/bin/python -m benchmarks.squeezenet_kd_probe                  # the table in BENCHMARKS.md
    .venv/bin/python -m benchmarks.squeezenet_kd_probe --seeds 0 1 2
"""

from __future__ import annotations

import argparse
import json

import torch

import students
from distill.losses import CrossEntropyTerm, KDTerm, LossInputs
from teachers.archs import create_teacher

# (label, student options, KD weight or 0 for hard labels, temperature, standardize)
RUNS = [
    ("hard", {}, 0.0, 4.0, False),
    ("kd", {}, 0.9, 4.0, False),
    ("kd_ls", {}, 0.9, 2.0, True),
    ("hard, no head ReLU", {"head_relu": False}, 0.0, 4.0, False),
    ("kd, no head ReLU", {"head_relu": False}, 0.9, 4.0, False),
    ("mobilenet_v1 hard", {"arch": "mobilenet_v1", "alpha": 0.25}, 0.0, 4.0, False),
    ("mobilenet_v1 kd", {"arch": "mobilenet_v1", "alpha": 0.25}, 0.9, 4.0, False),
    ("mobilenet_v1 kd_ls", {"arch": "mobilenet_v1", "alpha": 0.25}, 0.9, 2.0, True),
]


def digits() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    from sklearn.datasets import load_digits

    d = load_digits()
    x = torch.tensor(d.images, dtype=torch.float32)[:, None] / 16.0
    x = (x - x.mean()) / x.std()
    perm = torch.randperm(len(x), generator=torch.Generator().manual_seed(0))
    return x, torch.tensor(d.target), perm[:1400], perm[1400:]


def teacher_logits(x: torch.Tensor, y: torch.Tensor, train: torch.Tensor) -> torch.Tensor:
    torch.manual_seed(0)
    t = create_teacher("digits_cnn", num_classes=10)
    opt = torch.optim.SGD(t.parameters(), lr=0.05, momentum=0.9)
    for _ in range(20):
        for idx in train[torch.randperm(len(train))].split(64):
            loss = torch.nn.functional.cross_entropy(t(x[idx]), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
    t.eval()
    with torch.no_grad():
        return t(x)


def train_student(data, z_t: torch.Tensor, options: dict, w_kd: float, temperature: float, standardize: bool,
                  lr: float, steps: int, seed: int) -> float:
    x, y, train, val = data
    options = dict(options)
    arch = options.pop("arch", "squeezenet1_1")
    torch.manual_seed(seed)
    model = students.create_model(arch, num_classes=10, in_chans=1, variant="cifar", **options)
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9, weight_decay=5e-4, nesterov=True)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps)
    ce, kd = CrossEntropyTerm("ce"), KDTerm("kd", temperature=temperature, standardize=standardize)
    g = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        idx = train[torch.randint(0, len(train), (64,), generator=g)]
        inp = LossInputs(model(x[idx]), y[idx], [z_t[idx]], ["t"], [1.0])
        loss = ce(inp) if w_kd == 0 else (1 - w_kd) * ce(inp) + w_kd * kd(inp)
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
    model.eval()
    with torch.no_grad():
        return (model(x[val]).argmax(1) == y[val]).float().mean().item()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--lr", type=float, default=0.005, help="SqueezeNet's (MobileNet runs at 0.1)")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0])
    ap.add_argument("--only", nargs="*", help="run only these labels")
    args = ap.parse_args()
    torch.set_num_threads(1)
    data = digits()
    z_t = teacher_logits(data[0], data[1], data[2])
    for seed in args.seeds:
        for label, options, w_kd, temperature, standardize in RUNS:
            if args.only and label not in args.only:
                continue
            lr = 0.1 if options.get("arch") == "mobilenet_v1" else args.lr
            acc = train_student(data, z_t, options, w_kd, temperature, standardize, lr, args.steps, seed)
            print(json.dumps({"run": label, "seed": seed, "steps": args.steps, "lr": lr, "T": temperature,
                              "val_top1": round(acc, 4)}), flush=True)


if __name__ == "__main__":
    main()
