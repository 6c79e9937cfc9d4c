"""Any timm model as the network of :class:`~vitlab.training.ImageClassifier` (``model.timm_model``), e.g. a small
CNN to train as a distillation teacher with vitlab's data, recipe, run folder and checkpoints.

The ViT-only settings (a vitlab preset or architecture, pretrained vitlab weights, freezing schedules by block, a
distillation token) are refused with a line naming the setting. Everything else trains as for a vitlab ViT: the
optimizer groups (no weight decay on 1-d parameters and on the model's ``no_weight_decay()``), layer decay through
timm's ``group_matcher``, mixup, EMA, TTA. A checkpoint of such a run serves as ``model.distill.teacher``
(:func:`load_timm_checkpoint`).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Optional, Union

import torch
from torch import nn

# arch fields the CLI links from the data module; any other arch field is a ViT's
DATA_FIELDS = ("num_classes", "in_chans", "img_size")


@dataclass(frozen=True)
class DataShape:
    """What a timm network's module knows of its input and output (``ImageClassifier.cfg`` for a ViT); unset fields
    take ``ViTConfig``'s defaults."""

    num_classes: int = 1000
    in_chans: int = 3
    img_size: Union[int, tuple[int, int]] = 224

    @classmethod
    def from_arch(cls, arch: Mapping[str, Any]) -> "DataShape":
        return cls(**{k: arch[k] for k in DATA_FIELDS if arch.get(k) is not None})

    @property
    def img_hw(self) -> tuple[int, int]:
        """(H, W) of the input images."""
        return (self.img_size, self.img_size) if isinstance(self.img_size, int) else tuple(self.img_size)


def check_timm_settings(name: str, preset: Optional[str], arch: Mapping[str, Any], pretrained: Optional[str],
                        freezing: bool, distill_teacher: Optional[str]) -> None:
    """Raise ``ValueError`` naming the first ViT-only setting given with ``timm_model=name``."""
    vit_only = [f"model.arch.{k}={v!r}" for k, v in arch.items() if v is not None and k not in DATA_FIELDS]
    if preset is not None:
        vit_only.insert(0, f"model.preset={preset!r}")
    if pretrained is not None:
        vit_only.append(f"model.pretrained={pretrained!r}")
    if freezing:
        vit_only.append("model.finetune freezing (freeze / unfreeze_every_epochs / tokenizer_warmup_steps)")
    if distill_teacher is not None:
        vit_only.append(f"model.distill.teacher={distill_teacher!r}")
    if vit_only:
        raise ValueError(f"model.timm_model={name!r} trains timm's {name}; {vit_only[0]} is a setting of vitlab's "
                         f"ViT: remove it (or remove model.timm_model)")


def build_timm_model(name: str, num_classes: int, in_chans: int, kwargs: Optional[Mapping[str, Any]] = None
                     ) -> nn.Module:
    """``timm.create_model(name, pretrained=False, num_classes=..., in_chans=..., **kwargs)``; an unknown name or
    keyword is a one-line ``ValueError``."""
    import timm
    if not isinstance(name, str) or not timm.is_model(name):
        close = timm.list_models(f"*{name}*")[:5] if isinstance(name, str) else []
        raise ValueError(f"model.timm_model={name!r} is not a timm model" + (f" (close: {close})" if close else ""))
    kwargs = dict(kwargs or {})
    fixed = {"pretrained", "num_classes", "in_chans"} & set(kwargs)
    if fixed:
        raise ValueError(f"model.timm_kwargs may not set {sorted(fixed)}: the data sets num_classes and in_chans, "
                         f"and weights come from a checkpoint")
    try:
        return timm.create_model(name, pretrained=False, num_classes=num_classes, in_chans=in_chans, **kwargs)
    except TypeError as err:  # an unknown keyword reaches the model's __init__
        raise ValueError(f"model.timm_kwargs={kwargs!r} do not fit timm's {name}: {err}") from None


def no_weight_decay_names(model: nn.Module) -> set[str]:
    """Parameter names without weight decay: 1-d tensors (norms, biases) and the model's ``no_weight_decay()``."""
    skip = set(model.no_weight_decay()) if hasattr(model, "no_weight_decay") else set()
    return {n for n, p in model.named_parameters() if p.ndim <= 1 or n in skip}


def forward_flops(model: nn.Module, in_chans: int, hw: tuple[int, int]) -> float:
    """FLOPs of one image's forward pass, counted by ``torch.utils.flop_counter`` (matmuls and convolutions;
    a MAC is 2 FLOPs), in eval mode under ``no_grad``."""
    from torch.utils.flop_counter import FlopCounterMode
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            model(torch.zeros(1, in_chans, *hw, device=next(model.parameters()).device))  # where the model is
    finally:
        model.train(was_training)
    return float(counter.get_total_flops())


def load_timm_checkpoint(path: str | Path, hparams: Mapping[str, Any], state: Mapping[str, torch.Tensor]
                         ) -> nn.Module:
    """The timm model of a ``vitlab fit`` checkpoint with ``model.timm_model`` (EMA weights when kept), in eval
    mode; ``hparams`` and ``state`` are the checkpoint's ``hyper_parameters`` and ``state_dict``."""
    from vitlab.models.checkpoint import load_state_dict_checked, network_weights
    arch = hparams.get("arch") or {}
    if arch.get("num_classes") is None or arch.get("in_chans") is None:
        raise ValueError(f"{path}: a model.timm_model checkpoint without arch.num_classes/in_chans (not written by "
                         f"`vitlab fit`)")
    model = build_timm_model(hparams["timm_model"], arch["num_classes"], arch["in_chans"], hparams.get("timm_kwargs"))
    weights, _ = network_weights(dict(state), ema=True)
    load_state_dict_checked(model, weights, str(path))
    return model.eval()


__all__ = ["DataShape", "check_timm_settings", "build_timm_model", "no_weight_decay_names", "forward_flops", "load_timm_checkpoint"]
