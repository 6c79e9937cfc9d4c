"""Pretrained weights: read from any source, adapt to the model, load, and say what was done.

Sources: a timm model name (``vit_small_patch16_224.augreg_in21k_ft_in1k``, fetched by timm when online), a local
file (.safetensors; .pth/.pt/.bin state_dict; a timm train checkpoint; a vitlab/Lightning .ckpt) or a local
hub-style folder (config.json + model.safetensors). Files are read safely: safetensors, or
``torch.load(weights_only=True)``, which refuses pickles that would run code - nothing in them is executed.

Adaptation: another class count (head re-initialised), image size or patch grid (positions resampled bicubic,
patch kernel resampled as FlexiViT), input channels (first conv adapted as timm does), pooling (final norm moved,
unused class token dropped), another tokenizer (transplant: encoder loaded, tokenizer initialised fresh). One
table lists every tensor that was loaded, resampled, adapted, dropped or re-initialised; anything else that does
not fit is an error listing the keys.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import torch
from timm.layers import resample_patch_embed
from timm.models import adapt_input_conv
from torch import nn

from .pos_embed import infer_grid, resample

STATE_DICT_KEYS = ("state_dict", "model", "module", "state_dict_ema", "model_ema")  # wrappers timm/Lightning use
WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin", "open_clip_model.safetensors")


class UnsafeCheckpointError(ValueError):
    """A checkpoint whose pickle would run code (or uses types outside torch's safe list)."""


@dataclass
class LoadReport:
    """What happened to each tensor: action -> list of (key, detail)."""

    rows: list[tuple[str, str, str]] = field(default_factory=list)  # (key, action, detail)

    def add(self, key: str, action: str, detail: str = "") -> None:
        self.rows.append((key, action, detail))

    def keys(self, action: str) -> list[str]:
        return [k for k, a, _ in self.rows if a == action]

    def table(self) -> str:
        """One line per tensor; the loaded ones are summarised in one line."""
        loaded = self.keys("loaded")
        lines = [f"{'tensor':<40} {'action':<15} detail", "-" * 80]
        lines += [f"{k:<40} {a:<15} {d}" for k, a, d in self.rows if a != "loaded"]
        lines.append(f"{f'({len(loaded)} tensors)':<40} {'loaded':<15} as they are")
        return "\n".join(lines)


# ----------------------------------------------------------------------------------------------- reading
def _read_file(path: Path) -> dict[str, torch.Tensor]:
    if path.suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file
        try:
            return load_file(str(path))
        except (SafetensorError, OSError, ValueError, RuntimeError) as err:
            raise ValueError(f"{path} is not a valid safetensors file: {err}") from None
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # UnpicklingError and friends: never fall back to weights_only=False
        reason = (str(err).strip().splitlines() or [type(err).__name__])[0]
        raise UnsafeCheckpointError(
            f"refusing to load {path}: torch.load(weights_only=True) does not accept it, so it is either not a "
            f"checkpoint or its pickle would run code (nothing in it was executed). Reason: {reason}") from None
    return _unwrap(obj, path)


def _unwrap(obj: object, path: Path) -> dict[str, torch.Tensor]:
    if isinstance(obj, dict):
        for key in STATE_DICT_KEYS:
            if isinstance(obj.get(key), dict):
                obj = obj[key]
                break
    if not isinstance(obj, dict) or not obj or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise ValueError(f"{path} holds no state_dict of tensors")
    state = dict(obj)
    # a vitlab/Lightning .ckpt: the network lives under "model." (EMA copies under other prefixes are ignored)
    if "patch_embed.proj.weight" not in state and any(k.startswith("model.") for k in state):
        state = {k[len("model."):]: v for k, v in state.items() if k.startswith("model.")}
    if all(k.startswith("module.") for k in state):  # DDP-wrapped
        state = {k[len("module."):]: v for k, v in state.items()}
    return state


def _read_timm_name(name: str) -> dict[str, torch.Tensor]:
    import timm
    try:
        return timm.create_model(name, pretrained=True).state_dict()
    except Exception as err:
        raise ValueError(
            f"could not get pretrained weights {name!r} through timm ({type(err).__name__}: {err}). timm fetches "
            f"them from the Hugging Face hub, which needs a network; offline, pass a local file or folder "
            f"(pretrained=/path/to/model.safetensors)") from None


def read_state_dict(source: str | Path) -> dict[str, torch.Tensor]:
    """Tensors of a pretrained source (file, hub-style folder or timm model name), keys in timm's names."""
    path = Path(source)
    if path.is_dir():
        for name in WEIGHT_FILES:
            if (path / name).is_file():
                return _read_file(path / name)
        raise FileNotFoundError(f"{path} is a folder without weights: looked for {list(WEIGHT_FILES)}")
    if path.is_file():
        return _read_file(path)
    import timm
    if isinstance(source, str) and timm.is_model(source.split(".")[0]) and "/" not in source:
        return _read_timm_name(source)
    raise FileNotFoundError(f"pretrained weights not found: {source!r} is neither a file, a folder with "
                            f"config.json + model.safetensors, nor a timm model name")


def read_folder_config(path: str | Path) -> dict:
    """The config.json of a hub-style folder (timm's layout), or {} if there is none."""
    cfg = Path(path) / "config.json"
    return json.loads(cfg.read_text()) if cfg.is_file() else {}


# ----------------------------------------------------------------------------------------------- adapting
def _adapt_tokenizer(model: nn.Module, state: dict, own: dict, report: LoadReport) -> None:
    ckpt_keys = {k for k in state if k.startswith("patch_embed.")}
    own_keys = {k for k in own if k.startswith("patch_embed.")}
    if ckpt_keys != own_keys:  # another tokenizer: transplant the encoder, start the tokenizer fresh
        for k in sorted(ckpt_keys):
            state.pop(k)
            report.add(k, "dropped", "tokenizer differs (transplant)")
        for k in sorted(own_keys):
            state[k] = own[k]
            report.add(k, "re-initialised", f"new {model.cfg.tokenizer} tokenizer (transplant)")
        return
    for k in sorted(ckpt_keys):
        w, target = state[k], own[k]
        if w.shape == target.shape or w.ndim != 4:
            continue
        if w.shape[1] != target.shape[1] and w.shape[0] == target.shape[0]:  # other in_chans: timm's rule
            w = adapt_input_conv(target.shape[1], w)
            report.add(k, "adapted", f"in_chans {state[k].shape[1]} -> {target.shape[1]}")
        if w.shape[-2:] != target.shape[-2:] and k == "patch_embed.proj.weight":  # other patch size
            report.add(k, "resampled", f"patch {tuple(w.shape[-2:])} -> {tuple(target.shape[-2:])}")
            w = resample_patch_embed(w, list(target.shape[-2:]))
        state[k] = w


def _adapt_pool(model: nn.Module, state: dict, own: dict, report: LoadReport) -> None:
    for src, dst in (("norm", "fc_norm"), ("fc_norm", "norm")):  # cls <-> avg: the final norm moves
        for p in ("weight", "bias"):
            if f"{src}.{p}" in state and f"{src}.{p}" not in own and f"{dst}.{p}" in own:
                state[f"{dst}.{p}"] = state.pop(f"{src}.{p}")
                report.add(f"{dst}.{p}", "adapted", f"from {src}.{p} (pooling changed)")
    if "cls_token" in state and "cls_token" not in own:
        state.pop("cls_token")
        report.add("cls_token", "dropped", "model has no class token")
    for k in sorted(own):
        if k.startswith("seq_pool.") and k not in state:
            state[k] = own[k]
            report.add(k, "re-initialised", "sequence pooling is new")


def _adapt_pos_embed(model: nn.Module, state: dict, own: dict, report: LoadReport) -> None:
    """Resample the image rows of a learned table to the model's grid; keep, or drop, the prefix rows."""
    pos, target = state.get("pos_embed"), own.get("pos_embed")
    if pos is None or target is None or pos.shape == target.shape:
        return
    n_prefix = int("cls_token" in state) + (state["reg_token"].shape[1] if "reg_token" in state else 0)
    rows = pos.shape[1]
    if int(round((rows - n_prefix) ** 0.5)) ** 2 != rows - n_prefix:
        n_prefix = 0  # the table covers image tokens only (no_embed_class)
    prefix, image = pos[:, :n_prefix], pos[:, n_prefix:]
    old_grid = infer_grid(image.shape[1], 0)
    image = resample(image, model.grid, old_grid, 0)
    if old_grid != model.grid:
        report.add("pos_embed", "resampled", f"grid {old_grid} -> {model.grid} (bicubic)")
    if n_prefix != model.pos_prefix:
        if model.pos_prefix == 0:
            prefix = prefix[:, :0]
        elif "cls_token" in state and "cls_token" not in own and n_prefix - 1 == model.pos_prefix:
            prefix = prefix[:, 1:]
        report.add("pos_embed", "adapted", f"prefix rows {n_prefix} -> {prefix.shape[1]}")
    state["pos_embed"] = torch.cat([prefix, image], dim=1)


def _adapt_head(model: nn.Module, state: dict, own: dict, report: LoadReport) -> None:
    for p in ("weight", "bias"):
        k = f"head.{p}"
        if k in state and (k not in own or state[k].shape != own[k].shape):
            old = state.pop(k)
            if k in own:
                state[k] = own[k]
                report.add(k, "re-initialised", f"classes {old.shape[0]} -> {own[k].shape[0]}")
            else:
                report.add(k, "dropped", "model has no head (num_classes=0)")
        elif k in own and k not in state:
            state[k] = own[k]
            report.add(k, "re-initialised", "checkpoint has no head")


def adapt_state_dict(model: nn.Module, state: dict[str, torch.Tensor]) -> LoadReport:
    """Make ``state`` fit ``model`` where that makes sense (in place), recording every change."""
    own = model.state_dict()
    report = LoadReport()
    _adapt_tokenizer(model, state, own, report)
    _adapt_pos_embed(model, state, own, report)
    _adapt_pool(model, state, own, report)
    _adapt_head(model, state, own, report)
    changed = {k for k, _, _ in report.rows}
    for k in sorted(set(state) & set(own) - changed):
        report.add(k, "loaded")
    return report


# ----------------------------------------------------------------------------------------------- loading
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


def load_pretrained(model: nn.Module, source: str | Path, verbose: bool = True) -> LoadReport:
    """Read ``source``, adapt it to ``model``, load it strictly, print the table (if verbose) and return it."""
    state = read_state_dict(source)
    report = adapt_state_dict(model, state)
    load_state_dict_checked(model, state, str(source))
    if verbose:
        print(f"pretrained weights from {source}:\n{report.table()}")
    return report


def create_pretrained(name: str | None, source: str | Path, **overrides) -> nn.Module:
    """A model for preset ``name`` + ``overrides`` with the weights of ``source`` loaded (adapted, reported)."""
    from .registry import get_config
    from .vit import VisionTransformer

    model = VisionTransformer(get_config(name, **overrides))
    load_pretrained(model, source)
    return model
