"""Reading a pretrained source once: its tensors in timm's names and what it says about its architecture.

Sources: a timm model name (fetched by timm when online), ``hf-hub:org/name[@revision]`` (a hub folder, downloaded
by huggingface_hub), a local file (.safetensors; .pth/.pt/.bin state_dict; a timm train checkpoint; a vitlab
.ckpt, read by the rules of ``vitlab.models.checkpoint``) or a local hub-style folder (config.json +
model.safetensors). Files are read safely: safetensors, or ``torch.load(weights_only=True)``, which refuses pickles
that would run code.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..checkpoint import checkpoint_arch, network_weights, read_checkpoint, upgrade_config_fields
from ..config import ViTConfig
from ..registry import PRESETS, get_config

STATE_DICT_KEYS = ("state_dict", "model", "module", "state_dict_ema", "model_ema")  # wrappers timm/Lightning use
WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin", "open_clip_model.safetensors")


@dataclass
class Source:
    """A pretrained source, read once: its tensors (timm's names) and what it says about its architecture."""

    where: str  # as the user gave it, for messages
    state: dict[str, torch.Tensor]
    config: dict[str, Any] = field(default_factory=dict)  # ViTConfig fields it states (vitlab_config, .ckpt hparams)
    timm: dict[str, Any] = field(default_factory=dict)  # num_heads, img_size, pool of its timm architecture
    unsupported: list[str] = field(default_factory=list)  # timm settings vitlab cannot express (not in the tensors)
    meta: dict[str, Any] = field(default_factory=dict)  # preset, data_config, class_names, pretrained_cfg, label_names


def _load(path: Path) -> Any:
    """The object in a weights file: safetensors, or a pickle only torch's safe loader accepts."""
    if path.suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file
        try:
            return load_file(str(path))
        except (SafetensorError, OSError, ValueError, RuntimeError) as err:
            raise ValueError(f"{path} is not a valid safetensors file: {err}") from None
    return read_checkpoint(path)


def _unwrap(obj: object, path: Path, ema: bool = False) -> dict[str, torch.Tensor]:
    if isinstance(obj, dict):
        for key in STATE_DICT_KEYS:
            if isinstance(obj.get(key), dict):
                obj = obj[key]
                break
    if not isinstance(obj, dict) or not obj or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise ValueError(f"{path} holds no state_dict of tensors")
    state = dict(obj)
    if "patch_embed.proj.weight" not in state and any(k.startswith("model.") for k in state):  # a vitlab .ckpt
        state = network_weights(state, ema)[0]
    if all(k.startswith("module.") for k in state):  # DDP-wrapped
        state = {k[len("module."):]: v for k, v in state.items()}
    return state


def _read_file(path: Path, where: str, ema: bool) -> Source:
    obj = _load(path)
    source = Source(where, _unwrap(obj, path, ema))
    hparams = obj.get("hyper_parameters") if isinstance(obj, dict) else None
    if isinstance(hparams, dict):  # a vitlab .ckpt: its preset and arch
        preset, fields = checkpoint_arch(hparams)
        preset = preset if preset in PRESETS else None
        try:
            source.config = get_config(preset, **fields).to_dict()
        except ValueError:  # hyper-parameters of another kind of module: the tensors decide
            pass
        source.meta["preset"] = preset
    for key in ("data_config", "class_names"):
        if isinstance(obj, dict) and obj.get(key) is not None:
            source.meta[key] = obj[key]
    return source


def _timm_settings(model: nn.Module) -> tuple[dict[str, Any], list[str]]:
    """What a timm ViT's weights do not show (heads, image size, pooling), and settings vitlab cannot express."""
    fields: dict[str, Any] = {}
    unsupported: list[str] = []
    blocks = getattr(model, "blocks", None)
    if blocks is None or not len(blocks) or not hasattr(model, "patch_embed"):
        return fields, [f"timm architecture {type(model).__name__} (not a VisionTransformer)"]
    if getattr(getattr(blocks[0], "attn", None), "num_heads", None):
        fields["num_heads"] = int(blocks[0].attn.num_heads)
    img_size = getattr(model.patch_embed, "img_size", None)
    if img_size:
        h, w = (int(v) for v in img_size)
        fields["img_size"] = h if h == w else (h, w)
    pool = getattr(model, "global_pool", "token")
    if pool in ("token", "avg"):
        fields["pool"] = "cls" if pool == "token" else "avg"
    else:
        unsupported.append(f"global_pool={pool!r} pooling")
    if getattr(model, "pool_include_prefix", False):
        unsupported.append("pooling over the prefix tokens too (timm pool_include_prefix=True)")
    if type(blocks[0]).__name__ != "Block":
        unsupported.append(f"timm block {type(blocks[0]).__name__} (block_fn)")
    elif type(blocks[0].attn).__name__ != "Attention":
        unsupported.append(f"timm attention {type(blocks[0].attn).__name__} (attn_layer)")
    act = getattr(getattr(blocks[0], "mlp", None), "act", None)
    if act is not None and not (isinstance(act, nn.GELU) and act.approximate == "none"):
        unsupported.append(f"MLP activation {type(act).__name__} (timm act_layer; vitlab uses exact GELU)")
    eps = getattr(getattr(blocks[0], "norm1", None), "eps", 1e-6)
    if eps != 1e-6:
        unsupported.append(f"LayerNorm eps={eps} (vitlab uses timm's ViT default 1e-6)")
    return fields, unsupported


def _timm_architecture(arch: str, model_args: dict[str, Any]) -> tuple[dict[str, Any], list[str]]:
    """``_timm_settings`` of a timm architecture built on the meta device (no memory, no weights)."""
    import timm
    if not timm.is_model(arch):
        return {}, []
    try:
        model = timm.create_model(arch, pretrained=False, device="meta", **model_args)
    except Exception:  # arguments this timm does not take: the tensors alone decide
        return {}, []
    return _timm_settings(model)


def _read_timm_name(name: str) -> Source:
    import timm
    try:
        model = timm.create_model(name, pretrained=True)
    except Exception as err:
        raise ValueError(
            f"could not get pretrained weights {name!r} through timm ({type(err).__name__}: {err}). timm fetches "
            f"them from the Hugging Face hub, which needs a network; offline, pass a local file or folder "
            f"(pretrained=/path/to/model.safetensors)") from None
    source = Source(name, model.state_dict())
    source.timm, source.unsupported = _timm_settings(model)
    source.meta["pretrained_cfg"] = dict(getattr(model, "pretrained_cfg", {}) or {})
    return source


def _read_folder(path: Path, where: str) -> Source:
    weights = next((path / n for n in WEIGHT_FILES if (path / n).is_file()), None)
    if weights is None:
        raise FileNotFoundError(f"{path} is a folder without weights: looked for {list(WEIGHT_FILES)}")
    source = Source(where, _unwrap(_load(weights), weights))
    config = read_folder_config(path)
    if isinstance(config.get("vitlab_config"), dict):  # written by vitlab: the whole architecture
        source.config = ViTConfig.from_dict(upgrade_config_fields(config["vitlab_config"])).to_dict()
    elif isinstance(config.get("architecture"), str):  # timm's schema: the architecture and its arguments
        source.timm, source.unsupported = _timm_architecture(config["architecture"], config.get("model_args") or {})
    pretrained_cfg = config.get("pretrained_cfg") or {}
    input_size = pretrained_cfg.get("input_size")
    if "img_size" not in source.timm and isinstance(input_size, (list, tuple)) and len(input_size) == 3:
        h, w = (int(v) for v in input_size[1:])
        source.timm["img_size"] = h if h == w else (h, w)
    source.meta.update(pretrained_cfg=pretrained_cfg, label_names=config.get("label_names"))
    return source


def read_source(source: str | Path | Source, ema: bool = False) -> Source:
    """Read a pretrained source once: tensors in timm's names plus what it says about its architecture.

    Args:
        source: a file, a hub-style folder, ``hf-hub:org/name[@revision]`` or a timm model name.
        ema: from a vitlab .ckpt, take the EMA copy of the weights (what validation and test used) when present.
    """
    if isinstance(source, Source):
        return source
    where = str(source)
    if where.startswith("hf-hub:"):
        from ..hub import download_hub_folder
        return _read_folder(download_hub_folder(where[len("hf-hub:"):]), where)
    path = Path(source)
    if path.is_dir():
        return _read_folder(path, where)
    if path.is_file():
        return _read_file(path, where, ema)
    import timm
    if isinstance(source, str) and "/" not in source and timm.is_model(source.split(".")[0]):
        return _read_timm_name(source)
    raise FileNotFoundError(f"pretrained weights not found: {source!r} is neither a file, a folder with "
                            f"config.json + model.safetensors, hf-hub:org/name nor a timm model name")


def read_state_dict(source: str | Path) -> dict[str, torch.Tensor]:
    """Tensors of a pretrained source (file, hub-style folder or timm model name), keys in timm's names."""
    return read_source(source).state


def read_folder_config(path: str | Path) -> dict:
    """The config.json of a hub-style folder (timm's layout), or {} if there is none."""
    cfg = Path(path) / "config.json"
    if not cfg.is_file():
        return {}
    try:
        config = json.loads(cfg.read_text())
    except (OSError, ValueError) as err:
        raise ValueError(f"cannot read {cfg} as JSON: {err}") from None
    if not isinstance(config, dict):
        raise ValueError(f"{cfg} is not a JSON object")
    return config

