"""DeiT's hard and soft distillation (Touvron et al. 2021): a frozen teacher's logits supervise the distillation
head of a distilled ViT (``ViTConfig.distilled``), the labels its class head; a model without the distillation
token takes both terms on its one head.

loss = (1 - alpha) * base(class head, labels) + alpha * distill(distillation head, teacher), with distill as DeiT's
``DistillationLoss`` (facebookresearch/deit, losses.py):

* soft: KL(softmax(teacher / tau) || softmax(student / tau)) * tau^2, summed and divided by the logits' numel;
* hard: cross-entropy against the teacher's top class.

The teacher sees the same (possibly mixed) images as the student. It is held outside the LightningModule's
children, so it is neither trained, nor in ``state_dict`` (checkpoints), nor in the optimizer's parameters.
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable, Literal

import torch
import torch.nn.functional as F
from torch import nn

from vitlab.training.settings import Distill
from vitlab.training.teacher_cache import TeacherCache


def distillation_loss(student_dist: torch.Tensor, teacher_logits: torch.Tensor, kind: Literal["soft", "hard"],
                      tau: float = 1.0) -> torch.Tensor:
    """DeiT's distillation term: the distillation head's logits (B, K) against the teacher's (B, K)."""
    if kind == "soft":
        T = tau
        return F.kl_div(F.log_softmax(student_dist / T, dim=1), F.log_softmax(teacher_logits / T, dim=1),
                        reduction="sum", log_target=True) * (T * T) / student_dist.numel()
    return F.cross_entropy(student_dist, teacher_logits.argmax(dim=1))


def build_teacher(settings: Distill, num_classes: int, in_chans: int) -> nn.Module:
    """The teacher ``settings.teacher`` names: a ``vitlab fit`` ``.ckpt`` (a vitlab ViT, or a timm model trained with
    ``model.timm_model``) or a timm model name (+ ``teacher_weights``); frozen,
    in eval mode, with ``num_classes`` outputs."""
    name = settings.teacher
    assert name is not None
    if Path(name).is_file() or name.endswith(".ckpt"):
        from vitlab.models.checkpoint import load_checkpoint, read_checkpoint
        from vitlab.training.timm_model import load_timm_checkpoint
        if not Path(name).is_file():
            raise ValueError(f"distill.teacher={name!r}: no such checkpoint")
        if settings.teacher_weights is not None:
            raise ValueError(f"distill.teacher_weights is for a timm teacher; distill.teacher={name!r} is a "
                             f"vitlab checkpoint with its own weights")
        ckpt = read_checkpoint(name)
        hparams = ckpt.get("hyper_parameters") if isinstance(ckpt, dict) else None
        if isinstance(hparams, dict) and hparams.get("timm_model") is not None:  # a CNN of model.timm_model
            teacher = load_timm_checkpoint(name, hparams, ckpt.get("state_dict") or {})
        else:
            teacher = load_checkpoint(name).model
    else:
        import timm
        if not timm.is_model(name):
            raise ValueError(f"distill.teacher={name!r} is neither a vitlab .ckpt file nor a timm model name")
        teacher = timm.create_model(name, pretrained=False, num_classes=num_classes, in_chans=in_chans)
        if settings.teacher_weights is not None:
            from vitlab.models.checkpoint import load_state_dict_checked
            from vitlab.models.pretrained import read_state_dict
            load_state_dict_checked(teacher, read_state_dict(settings.teacher_weights),
                                    f"distill.teacher_weights={settings.teacher_weights!r}")
    out = getattr(teacher, "num_classes", num_classes)
    if out != num_classes:
        raise ValueError(f"distill.teacher={name!r} predicts {out} classes; the student has {num_classes}")
    return teacher.eval().requires_grad_(False)


class Distiller:
    """The teacher and DeiT's loss. Not an ``nn.Module``: the teacher stays out of the student's state_dict.

    Args:
        settings: ``model.distill``.
        num_classes: The student's classes (the teacher must predict as many).
        in_chans: The images' channels (a timm teacher is built for them).
    """

    def __init__(self, settings: Distill, num_classes: int, in_chans: int) -> None:
        self.settings = settings
        self.num_classes, self.in_chans = num_classes, in_chans
        self._teacher: nn.Module | None = None
        self.cache = TeacherCache() if settings.cache else None
        name = settings.teacher
        if name is not None and not Path(name).is_file():  # a bad name fails now, not at the start of fit
            import timm
            if name.endswith(".ckpt") or not timm.is_model(name):
                raise ValueError(f"distill.teacher={name!r} is neither a vitlab .ckpt file nor a timm model name")

    @property
    def teacher(self) -> nn.Module:
        """Built on first use (fit), not when a checkpoint is merely evaluated."""
        if self._teacher is None:
            self._teacher = build_teacher(self.settings, self.num_classes, self.in_chans)
        return self._teacher

    def to(self, device: torch.device) -> "Distiller":
        self.teacher.to(device).eval()
        return self

    @torch.no_grad()
    def teacher_logits(self, x: torch.Tensor) -> torch.Tensor:
        """The frozen teacher's logits (B, K) of the images (B, C, H, W), once per batch (from the cache for the
        images it has seen in an earlier epoch)."""
        teacher = self.teacher
        if teacher.training:  # Lightning's train() of the student never reaches it, but a user's call might
            teacher.eval()
        if self.cache is not None:
            return self.cache.lookup(x, lambda images: teacher(images).float())
        return teacher(x).float()

    def end_epoch(self) -> None:
        """Called after each training epoch: the cache decides whether the augmentations allow it."""
        if self.cache is not None:
            self.cache.end_epoch()

    def loss(self, x: torch.Tensor, logits: torch.Tensor, logits_dist: torch.Tensor, target: torch.Tensor,
             base_criterion: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
             ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(loss, base, distill)`` for the student's class-head and distillation-head logits (B, K) of ``x``."""
        s = self.settings
        base = base_criterion(logits, target)
        distill = distillation_loss(logits_dist.float(), self.teacher_logits(x), s.kind, s.tau)
        return (1 - s.alpha) * base + s.alpha * distill, base, distill


__all__ = ["Distiller", "build_teacher", "distillation_loss"]
