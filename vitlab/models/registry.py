"""Named presets (a table, as big_vision's "S/16"), ``create_model`` / ``list_models``, and timm registration.

Every preset is also registered in timm's registry as ``vitlab_<name>``, so after ``import vitlab``,
``timm.create_model("vitlab_vit_small_patch16_224")`` builds a vitlab model.
"""
from __future__ import annotations

import fnmatch
from typing import Any

from timm.models import register_model

from .config import ViTConfig
from .vit import VisionTransformer

# width, depth, heads, mlp ratio
WIDTHS: dict[str, tuple[int, int, int, float]] = {
    "micro": (64, 6, 4, 2.0),     # ~0.2M params: the CPU quickstart size
    "tiny": (192, 12, 3, 4.0),    # ViT-Ti
    "small": (384, 12, 6, 4.0),   # ViT-S
    "base": (768, 12, 12, 4.0),   # ViT-B
    "lite7": (256, 7, 4, 2.0),    # ViT-Lite-7 / CCT-7 (Hassani et al.)
}


def _preset(width: str, **cfg: Any) -> dict[str, Any]:
    dim, depth, heads, mlp = WIDTHS[width]
    return {"embed_dim": dim, "depth": depth, "num_heads": heads, "mlp_ratio": mlp, **cfg}


PRESETS: dict[str, dict[str, Any]] = {
    # ImageNet, exactly timm's shapes (vit_*_patch16_224); conv-stem variants drop one block (Xiao et al.)
    "vit_tiny_patch16_224": _preset("tiny", tokenizer="patch", patch_size=16, img_size=224),
    "vit_small_patch16_224": _preset("small", tokenizer="patch", patch_size=16, img_size=224),
    "vit_base_patch16_224": _preset("base", tokenizer="patch", patch_size=16, img_size=224),
    "vitc_tiny_224": _preset("tiny", tokenizer="conv", patch_size=16, img_size=224, depth=11),
    "vitc_small_224": _preset("small", tokenizer="conv", patch_size=16, img_size=224, depth=11),
    "vitc_base_224": _preset("base", tokenizer="conv", patch_size=16, img_size=224, depth=11),
    # CIFAR (32 px): ViT-Lite-7/4 and CCT-7/3x1 shapes, plus the conv stem at the same width and depth
    "vit_lite_7_patch4_32": _preset("lite7", tokenizer="patch", patch_size=4, img_size=32, num_classes=10),
    "vit_lite_7_conv4_32": _preset("lite7", tokenizer="conv", patch_size=4, img_size=32, num_classes=10),
    "cct_7_3x1_32": _preset("lite7", tokenizer="cct", cct_layers=1, cct_kernel=3, pool="seq", img_size=32,
                            num_classes=10),
    # Fashion-MNIST (28 px, 1 channel): one width and depth, three tokenizers
    "vit_micro_patch4_28": _preset("micro", tokenizer="patch", patch_size=4, img_size=28, in_chans=1,
                                   num_classes=10),
    "vit_micro_conv4_28": _preset("micro", tokenizer="conv", patch_size=4, img_size=28, in_chans=1,
                                  num_classes=10),
    "cct_micro_28": _preset("micro", tokenizer="cct", cct_layers=2, pool="seq", img_size=28, in_chans=1,
                            num_classes=10),
}


def list_models(pattern: str = "*") -> list[str]:
    """Preset names matching a shell-style pattern, sorted."""
    return sorted(n for n in PRESETS if fnmatch.fnmatch(n, pattern))


def get_config(name: str | None = None, **overrides: Any) -> ViTConfig:
    """The ``ViTConfig`` of a preset (or of the defaults when ``name`` is None) with overrides applied."""
    if name is not None and name not in PRESETS:
        raise ValueError(f"unknown model {name!r}; available: {list_models()}")
    return ViTConfig.from_dict({**(PRESETS[name] if name else {}), **overrides})


def create_model(name: str | None = None, pretrained: str | None = None, **overrides: Any) -> VisionTransformer:
    """Build a vitlab model from a preset name and/or config fields; ``pretrained`` loads weights into it.

    Args:
        name: a preset from ``list_models()``; None starts from ``ViTConfig``'s defaults.
        pretrained: weights to load (see ``vitlab.models.pretrained.load_pretrained``).
        **overrides: any ``ViTConfig`` field, e.g. ``num_classes=10, tokenizer="conv"``.
    """
    if pretrained:  # the checkpoint's own layout decides what the preset and overrides leave open
        from .pretrained import create_pretrained
        return create_pretrained(name, pretrained, **overrides)
    return VisionTransformer(get_config(name, **overrides))


_TIMM_ONLY_KWARGS = ("pretrained_cfg", "pretrained_cfg_overlay", "cache_dir")


def _timm_entrypoint(preset: str):
    def entrypoint(pretrained: bool = False, **kwargs: Any) -> VisionTransformer:
        for key in _TIMM_ONLY_KWARGS:
            kwargs.pop(key, None)
        if "global_pool" in kwargs:  # timm's word for pooling
            kwargs["pool"] = {"token": "cls", "avg": "avg"}.get(kwargs.pop("global_pool"), "unknown")
        if pretrained:
            raise ValueError("vitlab models have no hub weights; use vitlab.create_model(name, pretrained=PATH)")
        return create_model(preset, **kwargs)

    entrypoint.__name__ = entrypoint.__qualname__ = f"vitlab_{preset}"
    entrypoint.__module__ = __name__
    entrypoint.__doc__ = f"vitlab preset {preset!r} ({PRESETS[preset]})."
    return entrypoint


for _name in PRESETS:
    globals()[f"vitlab_{_name}"] = register_model(_timm_entrypoint(_name))
