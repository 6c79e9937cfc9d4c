"""Optimizer parameter groups and the learning-rate schedule of :class:`~vitlab.training.ImageClassifier`.

The optimizer itself is timm's (``create_optimizer_v2`` by name); what is vitlab's is which parameters decay, the
per-layer lr scales (``layer_decay``, from timm's ``group_matcher``) and the per-step warmup-cosine multiplier.
"""
from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from vitlab.training.finetune import clean_name


def warmup_cosine(step: int, warmup_steps: int, total_steps: int, min_ratio: float) -> float:
    """Learning-rate multiplier at optimizer step ``step``: linear from 1/warmup_steps to 1 over
    ``warmup_steps``, then cosine from 1 down to ``min_ratio`` at ``total_steps``."""
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
    return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


def param_groups(model: nn.Module, no_decay_names: set[str], lr_scales: dict[str, float], weight_decay: float,
                 keep_frozen: bool = False) -> list[dict[str, Any]]:
    """Parameter groups by (weight decay, lr scale): no decay for ``no_decay_names`` (1-d parameters, positions and
    tokens); with layer decay one lr scale per layer. With ``keep_frozen`` frozen parameters stay in (no gradient:
    the optimizer skips them), so unfreezing during training needs no new optimizer."""
    groups: dict[tuple[bool, float], dict[str, Any]] = {}
    for name, p in model.named_parameters():
        if not p.requires_grad and not keep_frozen:
            continue
        name = clean_name(name)
        no_decay = name in no_decay_names
        scale = lr_scales[name]
        group = groups.setdefault((no_decay, scale), {
            "params": [], "weight_decay": 0.0 if no_decay else weight_decay, "lr_scale": scale,
            "name": ("no_decay" if no_decay else "decay") + (f"_x{scale:.3g}" if scale != 1.0 else "")})
        group["params"].append(p)
    return list(groups.values())


def use_fused_adamw(device: torch.device, precision_plugin: Any, gradient_clip_val: float | None) -> bool:
    """Fused AdamW kernels on CUDA, except with fp16 loss scaling and gradient clipping together: the fused step
    unscales the gradients itself, so they could only be clipped while still scaled (Lightning refuses that)."""
    scaled = getattr(precision_plugin, "scaler", None) is not None
    return device.type == "cuda" and not (scaled and bool(gradient_clip_val))


__all__ = ["warmup_cosine", "param_groups", "use_fused_adamw"]
