"""Hugging Face Hub folders: a vitlab model as timm's hub layout (config.json, model.safetensors, README.md).

    save_hub_folder(model, "export/", data_config=..., class_names=..., metrics=..., command=...)
    push_to_hub("export/", "org/name")
    vitlab.create_model(pretrained="export/")            # every tokenizer
    vitlab.create_model(pretrained="hf-hub:org/name")    # downloaded by huggingface_hub, then as a folder
    timm.create_model("local-dir:export/", pretrained=True)   # patch models: a plain timm ViT

config.json follows timm's schema (``architecture``, ``num_classes``, ``num_features``, ``model_args``,
``pretrained_cfg``, ``label_names``) plus ``vitlab_config``, the exact ``ViTConfig``. A patch model that timm's
VisionTransformer can express is written as one (``architecture: vit_base_patch16_224`` with ``model_args``
giving every shape, weights in timm's names), so timm loads it without vitlab. Conv-stem and CCT tokenizers and
sequence pooling are written as ``vitlab_<preset>`` with the vitlab config as ``model_args``: timm builds those
after ``import vitlab`` (timm's registry then holds vitlab's presets).
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence

import torch
from torch import nn

from .checkpoint import TRAINING_FIELDS
from .config import ViTConfig

WEIGHTS, CONFIG, CARD = "model.safetensors", "config.json", "README.md"
DEFAULT_DATA_CONFIG = {"interpolation": "bicubic", "crop_pct": 1.0}  # mean/std default to 0.5 per channel
# a preset per tokenizer for the architecture name when the model's own is not known (model_args set every field,
# so any preset builds a plug-in tokenizer's model too)
TOKENIZER_PRESETS = {"patch": "vit_micro_patch4_28", "conv": "vit_micro_conv4_28", "cct": "cct_micro_28"}


# ----------------------------------------------------------------------------------------------- config.json
def hub_config(model: nn.Module, *, data_config: Optional[Mapping[str, Any]] = None,
               class_names: Optional[Sequence[str]] = None, preset: Optional[str] = None) -> dict[str, Any]:
    """config.json in timm's schema for ``model`` (a vitlab ``VisionTransformer``).

    Args:
        model: the model whose weights the folder holds.
        data_config: timm's data config of its input (``mean``, ``std``, ``interpolation``, ``crop_pct``;
            ``input_size`` is the model's); missing keys: bicubic, crop 1.0, mean/std 0.5.
        class_names: one name per output class (timm's ``label_names``).
        preset: the vitlab preset it was built from, for the ``vitlab_<preset>`` architecture name.
    """
    from .registry import PRESETS, first_conv
    from .timm_export import TIMM_ARCH, timm_model_args

    cfg: ViTConfig = model.cfg
    C, (H, W) = cfg.in_chans, _hw(cfg.img_size)
    data = {**DEFAULT_DATA_CONFIG, **{k: v for k, v in (data_config or {}).items() if v is not None}}
    mean, std = list(data.get("mean") or [0.5] * C), list(data.get("std") or [0.5] * C)
    for key, value in (("mean", mean), ("std", std)):
        if len(value) != C:
            raise ValueError(f"data_config {key}={value} has {len(value)} values for a model with in_chans={C}")
    if class_names is not None and len(class_names) != cfg.num_classes:
        raise ValueError(f"{len(class_names)} class_names for a model with num_classes={cfg.num_classes}")
    try:
        model_args, arch, fixed = timm_model_args(cfg), TIMM_ARCH, True
        model_args["img_size"] = [H, W] if H != W else H
    except ValueError:  # conv/CCT tokenizer or sequence pooling: vitlab's own architecture
        model_args = {k: v for k, v in cfg.to_dict().items() if k not in TRAINING_FIELDS}
        preset = preset if preset in PRESETS else TOKENIZER_PRESETS.get(cfg.tokenizer, TOKENIZER_PRESETS["patch"])
        arch, fixed = f"vitlab_{preset}", False
    pretrained_cfg = {
        "input_size": [C, H, W], "fixed_input_size": fixed, "interpolation": str(data["interpolation"]),
        "crop_pct": float(data["crop_pct"]), "crop_mode": "center", "mean": [float(v) for v in mean],
        "std": [float(v) for v in std], "num_classes": cfg.num_classes, "first_conv": first_conv(cfg),
        "classifier": ["head", "head_dist"] if getattr(cfg, "distilled", False) else "head",
    }
    config = {"architecture": arch, "num_classes": cfg.num_classes, "num_features": cfg.embed_dim,
              "global_pool": {"cls": "token"}.get(cfg.pool, cfg.pool), "model_args": _jsonable(model_args),
              "pretrained_cfg": pretrained_cfg}
    if class_names:
        config["label_names"] = [str(n) for n in class_names]
    config["vitlab_config"] = _jsonable(cfg.to_dict())
    return config


def _hw(img_size: Any) -> tuple[int, int]:
    return (img_size, img_size) if isinstance(img_size, int) else (int(img_size[0]), int(img_size[1]))


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    return value


def hub_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The tensors the folder holds: timm's VisionTransformer's where timm can express the model (sin-cos positions
    become a fixed table), vitlab's own otherwise."""
    from .timm_export import timm_model_args, to_timm

    try:
        timm_model_args(model.cfg)
        state = to_timm(model).state_dict()
    except ValueError:
        state = model.state_dict()
    return {k: v.detach().cpu().contiguous() for k, v in state.items()}


# ----------------------------------------------------------------------------------------------- model card
def model_card(config: Mapping[str, Any], *, metrics: Optional[Mapping[str, float]] = None,
               command: Optional[str] = None, run_config: Optional[str] = None,
               notes: Optional[Sequence[str]] = None, repo_id: Optional[str] = None,
               num_params: Optional[int] = None) -> str:
    """README.md: timm-style front matter, what the model is, its data config, metrics and how it was made."""
    cfg, pre = config["vitlab_config"], config["pretrained_cfg"]
    repo = repo_id or "ORG/NAME"
    timm_loads = not config["architecture"].startswith("vitlab_")
    lines = ["---", "tags:", "- image-classification", "- timm", "- vitlab", "library_name: timm",
             "license: other  # placeholder: set the license of the weights and of the data they were trained on",
             "pipeline_tag: image-classification", "---", "",
             f"# vitlab {cfg['tokenizer']} ViT ({cfg['embed_dim']}-wide, {cfg['depth']} blocks)", "",
             f"A Vision Transformer trained with vitlab: {cfg['tokenizer']} tokenizer, "
             f"{cfg['pool']} pooling, {cfg['num_classes']} classes. "
             + ("The weights are a timm `VisionTransformer` (`model_args` in config.json)."
                if timm_loads else f"The architecture is vitlab's (`{config['architecture']}`)."), "",
             "## Model details", "", "| | |", "|---|---|"]
    for key in ("tokenizer", "img_size", "patch_size", "in_chans", "embed_dim", "depth", "num_heads", "mlp_ratio",
                "pool", "num_registers", "pos_embed"):
        lines.append(f"| {key} | {cfg[key]} |")
    if num_params is not None:
        lines.append(f"| parameters | {num_params:,} |")
    lines += ["", "## Data config", "", "| input size | mean | std | interpolation | crop_pct |",
              "|---|---|---|---|---|",
              f"| {' x '.join(str(v) for v in pre['input_size'])} | {_nums(pre['mean'])} | {_nums(pre['std'])} "
              f"| {pre['interpolation']} | {pre['crop_pct']} |", ""]
    if config.get("label_names"):
        lines += [f"Classes ({len(config['label_names'])}): " + ", ".join(config["label_names"]), ""]
    lines += ["## Metrics", ""]
    if metrics:
        lines += ["| metric | value |", "|---|---|"] + [f"| {k} | {v:.4f} |" for k, v in metrics.items()] + [""]
    else:
        lines += ["No test metrics were recorded with this model.", ""]
    lines += ["## Use", "", "```python", "import vitlab", "",
              f'model = vitlab.create_model(pretrained="hf-hub:{repo}")']
    if timm_loads:
        lines += ["", "import timm", "", f'model = timm.create_model("hf-hub:{repo}", pretrained=True)  # timm alone']
    lines += ["```", ""]
    if command or run_config or notes:
        lines += ["## How it was made", ""]
        if command:
            lines += ["```bash", command, "```", ""]
        lines += [f"- {n}" for n in notes or []] + ([""] if notes else [])
        if run_config:
            lines += ["<details><summary>The run's config.yaml</summary>", "", "```yaml", run_config.rstrip(), "```",
                      "", "</details>", ""]
    return "\n".join(lines)


def _nums(values: Sequence[float]) -> str:
    return ", ".join(f"{v:.4g}" for v in values)


# ----------------------------------------------------------------------------------------------- writing
def _write_atomic(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)  # readers see the old file or the new one, never half of one


def save_hub_folder(model: nn.Module, folder: str | Path, *, data_config: Optional[Mapping[str, Any]] = None,
                    class_names: Optional[Sequence[str]] = None, metrics: Optional[Mapping[str, float]] = None,
                    command: Optional[str] = None, overwrite: bool = False, preset: Optional[str] = None,
                    run_config: Optional[str] = None, notes: Optional[Sequence[str]] = None,
                    repo_id: Optional[str] = None) -> Path:
    """Write ``folder/{model.safetensors, config.json, README.md}``, each file atomically.

    Args:
        model: a vitlab ``VisionTransformer``.
        folder: created if missing; an existing non-empty folder only with ``overwrite=True``.
        data_config: timm's data config of the model's input (mean, std, interpolation, crop_pct).
        class_names: one name per class.
        metrics: e.g. ``{"test/acc1": 0.91}``, a table in the model card.
        command: the command that made the model, in the model card.
        overwrite: replace the files of an existing folder (other files in it are left alone).
        preset: the vitlab preset the model was built from (names conv/CCT architectures ``vitlab_<preset>``).
        run_config: the training run's config.yaml, in the model card.
        notes: lines for the model card, e.g. where the data config came from.
        repo_id: the hub repository it will be pushed to, for the model card's usage lines.

    Returns:
        The folder.
    """
    from safetensors.torch import save_file

    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise ValueError(f"{folder} exists and is not a folder")
    if folder.is_dir() and any(folder.iterdir()) and not overwrite:
        raise ValueError(f"{folder} exists and is not empty; pass overwrite=True (--overwrite) to replace its files")
    config = hub_config(model, data_config=data_config, class_names=class_names, preset=preset)
    folder.mkdir(parents=True, exist_ok=True)
    tmp = folder / f".{WEIGHTS}.tmp"
    save_file(hub_state_dict(model), str(tmp), metadata={"format": "pt"})
    os.replace(tmp, folder / WEIGHTS)
    _write_atomic(folder / CONFIG, (json.dumps(config, indent=2) + "\n").encode())
    card = model_card(config, metrics=metrics, command=command, run_config=run_config, notes=notes, repo_id=repo_id,
                      num_params=sum(p.numel() for p in model.parameters()))
    _write_atomic(folder / CARD, card.encode())
    return folder


# ----------------------------------------------------------------------------------------------- the hub
def _hub_error(err: Exception) -> str:
    """Why a hub call failed, in a few words."""
    from huggingface_hub import constants, errors

    name = type(err).__name__
    first = (str(err).strip().splitlines() or [name])[0][:200]
    if isinstance(err, errors.OfflineModeIsEnabled) or "offline" in first.lower():
        return "the hub could not be reached: offline mode is on (HF_HUB_OFFLINE=1)"
    if isinstance(err, (errors.RepositoryNotFoundError, errors.GatedRepoError)):
        return f"the repository does not exist or is not accessible with this token ({name})"
    if isinstance(err, errors.RevisionNotFoundError):
        return f"no such revision ({name})"
    if isinstance(err, errors.LocalEntryNotFoundError):
        why = "offline mode is on (HF_HUB_OFFLINE=1)" if constants.HF_HUB_OFFLINE else "no connection"
        return f"the hub could not be reached ({why}) and the files are not in the local cache"
    if isinstance(err, errors.HfHubHTTPError):
        status = getattr(getattr(err, "response", None), "status_code", None)
        if status in (401, 403):
            return f"not allowed (HTTP {status}): log in with `hf auth login` or pass a token with write access"
        return f"the hub answered {name}: {first}"
    return f"the hub could not be reached ({name}: {first})"


def split_repo(repo: str) -> tuple[str, Optional[str]]:
    """``"org/name@rev"`` -> ``("org/name", "rev")``; ValueError unless it looks like a repository id."""
    repo_id, _, revision = repo.partition("@")
    if repo_id.count("/") != 1 or not all(repo_id.split("/")):
        raise ValueError(f"hf-hub:{repo} is not a Hugging Face repository id: expected hf-hub:org/name[@revision]")
    return repo_id, revision or None


def download_hub_folder(repo: str, cache_dir: Optional[str | Path] = None) -> Path:
    """Download config.json and the weights of ``org/name[@revision]`` (huggingface_hub's cache); the folder.

    A ValueError in one line naming the repository when the hub cannot be reached (offline) and the files are not
    cached, or when the repository does not exist.
    """
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import RemoteEntryNotFoundError  # (not the local cache's: that is offline)

    from .pretrained import WEIGHT_FILES

    repo_id, revision = split_repo(repo)
    try:
        config = hf_hub_download(repo_id, CONFIG, revision=revision, cache_dir=cache_dir)
        for name in WEIGHT_FILES:
            try:
                hf_hub_download(repo_id, name, revision=revision, cache_dir=cache_dir)
                break
            except RemoteEntryNotFoundError:
                continue
        else:
            raise ValueError(f"hf-hub:{repo} has none of the weight files {list(WEIGHT_FILES)}")
    except ValueError:
        raise
    except Exception as err:  # connection, HTTP, offline: one line, no traceback from the HTTP stack
        raise ValueError(f"could not download hf-hub:{repo} from the Hugging Face hub: {_hub_error(err)}") from None
    return Path(config).parent


def push_to_hub(folder: str | Path, repo_id: str, private: bool = False, token: Optional[str] = None,
                commit_message: str = "Add vitlab model") -> str:
    """Upload a folder written by ``save_hub_folder`` to ``repo_id`` (created if missing); returns its URL.

    A ValueError in one line naming the repository when the hub cannot be reached or refuses the upload.
    """
    from huggingface_hub import HfApi

    folder = Path(folder)
    missing = [n for n in (CONFIG, WEIGHTS) if not (folder / n).is_file()]
    if missing:
        raise ValueError(f"{folder} is not a hub folder: no {missing} (write it with save_hub_folder first)")
    split_repo(repo_id)
    api = HfApi(token=token)
    try:
        url = api.create_repo(repo_id, private=private, exist_ok=True, repo_type="model")
        api.upload_folder(folder_path=str(folder), repo_id=url.repo_id, repo_type="model",
                          commit_message=commit_message, allow_patterns=[CONFIG, WEIGHTS, CARD])
    except Exception as err:
        raise ValueError(f"could not push {folder} to the Hugging Face hub repository {repo_id}: "
                         f"{_hub_error(err)}") from None
    return str(url)


__all__ = ["save_hub_folder", "hub_config", "hub_state_dict", "model_card", "push_to_hub", "download_hub_folder",
           "split_repo"]
