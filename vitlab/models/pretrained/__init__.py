"""Pretrained weights: read from any source, work out the layout, adapt to the model, load, and say what was done.

Sources (``sources.py``): a timm model name (``vit_small_patch16_224.augreg_in21k_ft_in1k``, fetched by timm when
online), ``hf-hub:org/name[@revision]`` (a hub folder, downloaded by huggingface_hub), a local file (.safetensors;
.pth/.pt/.bin state_dict; a timm train checkpoint; a vitlab/Lightning .ckpt) or a local hub-style folder
(config.json + model.safetensors). Files are read safely: safetensors, or ``torch.load(weights_only=True)``,
which refuses pickles that would run code - nothing in them is executed.

Layout (``layout.py``): ``create_pretrained`` reads the source once and takes the architecture from it - class
token, registers, whether positions cover the prefix tokens (timm's ``no_embed_class``), fc_norm, qkv bias,
LayerScale, qk-norm and, without a preset, the widths and depth from the tensor shapes; the head count from the
source's config (vitlab's, a .ckpt's hyper-parameters, timm's ``model_args`` or architecture). Explicit overrides >
the checkpoint > the preset. What vitlab cannot express (MAP pooling, CLIP's pre-norm, SwiGLU, ...) is an error
naming it.

Adaptation (``adapt.py``): another class count (head re-initialised), image size or patch grid (positions resampled
bicubic, patch kernel resampled as FlexiViT), input channels (first conv adapted as timm does), pooling (final norm
moved, unused class token dropped), another tokenizer (transplant: encoder loaded, tokenizer initialised fresh). One
table lists every tensor that was loaded, resampled, adapted, dropped or re-initialised; anything else that does
not fit is an error listing the keys.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from torch import nn

from ..checkpoint import TRAINING_FIELDS, UnsafeCheckpointError, load_state_dict_checked, upgrade_config_fields
from .adapt import LoadReport, adapt_state_dict
from .layout import (LAYOUT_FIELDS, POOL_FIELDS, check_expressible, infer_layout, read_tokenizer_layout,
                     resolve_config)
from .sources import STATE_DICT_KEYS, WEIGHT_FILES, Source, read_folder_config, read_source, read_state_dict


def load_pretrained(model: nn.Module, source: str | Path | Source, verbose: bool = True) -> LoadReport:
    """Read ``source``, adapt it to ``model``, load it strictly, print the table (if verbose) and return it."""
    source = read_source(source)
    check_expressible(source)
    state = dict(source.state)
    report = adapt_state_dict(model, state)
    load_state_dict_checked(model, state, source.where)
    if verbose:
        print(f"pretrained weights from {source.where}:\n{report.table()}")
    return report


def create_pretrained(name: str | None, source: str | Path | Source, **overrides: Any) -> nn.Module:
    """A model for ``source``'s weights, its architecture read from the source (see ``resolve_config``), the
    preset ``name`` and ``overrides``; the weights adapted where the config asks for it, loaded and reported."""
    from ..vit import VisionTransformer

    source = read_source(source)
    check_expressible(source)
    cfg = resolve_config(name, source, overrides)
    layout = ", ".join(f"{k}={getattr(cfg, k)!r}" for k in ("tokenizer", "num_heads", *LAYOUT_FIELDS))
    print(f"architecture for {source.where}: {layout}")
    model = VisionTransformer(cfg)
    load_pretrained(model, source)
    return model


__all__ = ["LAYOUT_FIELDS", "POOL_FIELDS", "STATE_DICT_KEYS", "TRAINING_FIELDS", "WEIGHT_FILES", "LoadReport",
           "Source", "UnsafeCheckpointError", "adapt_state_dict", "check_expressible", "create_pretrained",
           "infer_layout", "load_pretrained", "load_state_dict_checked", "read_folder_config", "read_source",
           "read_state_dict", "read_tokenizer_layout", "resolve_config", "upgrade_config_fields"]
