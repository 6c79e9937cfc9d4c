"""Loading pretrained weights: timm VisionTransformer state_dicts (.safetensors / .pth) into vitlab models.

Loading is safe by construction: safetensors, or ``torch.load(weights_only=True)``, which refuses pickles that
would run code. Key names are timm's, so a timm checkpoint of the same architecture loads as it is.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from .pos_embed import infer_grid, resample

STATE_DICT_KEYS = ("state_dict_ema", "model_ema", "state_dict", "model")  # wrappers timm/Lightning use


class UnsafeCheckpointError(ValueError):
    """A checkpoint whose pickle would run code (or uses types outside torch's safe list)."""


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Tensors of a weight file; unwraps {"state_dict": ...}-style checkpoints and Lightning's "model." prefix."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"pretrained weights not found: {path}")
    if path.suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file
        try:
            state = load_file(str(path))
        except (SafetensorError, OSError, ValueError) as err:
            raise ValueError(f"{path} is not a valid safetensors file: {err}") from None
    else:
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as err:  # pickle.UnpicklingError and friends: never fall back to weights_only=False
            raise UnsafeCheckpointError(
                f"refusing to load {path}: it is not a plain tensor checkpoint that torch.load(weights_only=True) "
                f"accepts (nothing in it was executed). Reason: {str(err).splitlines()[0]}") from None
    if isinstance(state, dict):
        for key in STATE_DICT_KEYS:
            if key in state and isinstance(state[key], dict):
                state = state[key]
                break
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError(f"{path} holds no state_dict of tensors")
    for prefix in ("model.", "module."):
        if state and all(k.startswith(prefix) for k in state):
            state = {k[len(prefix):]: v for k, v in state.items()}
    return state


def adapt_pos_embed(model: nn.Module, state: dict[str, torch.Tensor]) -> list[str]:
    """Resample a checkpoint's learned ``pos_embed`` to the model's grid; returns what was done."""
    pos = state.get("pos_embed")
    target = getattr(model, "pos_embed", None)
    if pos is None or not isinstance(target, nn.Parameter) or pos.shape == target.shape:
        return []
    prefix = model.pos_prefix
    old_grid = infer_grid(pos.shape[1], prefix)
    state["pos_embed"] = resample(pos, model.grid, old_grid, prefix)
    return [f"pos_embed: resampled {tuple(pos.shape)} -> {tuple(target.shape)} (grid {old_grid} -> {model.grid})"]


def load_state_dict_checked(model: nn.Module, state: dict[str, torch.Tensor], source: str = "checkpoint") -> None:
    """Strict load whose error lists every missing, unexpected and mis-shaped key."""
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
    model.load_state_dict(state, strict=True)


def load_pretrained(model: nn.Module, source: str | Path, **_: Any) -> nn.Module:
    """Load weights from a local file (.safetensors, .pth/.pt/.bin/.ckpt state_dict) into ``model``."""
    state = read_state_dict(source)
    adapt_pos_embed(model, state)
    load_state_dict_checked(model, state, str(source))
    return model
