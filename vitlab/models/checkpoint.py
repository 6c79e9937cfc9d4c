"""A vitlab checkpoint (the Lightning ``.ckpt`` that ``vitlab fit`` writes) turned into a model, by one set of rules
that every command and ``create_model(pretrained=...)`` share.

* Reading: ``torch.load(weights_only=True)`` only. A file it refuses (a pickle that would run code, a truncated or
  foreign file) is an :class:`UnsafeCheckpointError` naming it; nothing in it runs.
* Architecture: the ``hyper_parameters``: ``preset`` plus ``arch`` (the ``ViTConfig`` fields that were set), or, in
  checkpoints written before the settings groups, the ``ViTConfig`` fields at the top level (see
  :func:`checkpoint_arch`).
* Weights: ``state_dict``'s ``ema.module.*`` (the EMA copy that validation ran) when there is one and ``ema``, else
  ``model.*``; ``_orig_mod.`` of compiled models stripped; loaded strictly (:func:`load_state_dict_checked`).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Optional

import torch
from torch import nn

from .config import RENAMED_FIELDS, ViTConfig, merge_fields
from .registry import PRESETS, get_config
from .vit import VisionTransformer

# chosen for training, not part of the weights' architecture
TRAINING_FIELDS = ("drop_rate", "attn_drop_rate", "drop_path_rate", "grad_checkpointing")
NETWORK, EMA = "model.", "ema.module."  # where ImageClassifier's network and its EMA copy sit in the state_dict


class UnsafeCheckpointError(ValueError):
    """A checkpoint whose pickle would run code (or uses types outside torch's safe list)."""


def read_checkpoint(path: str | Path, mmap: bool = False) -> Any:
    """The object in a torch file (a dict for every checkpoint vitlab or Lightning writes), read with
    ``torch.load(weights_only=True)`` on the CPU; ``mmap`` maps the tensors instead of reading them.

    Raises:
        FileNotFoundError: ``path`` is not a file.
        UnsafeCheckpointError: torch's safe loader refuses the file; the one-line message names it.
    """
    if not Path(path).is_file():
        raise FileNotFoundError(f"checkpoint {str(path)!r} does not exist")
    try:
        return torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except Exception as err:  # UnpicklingError and friends: never fall back to weights_only=False
        reason = (str(err).strip().splitlines() or [type(err).__name__])[0]
        raise UnsafeCheckpointError(
            f"refusing to load {path}: torch.load(weights_only=True) does not accept it, so it is either not a "
            f"checkpoint or its pickle would run code (nothing in it was executed). Reason: {reason}") from None


def upgrade_config_fields(values: Mapping[str, Any], preset: str | None = None) -> dict[str, Any]:
    """Config fields as written by an older vitlab, in today's names.

    The one place old flat tokenizer fields are read: checkpoints' ``hyper_parameters``, hub folders'
    ``vitlab_config`` and results written before tokenizers had their own options hold ``stem_channels``,
    ``cct_layers`` and ``cct_kernel`` (``config.RENAMED_FIELDS``). Each becomes an option of the tokenizer it
    belonged to, and is dropped for the others (the old config carried all three for every tokenizer).
    """
    old = {k: values[k] for k in RENAMED_FIELDS if k in values}
    if not old:
        return dict(values)
    out = {k: v for k, v in values.items() if k not in old}
    tokenizer = out.get("tokenizer") or (PRESETS[preset]["tokenizer"] if preset in PRESETS else "patch")
    options = {RENAMED_FIELDS[k][1]: v for k, v in old.items() if RENAMED_FIELDS[k][0] == tokenizer and v is not None}
    if options:
        out["tokenizer_options"] = {**(out.get("tokenizer_options") or {}), **options}
    return out


def checkpoint_arch(hparams: Mapping[str, Any]) -> tuple[Optional[str], dict[str, Any]]:
    """``(preset, fields)``: the architecture a checkpoint's ``hyper_parameters`` record.

    Today's checkpoints hold the set ``ViTConfig`` fields under ``arch``; older ones hold them at the top level,
    next to the training settings (``base_lr``, ...), with None for a field left to the preset and possibly the
    old flat tokenizer fields (:func:`upgrade_config_fields`). Fields that are None are left out.
    """
    preset = hparams.get("preset")
    arch = hparams.get("arch")
    values = arch if isinstance(arch, Mapping) else hparams
    names = ViTConfig.field_names()
    fields = {k: v for k, v in upgrade_config_fields(values, preset).items() if k in names and v is not None}
    return preset, fields


def network_weights(state: Mapping[str, torch.Tensor], ema: bool = True) -> tuple[dict[str, torch.Tensor], str]:
    """The network's tensors in a Lightning ``state_dict`` and the prefix they came from: ``ema.module.*`` when
    present and ``ema``, else ``model.*``; the prefix and ``_orig_mod.`` (torch.compile) taken off the keys."""
    prefix = EMA if ema and any(k.startswith(EMA) for k in state) else NETWORK
    weights = {k[len(prefix):].replace("_orig_mod.", ""): v for k, v in state.items() if k.startswith(prefix)}
    return weights, prefix


def load_state_dict_checked(model: nn.Module, state: dict[str, torch.Tensor], source: str = "checkpoint") -> None:
    """Strict load whose error lists every missing, unexpected and mis-shaped key, and names the tensors holding a NaN
    or an infinity (nothing is loaded then)."""
    own = model.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    shapes = sorted(f"{k}: checkpoint {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
                    for k in set(own) & set(state) if state[k].shape != own[k].shape)
    if missing or unexpected or shapes:
        lines = [f"{source} does not match the model:"]
        if missing:
            lines.append(f"  missing keys ({len(missing)}): {missing}")
        if unexpected:
            lines.append(f"  unexpected keys ({len(unexpected)}): {unexpected}")
        if shapes:
            lines.append(f"  shape mismatches ({len(shapes)}): {shapes}")
        raise ValueError("\n".join(lines))
    bad = [k for k, v in state.items() if v.is_floating_point() and not bool(torch.isfinite(v).all())]
    if bad:  # a diverged run's weights: training from them would blame the learning rate or the data
        raise ValueError(f"{source} has non-finite weights (NaN or inf) in {len(bad)} tensor(s), e.g. "
                         f"{', '.join(bad[:3])}: refusing to load them")
    model.load_state_dict(state, strict=True)


@dataclass
class LoadedCheckpoint:
    """A checkpoint's model and what the checkpoint says about it."""

    model: VisionTransformer  # in eval mode
    config: ViTConfig
    preset: Optional[str]
    data_config: Optional[dict[str, Any]]  # timm's keys (input_size, mean, std, ...), as the data module gave them
    class_names: Optional[list[str]]
    hparams: dict[str, Any]  # the checkpoint's hyper_parameters as stored
    datamodule_hparams: dict[str, Any]  # the data module's, as LightningCLI stores them (``_class_path``, ...)


def load_checkpoint(path: str | Path, ema: bool = True, overrides: Optional[Mapping[str, Any]] = None
                    ) -> LoadedCheckpoint:
    """The model of a ``.ckpt`` written by ``vitlab fit`` (``ImageClassifier``), by the rules of this module.

    Args:
        path: the checkpoint.
        ema: take the EMA copy of the weights when there is one (what validation and test ran).
        overrides: ``ViTConfig`` fields that replace the checkpoint's (``merge_fields``); the weights must still fit.

    Raises:
        ValueError: the file is unreadable or unsafe, not a Lightning checkpoint of a vitlab model, or its weights
            do not fit its architecture; the message names the file.
    """
    ckpt = read_checkpoint(path)
    if not isinstance(ckpt, dict) or not isinstance(ckpt.get("state_dict"), dict):
        raise ValueError(f"{path} is not a Lightning checkpoint (no 'state_dict'); a plain weights file loads with "
                         f"a preset: --model PRESET --weights {path} (create_model(PRESET, pretrained=...))")
    hparams = ckpt.get("hyper_parameters")
    if not isinstance(hparams, dict):
        raise ValueError(f"{path} has no hyper_parameters: not a checkpoint written by `vitlab fit`; a plain "
                         f"weights file loads with a preset: --model PRESET --weights {path}")
    if hparams.get("timm_model") is not None:  # a run of model.timm_model: not a vitlab ViT
        raise ValueError(f"{path} holds timm's {hparams['timm_model']!r} (trained with model.timm_model), not a "
                         f"vitlab ViT: it serves as model.distill.teacher")
    weights, prefix = network_weights(ckpt["state_dict"], ema)
    if not weights:
        raise ValueError(f"{path}: state_dict has no '{prefix}*' weights of a vitlab model")
    preset, fields = checkpoint_arch(hparams)
    cfg = get_config(preset, **merge_fields(fields, overrides or {}))
    model = VisionTransformer(cfg)
    load_state_dict_checked(model, weights, f"{path} ({prefix}*)")
    data_config, names = ckpt.get("data_config"), ckpt.get("class_names")
    return LoadedCheckpoint(model=model.eval(), config=cfg, preset=preset,
                            data_config=dict(data_config) if isinstance(data_config, dict) else None,
                            class_names=[str(n) for n in names] if names else None, hparams=dict(hparams),
                            datamodule_hparams=dict(ckpt.get("datamodule_hyper_parameters") or {}))


__all__ = ["LoadedCheckpoint", "UnsafeCheckpointError", "TRAINING_FIELDS", "checkpoint_arch", "load_checkpoint",
           "load_state_dict_checked", "network_weights", "read_checkpoint", "upgrade_config_fields"]
