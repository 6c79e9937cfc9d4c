"""Named presets (a table, as big_vision's "S/16"), ``create_model`` / ``list_models``, and timm registration.

Every preset is also registered in timm's registry as ``vitlab_<name>``, so after ``import vitlab``,
``timm.create_model("vitlab_vit_small_patch16_224")`` builds a vitlab model.
"""
from __future__ import annotations

import fnmatch
from typing import Any

from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.models import build_model_with_cfg, generate_default_cfgs, register_model, resolve_pretrained_cfg

from .config import RENAMED_FIELDS, ViTConfig, merge_fields
from .tokenizers import get_tokenizer
from vitlab.data.stats import CIFAR10_MEAN, CIFAR10_STD, FASHION_MNIST_MEAN, FASHION_MNIST_STD, stats_for_channels
from .vit import TIMM_POOLS, VisionTransformer

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
    "cct_7_3x1_32": _preset("lite7", tokenizer="cct", tokenizer_options={"layers": 1, "kernel": 3}, pool="seq",
                            img_size=32, num_classes=10),
    # Fashion-MNIST (28 px, 1 channel): one width and depth, three tokenizers
    "vit_micro_patch4_28": _preset("micro", tokenizer="patch", patch_size=4, img_size=28, in_chans=1,
                                   num_classes=10),
    "vit_micro_conv4_28": _preset("micro", tokenizer="conv", patch_size=4, img_size=28, in_chans=1,
                                  num_classes=10),
    "cct_micro_28": _preset("micro", tokenizer="cct", tokenizer_options={"layers": 2}, pool="seq", img_size=28,
                            in_chans=1, num_classes=10),
}


def list_models(pattern: str = "*") -> list[str]:
    """Preset names matching a shell-style pattern, sorted."""
    return sorted(n for n in PRESETS if fnmatch.fnmatch(n, pattern))


def get_config(name: str | None = None, **overrides: Any) -> ViTConfig:
    """The ``ViTConfig`` of a preset (or of the defaults when ``name`` is None) with overrides applied
    (``tokenizer_options`` update the preset's while its tokenizer stays, see ``merge_fields``)."""
    if name is not None and name not in PRESETS:
        raise ValueError(f"unknown model {name!r}; available: {list_models()}")
    return ViTConfig.from_dict(merge_fields(PRESETS[name] if name else {}, overrides))


def create_model(name: str | None = None, pretrained: str | None = None, **overrides: Any) -> VisionTransformer:
    """Build a vitlab model from a preset name and/or config fields; ``pretrained`` loads weights into it.

    Args:
        name: a preset from ``list_models()``; None starts from ``ViTConfig``'s defaults.
        pretrained: weights to load (see ``vitlab.models.pretrained.load_pretrained``).
        **overrides: any ``ViTConfig`` field, e.g. ``num_classes=10, tokenizer="cct", tokenizer_options={"layers": 2}``.
    """
    if pretrained:  # the checkpoint's own layout decides what the preset and overrides leave open
        from .pretrained import create_pretrained
        return create_pretrained(name, pretrained, **overrides)
    return VisionTransformer(get_config(name, **overrides))


# ---------------------------------------------------------------------------------------------- timm
# Each preset's pretrained_cfg: the data it is meant for (what timm.data.resolve_model_data_config returns)
_DATA_CFGS = {
    "fashion_mnist": dict(mean=FASHION_MNIST_MEAN, std=FASHION_MNIST_STD, interpolation="bilinear", crop_pct=1.0),
    "cifar10": dict(mean=CIFAR10_MEAN, std=CIFAR10_STD, interpolation="bilinear", crop_pct=1.0),
    "imagenet": dict(mean=IMAGENET_DEFAULT_MEAN, std=IMAGENET_DEFAULT_STD, interpolation="bilinear",
                     crop_pct=0.875),  # vitlab's ImageNetDataModule eval transform (timm's defaults)
}


def first_conv(cfg: ViTConfig) -> str:
    """timm's ``first_conv``: the tokenizer's first conv, as a module path of the model."""
    return f"patch_embed.{get_tokenizer(cfg.tokenizer).first_conv}"


def _data_of(cfg: ViTConfig) -> str:
    if cfg.in_chans == 1 and cfg.img_hw == (28, 28):
        return "fashion_mnist"
    return "cifar10" if cfg.img_hw == (32, 32) else "imagenet"


def preset_pretrained_cfg(name: str, cfg: ViTConfig | None = None) -> dict[str, Any]:
    """timm's pretrained_cfg for preset ``name`` (input size, mean/std, ... of its data set), for ``cfg``'s
    input size and classes when given."""
    cfg = cfg or get_config(name)
    return dict(url="", num_classes=cfg.num_classes, input_size=(cfg.in_chans, *cfg.img_hw), pool_size=None,
                first_conv=first_conv(cfg), classifier="head", license="apache-2.0",
                custom_load=True,  # file/url weights go through VisionTransformer.load_pretrained (vitlab's loader)
                **_DATA_CFGS[_data_of(get_config(name))])


default_cfgs = generate_default_cfgs({f"vitlab_{n}": preset_pretrained_cfg(n) for n in PRESETS})

# timm's create_model keywords -> ViTConfig fields (names that differ; every ViTConfig field is also accepted)
_TIMM_RENAMES = {"reg_tokens": "num_registers", "init_values": "layer_scale_init"}
_TIMM_NOT_SUPPORTED = ("dynamic_img_pad", "pos_embed_grid_size", "patch_drop_rate", "proj_drop_rate",
                       "no_embed_class_token", "pre_norm", "final_norm", "embed_layer", "block_fn", "mlp_layer",
                       "norm_layer", "act_layer", "weight_init", "class_token_pos")


class UnknownModelArgument(TypeError, ValueError):
    """A keyword vitlab models do not take: a TypeError for timm's contract, a ValueError for vitlab's."""


def timm_kwargs_to_config(preset: str | None, kwargs: dict[str, Any]) -> ViTConfig:
    """Translate timm's ``create_model`` keywords into a ``ViTConfig`` on top of ``preset``; anything vitlab
    cannot do is an error naming it."""
    values: dict[str, Any] = {}
    for key, value in kwargs.items():
        if key == "global_pool":
            if value not in TIMM_POOLS:
                raise ValueError(f"global_pool={value!r} has no vitlab equivalent; vitlab pools with "
                                 f"{sorted(TIMM_POOLS)} ('token' = 'cls')")
            values["pool"] = TIMM_POOLS[value]
        elif key == "no_embed_class":
            values["pos_embed_prefix"] = not value
        elif key == "pos_embed":
            values["pos_embed"] = {"learn": "learned"}.get(value, value)
        elif key == "dynamic_img_size":
            continue  # vitlab models always run at other sizes (positions resampled on the fly, as timm's True)
        elif key in _TIMM_RENAMES:
            values[_TIMM_RENAMES[key]] = value
        elif key in _TIMM_NOT_SUPPORTED:
            raise ValueError(f"{key}={value!r}: timm's ViT option {key!r} has no vitlab equivalent")
        elif key in ViTConfig.field_names() or key in RENAMED_FIELDS:  # old names: get_config says the new one
            values[key] = value
        else:
            raise UnknownModelArgument(f"unknown model argument {key}={value!r} for vitlab models; they take timm's "
                                       f"create_model keywords and every ViTConfig field: "
                                       f"{sorted(ViTConfig.field_names())}")
    if isinstance(values.get("img_size"), (tuple, list)):
        values["img_size"] = tuple(values["img_size"])
    return get_config(preset, **values)


def _timm_entrypoint(preset: str):
    def entrypoint(pretrained: bool = False, **kwargs: Any) -> VisionTransformer:
        source = resolve_pretrained_cfg(f"vitlab_{preset}", kwargs.get("pretrained_cfg"),
                                        kwargs.get("pretrained_cfg_overlay"))
        if pretrained and not (source.file or source.url or source.hf_hub_id or source.state_dict):
            raise ValueError(f"vitlab_{preset} has no published weights: pass pretrained_cfg_overlay=dict(file=PATH) "
                             f"(a .safetensors/.pth/.ckpt), checkpoint_path=PATH with pretrained=False, or use "
                             f"vitlab.create_model({preset!r}, pretrained=PATH_OR_TIMM_NAME)")
        model = build_model_with_cfg(
            _build_for_timm(preset), f"vitlab_{preset}", pretrained,
            pretrained_filter_fn=_adapt_for_timm,  # state-dict sources: vitlab's adaptation
            feature_cfg=dict(feature_cls="getter", out_indices=kwargs.pop("out_indices", 3)), **kwargs)
        if isinstance(model, VisionTransformer):  # the data config describes this model, as built
            model.pretrained_cfg = model.default_cfg = _fit_data_config(model.pretrained_cfg, model.cfg)
        return model

    entrypoint.__name__ = entrypoint.__qualname__ = f"vitlab_{preset}"
    entrypoint.__module__ = __name__
    entrypoint.__doc__ = f"vitlab preset {preset!r} ({PRESETS[preset]})."
    return entrypoint


def _fit_data_config(pretrained_cfg: dict[str, Any], cfg: ViTConfig) -> dict[str, Any]:
    """The preset's data config for the model as built: its input size and classes, the statistics converted to its
    channels (gray <-> RGB, as vitlab's data modules convert images), so timm's scripts feed it what it takes; the
    first conv of its tokenizer (another tokenizer than the preset's may have been asked for)."""
    mean, std = stats_for_channels(tuple(pretrained_cfg["mean"]), tuple(pretrained_cfg["std"]), cfg.in_chans)
    return {**pretrained_cfg, "input_size": (cfg.in_chans, *cfg.img_hw), "num_classes": cfg.num_classes,
            "mean": mean, "std": std, "first_conv": first_conv(cfg)}


def _build_for_timm(preset: str):
    def build(device: Any = None, dtype: Any = None, **kwargs: Any) -> VisionTransformer:
        return VisionTransformer(timm_kwargs_to_config(preset, kwargs), device=device, dtype=dtype)
    return build


def _adapt_for_timm(state: dict, model: VisionTransformer) -> dict:
    from .pretrained import adapt_state_dict
    adapt_state_dict(model, state)
    return state


for _name in PRESETS:
    globals()[f"vitlab_{_name}"] = register_model(_timm_entrypoint(_name))
