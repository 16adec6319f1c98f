"""The LightningModule that distills: student, loss terms, optimizer.

A training batch arrives as ``((x, y, keys), TeacherOutput | None)``: the
prefetcher already attached the teachers' answers for this exact view. The
module runs the student once (hooks capture hint features), builds one
``LossInputs``, and sums the weighted terms, logging each under ``loss/<name>``.
"""

from __future__ import annotations

import math
from typing import Any

import lightning.pytorch as pl
import torch
from torch import nn

import students
from distill.losses import LossInputs, build_term
from distill.spec import JobSpec
from distill.train.hooks import FeatureTap


def build_student(spec: JobSpec, num_classes: int, in_chans: int) -> nn.Module:
    model = students.create_model(spec.student.arch, num_classes=num_classes, in_chans=in_chans,
                                  variant=spec.student.variant, **spec.student.options)
    if spec.student.quantization is not None:
        q = spec.student.quantization
        model = students.quantize(model, q.scheme, **q.options)
        if q.simulate_export:  # hooks on the model: training, validation and `distill eval` all see them
            students.simulate_export(model)
    return model


def accuracy(logits: torch.Tensor, targets: torch.Tensor, k: int = 1) -> torch.Tensor:
    k = min(k, logits.shape[1])
    return (logits.topk(k, dim=1).indices == targets[:, None]).any(dim=1).float().mean()


class DistillModule(pl.LightningModule):
    def __init__(self, spec: dict[str, Any], num_classes: int, in_chans: int, image_size: int,
                 steps_per_epoch: int) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.spec = JobSpec.model_validate(spec)
        self.num_classes = num_classes
        self.steps_per_epoch = steps_per_epoch
        self.student = build_student(self.spec, num_classes, in_chans)
        members = self.spec.teachers.members if self.spec.teachers.mode != "none" else []
        self.teacher_names = [m.name for m in members]
        self.teacher_weights = [m.weight for m in members]
        self.terms = nn.ModuleList(
            build_term(t.type, t.label(), **t.options()) for t in self.spec.loss.terms)
        self.term_weights = [t.weight for t in self.spec.loss.terms]
        hint_paths = sorted({p for term in self.terms for p in term.student_hint_paths()})
        self.tap = FeatureTap(self.student, hint_paths) if hint_paths else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.student(x)

    def on_fit_start(self) -> None:
        """Match floating buffers to the parameters' dtype under bf16/fp16.

        DeepSpeed casts parameters to the training precision but leaves buffers
        alone, so BatchNorm would see bf16 weights next to fp32 running
        statistics (and BinaryConnect a bf16 weight next to an fp32 scale),
        which the CPU kernels refuse. Those buffers follow the parameters; the
        student is saved and evaluated in fp32 again. torch.ao fake-quant state
        stays fp32, the only dtype its kernels take.
        """
        from torch.ao.quantization import FakeQuantizeBase, ObserverBase

        dtype = next(self.student.parameters()).dtype
        if dtype not in (torch.bfloat16, torch.float16):
            return
        for module in self.modules():
            if isinstance(module, FakeQuantizeBase | ObserverBase):
                continue
            for name, buf in module.named_buffers(recurse=False):
                if buf.is_floating_point() and buf.dtype != dtype:
                    setattr(module, name, buf.to(dtype))

    def _inputs(self, logits: torch.Tensor, targets: torch.Tensor, teacher_out: Any,
                progress: float | None = None) -> LossInputs:
        return LossInputs(
            student_logits=logits, targets=targets,
            teacher_logits=[z.to(logits.device) for z in teacher_out.logits] if teacher_out else [],
            teacher_names=self.teacher_names, teacher_weights=self.teacher_weights,
            student_feats=self.tap.pop() if self.tap else {},
            teacher_feats=[{k: v.to(logits.device).float() for k, v in h.items()} for h in teacher_out.hints]
            if teacher_out else [],
            epoch=self.current_epoch, progress=progress)

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        (x, y, _keys), teacher_out = batch
        logits = self.student(x)
        # Fractional epochs at the end of this step: the terms' warm-up ramps step by step.
        inputs = self._inputs(logits, y, teacher_out, self.current_epoch + (batch_idx + 1) / self.steps_per_epoch)
        total = logits.new_zeros(())
        for term, weight in zip(self.terms, self.term_weights, strict=True):
            if not term.active(self.current_epoch):
                continue
            value = term(inputs)
            self.log(f"loss/{term.name}", value, on_step=True, on_epoch=True, batch_size=len(x),
                     sync_dist=True)
            total = total + weight * value
        self.log("loss/total", total, on_step=True, on_epoch=True, prog_bar=True, batch_size=len(x),
                 sync_dist=True)
        # Logit spread (std over classes): KD asks the student for the teacher's; a gap that stays wide
        # is what a BN-free or ReLU-headed student cannot close (distill.losses.guards).
        self.log("logits/student_std", logits.detach().float().std(dim=1).mean(), on_step=False, on_epoch=True,
                 batch_size=len(x), sync_dist=True)
        if inputs.teacher_logits:
            self.log("logits/teacher_std", torch.stack(inputs.teacher_logits).float().std(dim=2).mean(), on_step=False,
                     on_epoch=True, batch_size=len(x), sync_dist=True)
        hard = y if y.dim() == 1 else y.argmax(dim=1)
        self.log("train/top1", accuracy(logits.detach(), hard), on_step=False, on_epoch=True, batch_size=len(x),
                 sync_dist=True)
        self.log("lr", self.trainer.optimizers[0].param_groups[0]["lr"], on_step=True, on_epoch=False)
        return total

    def validation_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        x, y, _keys = batch
        logits = self.student(x)
        if self.tap:
            self.tap.pop()
        # Every rank scores the whole validation set; the epoch-end sync only confirms they agree.
        self.log("val/top1", accuracy(logits, y), on_epoch=True, prog_bar=True, batch_size=len(x), sync_dist=True)
        self.log("val/top5", accuracy(logits, y, 5), on_epoch=True, batch_size=len(x), sync_dist=True)
        return logits.detach()  # for the validation callbacks (confusion matrix, teacher agreement)

    def configure_optimizers(self) -> Any:
        from students.quantize import quantizer_param_groups

        t = self.spec.trainer
        params = [p for p in self.parameters() if p.requires_grad]
        # Learned quantizer state (TTQ's log-scales) in groups of its own: lr x the layer's
        # scale_lr option, no weight decay. The first group stays "all other parameters".
        quant = quantizer_param_groups(self.student)
        taken = {id(p) for g in quant for p in g["params"]}
        groups = [{"params": [p for p in params if id(p) not in taken]}]
        groups += [{"params": g["params"], "lr": t.lr * g["lr_scale"], "weight_decay": g["weight_decay"]}
                   for g in quant]
        if t.optimizer == "sgd":
            opt = torch.optim.SGD(groups, lr=t.lr, momentum=t.momentum, weight_decay=t.weight_decay, nesterov=True)
        else:
            opt = torch.optim.AdamW(groups, lr=t.lr, weight_decay=t.weight_decay)
        total = max(1, t.epochs * self.steps_per_epoch)
        if t.schedule == "constant":
            return opt
        if t.schedule == "onecycle":
            sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=[g["lr"] for g in opt.param_groups],
                                                        total_steps=total)
        else:
            sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 0.5 * (1 + math.cos(math.pi * min(s, total) / total)))
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}
