"""Export a vitlab patch-tokenizer model as a timm VisionTransformer folder (config.json + model.safetensors).

The folder (written by ``vitlab.models.hub.save_hub_folder``) loads with ``timm.create_model("local-dir:FOLDER")``
or, naming the architecture,
``timm.create_model("vit_base_patch16_224", pretrained=True, pretrained_cfg_overlay=dict(file=...), **model_args)``
and gives the same logits. Conv-stem and CCT tokenizers and sequence pooling have no timm equivalent.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import timm
from torch import nn

from .config import ViTConfig

TIMM_ARCH = "vit_base_patch16_224"  # any timm ViT entrypoint: model_args override all of its shapes


def timm_model_args(cfg: ViTConfig) -> dict[str, Any]:
    """timm ``VisionTransformer`` keyword arguments for the same architecture, or ValueError naming why not."""
    if cfg.tokenizer != "patch":
        raise ValueError(f"tokenizer={cfg.tokenizer!r} has no timm VisionTransformer equivalent; only 'patch' "
                         f"models export to timm")
    if cfg.pool == "seq":
        raise ValueError("pool='seq' has no timm VisionTransformer equivalent; use 'cls' or 'avg' to export")
    if getattr(cfg, "distilled", False):
        raise ValueError("distilled=True is timm's VisionTransformerDistilled (deit.py), not VisionTransformer")
    return dict(
        img_size=cfg.img_size, patch_size=cfg.patch_size, in_chans=cfg.in_chans, num_classes=cfg.num_classes,
        embed_dim=cfg.embed_dim, depth=cfg.depth, num_heads=cfg.num_heads, mlp_ratio=cfg.mlp_ratio,
        qkv_bias=cfg.qkv_bias, qk_norm=cfg.qk_norm, init_values=cfg.layer_scale_init,
        global_pool="token" if cfg.pool == "cls" else "avg", class_token=cfg.use_class_token,
        reg_tokens=cfg.num_registers, pos_embed="none" if cfg.pos_embed == "none" else "learn",
        no_embed_class=cfg.pos_embed == "sincos" or not cfg.pos_embed_prefix, fc_norm=cfg.use_fc_norm,
    )


def to_timm(model: nn.Module) -> nn.Module:
    """A timm ``VisionTransformer`` holding ``model``'s weights (sin-cos positions become a fixed table)."""
    args = timm_model_args(model.cfg)
    ref = timm.create_model(TIMM_ARCH, pretrained=False, **args)
    state = dict(model.state_dict())
    if model.cfg.pos_embed == "sincos":
        state["pos_embed"] = model.pos_embed.detach().clone()
    ref.load_state_dict(state, strict=True)
    return ref.eval()


def save_timm_folder(model: nn.Module, folder: str | Path, label_names: list[str] | None = None,
                     mean: tuple[float, ...] | None = None, std: tuple[float, ...] | None = None) -> Path:
    """Write ``folder/model.safetensors``, ``config.json`` and ``README.md`` in timm's hub layout, replacing those
    files; only for models timm's VisionTransformer can express (see ``vitlab.models.hub.save_hub_folder`` for
    every tokenizer, model cards and overwrite protection)."""
    from .hub import save_hub_folder

    timm_model_args(model.cfg)  # a ValueError naming what timm cannot express
    return save_hub_folder(model, folder, data_config={"mean": mean, "std": std}, class_names=label_names,
                           overwrite=True)
