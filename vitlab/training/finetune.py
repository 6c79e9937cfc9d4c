"""Fine-tuning controls: layer-wise learning-rate decay and which parameters train when.

* ``layer_decay`` (BEiT): timm's own grouping (``param_groups_layer_decay`` over the model's ``group_matcher``):
  pooling, fc_norm and head at the full lr, block i (the last one with the final norm) at
  ``layer_decay ** (depth - i)``, the tokenizer, positions and prefix tokens at ``layer_decay ** (depth + 1)``.
* ``freeze="backbone"``: linear probe, only the head trains.
* ``unfreeze_every_epochs=E``: gradual unfreezing (ULMFiT): the head first, then one more block from the top every
  E epochs, the tokenizer last.
* ``tokenizer_warmup_steps=S``: after a transplant, the fresh tokenizer (and positions) train alone for S steps.

Names are matched after stripping wrapper prefixes (FSDP, activation checkpointing, torch.compile).
"""
from __future__ import annotations

import math
import re

from timm.models._manipulate import group_with_matcher
from torch import nn

WRAPPER_PREFIXES = ("_fsdp_wrapped_module.", "_checkpoint_wrapped_module.", "_orig_mod.")
STEM = ("cls_token", "reg_token", "pos_embed", "patch_embed.")


def clean_name(name: str) -> str:
    for prefix in WRAPPER_PREFIXES:
        name = name.replace(prefix, "")
    return name


def layer_id(name: str, depth: int) -> int:
    """0 for the tokenizer, positions and prefix tokens; i + 1 for block i; depth + 1 for norm, pooling, head."""
    name = clean_name(name)
    if name.startswith(STEM):
        return 0
    match = re.match(r"blocks\.(\d+)\.", name)
    return int(match.group(1)) + 1 if match else depth + 1


def lr_scales(model: nn.Module, layer_decay: float | None) -> dict[str, float]:
    """The multiplier of the peak lr for each parameter name (wrapper prefixes removed) of ``model``, grouped as
    timm's ``param_groups_layer_decay`` groups it (timm's function takes a model and its optimizer settings; this
    keeps vitlab's own groups: frozen parameters, no-decay names, wrapped names)."""
    names = [clean_name(n) for n, _ in model.named_parameters()]
    if layer_decay is None:
        return dict.fromkeys(names, 1.0)
    layer_map = group_with_matcher(((n, None) for n in names), model.group_matcher(coarse=False), reverse=True)
    top = max(layer_map.values())
    return {n: layer_decay ** (top - layer_map[n]) for n in names}


def trainable(name: str, depth: int, *, step: int, epoch: int, freeze: str, unfreeze_every_epochs: float | None,
              tokenizer_warmup_steps: int) -> bool:
    """Whether parameter ``name`` trains at this step and epoch."""
    lid = layer_id(name, depth)
    if step < tokenizer_warmup_steps:
        return lid == 0
    if freeze == "backbone":
        return lid == depth + 1 and clean_name(name).startswith("head.")
    if unfreeze_every_epochs:
        unfrozen_blocks = math.floor(epoch / unfreeze_every_epochs)  # 0 at the start: head, norms, pooling only
        return lid > depth - unfrozen_blocks
    return True


def apply_trainable(model: nn.Module, depth: int, **schedule) -> int:
    """Set ``requires_grad`` on every parameter of ``model`` by :func:`trainable`; returns how many train."""
    n = 0
    for name, p in model.named_parameters():
        on = trainable(name, depth, **schedule)
        p.requires_grad_(on)
        n += int(on)
    return n
