"""The data config that pretrained weights carry (input size, mean/std, interpolation, crop_pct), and how a data
module's arguments follow it.

Keys and values are timm's (as ``timm.data.resolve_data_config`` gives them), so a timm name, a hub folder and
a vitlab checkpoint all answer in the same shape. Everything here is read offline; a source that says nothing
about its data gives None, and the caller keeps the data set's own values. docs/data-config.md has the precedence.

    >>> data_config_of("vit_small_patch16_224.augreg_in21k_ft_in1k")["mean"]
    (0.5, 0.5, 0.5)
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

DATA_KEYS = ("input_size", "mean", "std", "interpolation", "crop_pct")
WEIGHT_SUFFIXES = (".safetensors", ".pth", ".pt", ".bin")


def resolve(pretrained_cfg: dict[str, Any]) -> dict[str, Any]:
    """timm's ``resolve_data_config`` of a ``pretrained_cfg``, reduced to :data:`DATA_KEYS`."""
    from timm.data import resolve_data_config

    cfg = resolve_data_config(pretrained_cfg=dict(pretrained_cfg))
    return {
        "input_size": [int(v) for v in cfg["input_size"]],
        "mean": tuple(float(v) for v in cfg["mean"]),
        "std": tuple(float(v) for v in cfg["std"]),
        "interpolation": str(cfg["interpolation"]),
        "crop_pct": float(cfg["crop_pct"]),
    }


def _timm_cfg(name: str) -> dict[str, Any] | None:
    """The ``pretrained_cfg`` timm has registered for ``name`` (with or without a tag), or None."""
    from timm.models import get_pretrained_cfg

    try:
        cfg = get_pretrained_cfg(name)
    except RuntimeError:  # a known architecture with an unknown tag
        return None
    return cfg.to_dict() if cfg is not None else None


def _hub_config(repo: str) -> dict[str, Any] | None:
    """config.json of ``hf-hub:org/name[@revision]`` if the Hugging Face cache already holds it. Nothing is
    downloaded: offline, huggingface_hub retries for ~20 s before giving up, and the weights' own download (when the
    model is built) fills the cache for the next run."""
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:
        return None
    repo_id, _, revision = repo.partition("@")
    try:
        path = try_to_load_from_cache(repo_id, "config.json", revision=revision or None)
    except ValueError:  # huggingface_hub's HFValidationError: not a repo id; the weights' loader names it
        return None
    return _read_json(Path(path)) if isinstance(path, str) else None


def _read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise ValueError(f"cannot read {path} as JSON: {err}") from None


def _folder_config(source: Path) -> dict[str, Any] | None:
    """The config.json of a hub-style folder, or the one beside a weights file; None when there is none."""
    folder = source if source.is_dir() else source.parent
    path = folder / "config.json"
    return _read_json(path) if path.is_file() else None


def _from_hub_config(config: dict[str, Any] | None) -> dict[str, Any] | None:
    """The data config of a config.json in timm's schema (``pretrained_cfg``, or the old flat keys)."""
    if not config:
        return None
    cfg = config.get("pretrained_cfg") or {k: v for k, v in config.items() if k in DATA_KEYS}
    return resolve(cfg) if any(k in cfg for k in ("mean", "std", "input_size")) else None


def _load_checkpoint(path: Path) -> dict[str, Any]:
    """A vitlab .ckpt, its tensors memory-mapped (only its data_config and class_names are read)."""
    from .checkpoint import read_checkpoint

    ckpt = read_checkpoint(path, mmap=True)
    return ckpt if isinstance(ckpt, dict) else {}


def _source(source: str | Path) -> tuple[str, Any]:
    """What kind of source this is: ("hf-hub", repo), ("timm", name), ("ckpt", path), ("path", path) or ("", None)."""
    text = str(source)
    if text.startswith("hf-hub:"):
        return "hf-hub", text[len("hf-hub:"):]
    path = Path(text)
    if path.suffix == ".ckpt" and path.is_file():
        return "ckpt", path
    if path.is_dir() or (path.is_file() and path.suffix in WEIGHT_SUFFIXES):
        return "path", path
    if not path.exists() and "/" not in text:
        return "timm", text
    return "", None


def data_config_of(source: str | Path | None) -> dict[str, Any] | None:
    """The data config that pretrained weights carry, or None when they carry none.

    Args:
        source: A timm model name with or without tag (its registered ``pretrained_cfg``; offline), ``hf-hub:org/name``
            (only when its config.json is already in the Hugging Face cache), a hub-style folder (config.json's
            ``pretrained_cfg``), a weights file with a config.json beside it, or a vitlab ``.ckpt`` (its
            ``data_config``, written by ``ImageClassifier.on_save_checkpoint``).

    Returns:
        ``{"input_size": [C, H, W], "mean": (...), "std": (...), "interpolation": str, "crop_pct": float}`` or None.

    Raises:
        ValueError: A config.json or checkpoint that exists but cannot be read; the message names the file.
    """
    if not source:
        return None
    kind, where = _source(source)
    if kind == "timm":
        cfg = _timm_cfg(where)
        return resolve(cfg) if cfg else None
    if kind == "hf-hub":
        return _from_hub_config(_hub_config(where))
    if kind == "path":
        return _from_hub_config(_folder_config(where))
    if kind == "ckpt":
        stored = _load_checkpoint(where).get("data_config")
        return resolve(stored) if isinstance(stored, dict) else None
    return None


def class_names_of(source: str | Path | None) -> list[str] | None:
    """Class names that pretrained weights carry (index = class), or None.

    A vitlab ``.ckpt`` gives its ``class_names``; a hub folder, a weights file beside a config.json, or a cached
    ``hf-hub:`` config gives ``label_names`` (a list, or a dict from class index to name); a timm name gives its
    registered ``label_names`` where timm has them.
    """
    if not source:
        return None
    kind, where = _source(source)
    if kind == "ckpt":
        names = _load_checkpoint(where).get("class_names")
    elif kind in ("path", "hf-hub"):
        config = (_folder_config(where) if kind == "path" else _hub_config(where)) or {}
        names = config.get("label_names") or (config.get("pretrained_cfg") or {}).get("label_names")
    elif kind == "timm":
        names = (_timm_cfg(where) or {}).get("label_names")
    else:
        names = None
    if isinstance(names, dict):  # {index: name}, indices as JSON strings
        names = [names[k] for k in sorted(names, key=int)]
    return [str(n) for n in names] if names else None


# ----------------------------------------------------------------------------------------------- applying
FOLLOWED = ("mean", "std", "interpolation", "crop_pct")  # data arguments that follow the weights' data config


def follow_weights(args: Any, data_cls: type | None, weights: dict[str, Any], same_pipeline: bool = False
                   ) -> tuple[list[str], list[str], list[str]]:
    """Fill the data arguments of :data:`FOLLOWED` that ``args`` leaves unset (None) from the weights' data config.

    Statistics are converted to the data's channel count as the data module converts its own (gray <-> RGB).
    ``crop_pct`` is only taken by data modules whose training crops at random scales (``eval_crop_from_weights``):
    the small-image sets train on whole images, so an eval crop would show objects larger than training did;
    ``same_pipeline`` (the weights are the vitlab checkpoint being resumed or evaluated) takes it anyway.

    Args:
        args: The data module's arguments (a dict or jsonargparse Namespace), changed in place.
        data_cls: The data module's class, for its channels and what it can do; None = no such knowledge.
        weights: A data config as :func:`data_config_of` returns it.
        same_pipeline: The weights were trained by this data pipeline.

    Returns:
        ``(taken, overridden, unused)``: ``"key value"`` texts of what came from the weights, of what the user set
        otherwise (kept), and of what the weights say but this data does not take.
    """
    from vitlab.data.stats import values_for_channels

    in_chans = args.get("in_chans") or getattr(data_cls, "native_chans", None)
    wanted = {k: weights[k] for k in FOLLOWED}
    for key in ("mean", "std"):
        wanted[key] = values_for_channels(tuple(wanted[key]), in_chans) if in_chans in (1, 3) else tuple(wanted[key])
    unused = []
    if not same_pipeline and not getattr(data_cls, "eval_crop_from_weights", True):
        crop = wanted.pop("crop_pct")
        if args.get("crop_pct") is None and crop != getattr(data_cls, "default_crop_pct", crop):
            unused.append(f"crop_pct {_show(crop)} (this data trains on whole images)")
    if wanted["interpolation"] not in getattr(data_cls, "interpolations", (wanted["interpolation"],)):
        unused.append(f"interpolation {wanted.pop('interpolation')} (not one this data can do)")
    taken, overridden = [], []
    for key, value in wanted.items():
        if key not in args:  # a data module without this argument
            continue
        if args[key] is None:
            args[key] = value
            taken.append(f"{key} {_show(value)}")
        elif not _same(args[key], value, in_chans):
            overridden.append(f"{key} {_show(args[key])} (weights: {_show(value)})")
    return taken, overridden, unused


def _same(given: Any, value: Any, in_chans: int | None) -> bool:
    """Whether a user's value equals the weights' (statistics compared after channel conversion)."""
    if not isinstance(value, tuple):
        return given == value
    from vitlab.data.stats import values_for_channels
    try:
        given = values_for_channels(tuple(given), in_chans) if in_chans in (1, 3) else tuple(given)
    except (TypeError, ValueError):
        return False
    return len(given) == len(value) and all(abs(float(a) - b) < 1e-6 for a, b in zip(given, value))


def _show(value: Any) -> str:
    if isinstance(value, (tuple, list)):
        return "(" + ", ".join(f"{v:g}" for v in value) + ")"
    return f"{value:g}" if isinstance(value, float) else str(value)


__all__ = ["data_config_of", "class_names_of", "follow_weights", "resolve", "DATA_KEYS", "FOLLOWED"]
