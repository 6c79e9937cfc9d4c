"""Pretrained weights: read from any source, work out the layout, adapt to the model, load, and say what was done.

Sources: a timm model name (``vit_small_patch16_224.augreg_in21k_ft_in1k``, fetched by timm when online),
``hf-hub:org/name[@revision]`` (a hub folder, downloaded by huggingface_hub), a local file (.safetensors;
.pth/.pt/.bin state_dict; a timm train checkpoint; a vitlab/Lightning .ckpt) or a local hub-style folder
(config.json + model.safetensors). Files are read safely: safetensors, or ``torch.load(weights_only=True)``,
which refuses pickles that would run code - nothing in them is executed.

Layout: ``create_pretrained`` reads the source once and takes the architecture from it - class token, registers,
whether positions cover the prefix tokens (timm's ``no_embed_class``), fc_norm, qkv bias, LayerScale, qk-norm and,
without a preset, the widths and depth from the tensor shapes; the head count from the source's config (vitlab's,
a .ckpt's hyper-parameters, timm's ``model_args`` or architecture). Explicit overrides > the checkpoint > the
preset. What vitlab cannot express (MAP pooling, CLIP's pre-norm, SwiGLU, ...) is an error naming it.

Adaptation: another class count (head re-initialised), image size or patch grid (positions resampled bicubic,
patch kernel resampled as FlexiViT), input channels (first conv adapted as timm does), pooling (final norm moved,
unused class token dropped), another tokenizer (transplant: encoder loaded, tokenizer initialised fresh). One
table lists every tensor that was loaded, resampled, adapted, dropped or re-initialised; anything else that does
not fit is an error listing the keys.
"""
from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from timm.layers import resample_patch_embed
from timm.models import adapt_input_conv
from torch import nn

from .config import RENAMED_FIELDS, ViTConfig, merge_fields
from .pos_embed import infer_grid, resample
from .tokenizers import get_tokenizer, list_tokenizers

STATE_DICT_KEYS = ("state_dict", "model", "module", "state_dict_ema", "model_ema")  # wrappers timm/Lightning use
WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin", "open_clip_model.safetensors")
# chosen when training, not part of the weights' architecture: never taken from a checkpoint
TRAINING_FIELDS = ("drop_rate", "attn_drop_rate", "drop_path_rate", "grad_checkpointing")
# read from the checkpoint even when a preset is named: a preset value that differs would load and run wrongly
LAYOUT_FIELDS = ("pool", "class_token", "fc_norm", "num_registers", "pos_embed", "pos_embed_prefix", "qkv_bias",
                 "qk_norm", "layer_scale_init")
POOL_FIELDS = ("pool", "class_token", "fc_norm")  # decided together: overriding one lets the config decide the rest


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


@dataclass
class Source:
    """A pretrained source, read once: its tensors (timm's names) and what it says about its architecture."""

    where: str  # as the user gave it, for messages
    state: dict[str, torch.Tensor]
    config: dict[str, Any] = field(default_factory=dict)  # ViTConfig fields it states (vitlab_config, .ckpt hparams)
    timm: dict[str, Any] = field(default_factory=dict)  # num_heads, img_size, pool of its timm architecture
    unsupported: list[str] = field(default_factory=list)  # timm settings vitlab cannot express (not in the tensors)
    meta: dict[str, Any] = field(default_factory=dict)  # preset, data_config, class_names, pretrained_cfg, label_names


# ----------------------------------------------------------------------------------------------- reading
def upgrade_config_fields(values: dict[str, Any], preset: str | None = None) -> dict[str, Any]:
    """Config fields as written by an older vitlab, in today's names.

    The one place old flat tokenizer fields are read: checkpoints' ``hyper_parameters``, hub folders'
    ``vitlab_config`` and results written before tokenizers had their own options hold ``stem_channels``,
    ``cct_layers`` and ``cct_kernel`` (``config.RENAMED_FIELDS``). Each becomes an option of the tokenizer it
    belonged to, and is dropped for the others (the old config carried all three for every tokenizer).
    """
    old = {k: values[k] for k in RENAMED_FIELDS if k in values}
    if not old:
        return dict(values)
    from .registry import PRESETS
    out = {k: v for k, v in values.items() if k not in old}
    tokenizer = out.get("tokenizer") or (PRESETS[preset]["tokenizer"] if preset in PRESETS else "patch")
    options = {RENAMED_FIELDS[k][1]: v for k, v in old.items() if RENAMED_FIELDS[k][0] == tokenizer and v is not None}
    if options:
        out["tokenizer_options"] = {**(out.get("tokenizer_options") or {}), **options}
    return out


def _load(path: Path) -> Any:
    """The object in a weights file: safetensors, or a pickle only torch's safe loader accepts."""
    if path.suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file
        try:
            return load_file(str(path))
        except (SafetensorError, OSError, ValueError, RuntimeError) as err:
            raise ValueError(f"{path} is not a valid safetensors file: {err}") from None
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # UnpicklingError and friends: never fall back to weights_only=False
        reason = (str(err).strip().splitlines() or [type(err).__name__])[0]
        raise UnsafeCheckpointError(
            f"refusing to load {path}: torch.load(weights_only=True) does not accept it, so it is either not a "
            f"checkpoint or its pickle would run code (nothing in it was executed). Reason: {reason}") from None


def _unwrap(obj: object, path: Path, ema: bool = False) -> dict[str, torch.Tensor]:
    if isinstance(obj, dict):
        for key in STATE_DICT_KEYS:
            if isinstance(obj.get(key), dict):
                obj = obj[key]
                break
    if not isinstance(obj, dict) or not obj or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise ValueError(f"{path} holds no state_dict of tensors")
    state = dict(obj)
    # a vitlab/Lightning .ckpt: the network under "model.", its EMA copy (what validation ran) under "ema.module."
    if "patch_embed.proj.weight" not in state and any(k.startswith("model.") for k in state):
        prefix = "ema.module." if ema and any(k.startswith("ema.module.") for k in state) else "model."
        state = {k[len(prefix):].replace("_orig_mod.", ""): v for k, v in state.items() if k.startswith(prefix)}
    if all(k.startswith("module.") for k in state):  # DDP-wrapped
        state = {k[len("module."):]: v for k, v in state.items()}
    return state


def _read_file(path: Path, where: str, ema: bool) -> Source:
    obj = _load(path)
    source = Source(where, _unwrap(obj, path, ema))
    hparams = obj.get("hyper_parameters") if isinstance(obj, dict) else None
    if isinstance(hparams, dict):  # a vitlab .ckpt: preset + the ViTConfig fields ImageClassifier was given
        from .registry import PRESETS, get_config
        preset = hparams.get("preset") if hparams.get("preset") in PRESETS else None
        fields = {k: v for k, v in upgrade_config_fields(hparams, preset).items()
                  if k in ViTConfig.field_names() and v is not None}
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
        from .hub import download_hub_folder
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


# ----------------------------------------------------------------------------------------------- layout
_KNOWN_KEY = re.compile(r"""(
    cls_token | reg_token | pos_embed
  | patch_embed\.proj\.(weight|bias)
  | patch_embed\.stem\.\d+\.[01]\.(weight|bias|running_mean|running_var|num_batches_tracked)
  | patch_embed\.layers\.\d+\.0\.weight
  | blocks\.\d+\.(norm1|norm2|attn\.qkv|attn\.proj|attn\.q_norm|attn\.k_norm|mlp\.fc1|mlp\.fc2)\.(weight|bias)
  | blocks\.\d+\.ls[12]\.gamma
  | (norm|fc_norm|head|seq_pool\.attention)\.(weight|bias)
)$""", re.X)
# key patterns of timm ViT variants vitlab has no equivalent for
_UNSUPPORTED_KEYS = (
    (r"attn_pool\.", "attention pooling (timm global_pool='map', e.g. SigLIP)"),
    (r"norm_pre\.", "a norm before the blocks (timm pre_norm=True, e.g. CLIP)"),
    (r"patch_embed\.norm\.", "a norm inside the patch embedding (timm embed_norm_layer)"),
    (r"\.mlp\.fc1_[gx]\.", "a SwiGLU MLP (timm mlp_layer=SwiGLUPacked/SwiGLU)"),
    (r"\.mlp\.norm\.", "a norm inside the MLP (timm scale_mlp_norm=True)"),
    (r"\.attn\.norm\.", "a norm inside attention (timm scale_attn_norm=True)"),
)


def check_expressible(source: Source) -> None:
    """Raise ``ValueError`` naming each feature of ``source`` that vitlab's VisionTransformer cannot express."""
    # a vitlab source states its tokenizer: its patch_embed.* tensors are that tokenizer's (a plug-in's too), checked
    # against it when the model is built and loaded
    vitlab_tokenizer = source.config.get("tokenizer") in list_tokenizers()
    state = {k: v for k, v in source.state.items() if not (vitlab_tokenizer and k.startswith("patch_embed."))}
    found = list(source.unsupported)
    for pattern, what in _UNSUPPORTED_KEYS:
        keys = sorted(k for k in state if re.search(pattern, k))
        if keys:
            found.append(f"{what}: keys {_few(keys)}")
    if "patch_embed.proj.weight" in state and "patch_embed.proj.bias" not in state \
            and not any(k.startswith("patch_embed.stem.") for k in state):
        found.append("a patch embedding without bias (timm pre_norm=True, e.g. CLIP): no patch_embed.proj.bias")
    fc1, fc2 = state.get("blocks.0.mlp.fc1.weight"), state.get("blocks.0.mlp.fc2.weight")
    if fc1 is not None and fc2 is not None and fc1.shape[0] != fc2.shape[1]:
        found.append(f"a gated MLP (timm SwiGLUPacked: mlp.fc1 gives {fc1.shape[0]} features, mlp.fc2 takes "
                     f"{fc2.shape[1]})")
    if "blocks.0.attn.proj.weight" in state and "blocks.0.attn.proj.bias" not in state:
        found.append("projections without bias (timm proj_bias=False): no blocks.0.attn.proj.bias")
    if "blocks.0.norm1.weight" in state and "blocks.0.norm1.bias" not in state:
        found.append("norms without bias (e.g. timm norm_layer=RmsNorm): no blocks.0.norm1.bias")
    if any(k.startswith("blocks.") for k in state) and "norm.weight" not in state and "fc_norm.weight" not in state:
        found.append("no final norm (timm final_norm=False): neither norm.weight nor fc_norm.weight")
    named = {k for k in state for p, _ in _UNSUPPORTED_KEYS if re.search(p, k)}
    unknown = sorted(k for k in state if k not in named and not _KNOWN_KEY.match(k))
    if unknown:
        found.append(f"unknown keys ({len(unknown)}): {_few(unknown)}")
    if found:
        raise ValueError(f"{source.where}: vitlab cannot express " + "; ".join(found))


def _few(keys: list[str], n: int = 4) -> str:
    return str(keys[:n])[:-1] + (f", ... {len(keys) - n} more]" if len(keys) > n else "]")


def _mlp_ratio(hidden: int, dim: int) -> float:
    """A ratio with ``int(dim * ratio) == hidden``, as timm and vitlab size the MLP."""
    ratio = hidden / dim
    return ratio if int(dim * ratio) == hidden else (hidden + 0.5) / dim


def _grid_fits(n: int, expected: int | None) -> bool:
    return n > 0 and (n == expected if expected else math.isqrt(n) ** 2 == n)


def read_tokenizer_layout(state: dict[str, torch.Tensor], hint: dict[str, Any],
                          where: str = "checkpoint") -> tuple[dict[str, Any], int]:
    """The registered tokenizer whose tensors ``state``'s ``patch_embed.*`` are: ``({"tokenizer": name, ...fields
    its tensors decide}, stride)``; each tokenizer reads its own (``Tokenizer.read_layout``)."""
    tensors = {k[len("patch_embed."):]: v for k, v in state.items() if k.startswith("patch_embed.")}
    names = list_tokenizers()
    if hint.get("tokenizer") in names:  # the stated (or preset's) tokenizer first: it knows its tensors best
        names.insert(0, names.pop(names.index(hint["tokenizer"])))
    for name in names:
        try:
            layout = get_tokenizer(name).read_layout(tensors, hint)
        except ValueError as err:
            raise ValueError(f"{where}: {err}") from None
        if layout is not None:
            return {"tokenizer": name, **layout.fields}, layout.stride
    raise ValueError(f"{where}: its tokenizer tensors {_few(sorted(tensors))} are none of the registered tokenizers' "
                     f"{list_tokenizers()}; register the tokenizer they belong to, or state tokenizer=...")


def infer_layout(state: dict[str, torch.Tensor], hint: dict[str, Any], where: str = "checkpoint") -> dict[str, Any]:
    """ViTConfig fields the tensors decide.

    Args:
        state: tensors in timm's names.
        hint: the config so far (preset, what the source states, overrides); consulted where the tensors are
            ambiguous: the token grid of the position table, sin-cos vs no positions, cls vs average pooling of a
            model with a class token and no fc_norm (timm's weights carry no pooling tensor).
        where: the source, for messages.
    """
    out: dict[str, Any] = {}
    depth = 1 + max((int(k.split(".")[1]) for k in state if k.startswith("blocks.")), default=-1)
    if depth == 0:
        raise ValueError(f"{where} holds no transformer blocks (no blocks.0.* tensors): not a ViT")
    needed = [k for k in ("blocks.0.norm1.weight", "blocks.0.mlp.fc1.weight") if k not in state]
    if needed or not any(k.startswith("patch_embed.") for k in state):
        raise ValueError(f"{where} is not a ViT checkpoint: no {needed or ['patch_embed.*']} tensors")
    D = state["blocks.0.norm1.weight"].shape[0]
    out.update(embed_dim=D, depth=depth, mlp_ratio=_mlp_ratio(state["blocks.0.mlp.fc1.weight"].shape[0], D))

    # tokenizer and its stride (pixels per token)
    tok, stride = read_tokenizer_layout(state, {**hint, "embed_dim": D}, where)
    out.update(tok)
    out["num_classes"] = state["head.weight"].shape[0] if "head.weight" in state else 0

    # prefix tokens and pooling
    has_cls = "cls_token" in state
    fc = "fc_norm.weight" in state
    out["num_registers"] = state["reg_token"].shape[1] if "reg_token" in state else 0
    if "seq_pool.attention.weight" in state:
        pool = "seq"
    elif not has_cls or fc:
        pool = "avg"
    else:  # class token, norm before pooling: timm's token pooling, or avg with fc_norm=False where stated
        pool = "avg" if hint.get("pool") == "avg" else "cls"
    out.update(pool=pool, class_token=None if has_cls == (pool == "cls") else has_cls,
               fc_norm=None if fc == (pool == "avg") else fc)
    out.update(qkv_bias="blocks.0.attn.qkv.bias" in state, qk_norm="blocks.0.attn.q_norm.weight" in state)
    ls = "blocks.0.ls1.gamma" in state
    out["layer_scale_init"] = (hint.get("layer_scale_init") or 1e-5) if ls else None  # the weights overwrite it

    # positions: does the table cover the prefix tokens (timm's default) or the image tokens only (no_embed_class)?
    if "pos_embed" not in state:
        out["pos_embed"] = "sincos" if hint.get("pos_embed") == "sincos" else "none"
        if hint.get("img_size"):
            out["img_size"] = hint["img_size"]
        return out
    out["pos_embed"] = "learned"
    rows, n_prefix = state["pos_embed"].shape[1], int(has_cls) + out["num_registers"]
    img, expected = hint.get("img_size"), None
    if img and "patch_size" in tok and hint.get("patch_size", stride) == stride:  # a grid of patch_size patches
        h, w = (img, img) if isinstance(img, int) else img
        expected = (h // stride) * (w // stride)  # the grid the stated/preset image size gives
    options: list[bool] = []
    for grid in ((expected, None) if expected else (None,)):
        options = [p for p, n in ((True, rows - n_prefix), (False, rows)) if _grid_fits(n, grid)]
        if options:
            break
    if not options:
        raise ValueError(f"{where}: pos_embed has {rows} rows, neither a square grid nor one with the {n_prefix} "
                         f"prefix tokens; pass img_size=(H, W) for a non-square grid")
    out["pos_embed_prefix"] = prefix = options[0] if n_prefix else True
    tokens = rows - n_prefix if prefix else rows
    out["img_size"] = img if tokens == expected else math.isqrt(tokens) * stride
    return out


def resolve_config(name: str | None, source: Source, overrides: dict[str, Any]) -> ViTConfig:
    """The config for ``source``'s weights: explicit overrides > the checkpoint (its tensors and its stated config)
    > the preset ``name`` (without one, the checkpoint's shapes too; only its layout otherwise)."""
    from .registry import get_config

    preset = get_config(name).to_dict() if name else {}
    fields = dict(preset) or ViTConfig().to_dict()
    stated = {k: v for k, v in source.config.items() if k not in TRAINING_FIELDS}
    hint = merge_fields(merge_fields({**preset, **source.timm}, stated), overrides)
    layout = infer_layout(source.state, hint, source.where)
    take = set(layout) | set(stated) if not name else set(LAYOUT_FIELDS)
    fields.update({k: v for k, v in {**layout, **stated}.items() if k in take})
    heads = overrides.get("num_heads") or stated.get("num_heads") or source.timm.get("num_heads")
    if heads:  # equal tensor shapes for any head count: what the source states beats the preset
        fields["num_heads"] = heads
    elif not name:
        D = fields["embed_dim"]
        raise ValueError(f"{source.where}: num_heads cannot be read from the weights and the source does not state "
                         f"it; pass num_heads=... (a divisor of embed_dim={D}, e.g. {max(1, D // 64)}) or a preset")
    if any(k in overrides for k in POOL_FIELDS):  # the user chose the pooling: the config decides the rest
        fields.update({k: (preset or ViTConfig().to_dict())[k] for k in POOL_FIELDS})
    fields = merge_fields(fields, overrides)  # another tokenizer than the checkpoint's: its own options
    if isinstance(fields.get("img_size"), list):
        fields["img_size"] = tuple(fields["img_size"])
    return ViTConfig.from_dict(fields)


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
    if pos is not None and target is None:  # the model computes its positions (sin-cos) or has none
        state.pop("pos_embed")
        fixed = getattr(model, "pos_embed", None)
        same = fixed is not None and fixed.shape == pos.shape and torch.allclose(fixed, pos.to(fixed), atol=1e-6)
        report.add("pos_embed", "dropped", f"model uses pos_embed={model.cfg.pos_embed!r}"
                   + (" (the table equals its sin-cos positions)" if same else ""))
        return
    if pos is None or target is None or pos.shape == target.shape:
        return
    n_prefix = int("cls_token" in state) + (state["reg_token"].shape[1] if "reg_token" in state else 0)
    rows = pos.shape[1]
    if int(round((rows - n_prefix) ** 0.5)) ** 2 != rows - n_prefix:
        n_prefix = 0  # the table covers image tokens only (no_embed_class)
    prefix, image = pos[:, :n_prefix], pos[:, n_prefix:]
    old_grid = infer_grid(image.shape[1], 0)
    image = resample(image, model.grid, old_grid, 0)
    if old_grid != tuple(model.grid):
        report.add("pos_embed", "resampled", f"grid {old_grid} -> {tuple(model.grid)} (bicubic)")
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
    from .vit import VisionTransformer

    source = read_source(source)
    check_expressible(source)
    cfg = resolve_config(name, source, overrides)
    layout = ", ".join(f"{k}={getattr(cfg, k)!r}" for k in ("tokenizer", "num_heads", *LAYOUT_FIELDS))
    print(f"architecture for {source.where}: {layout}")
    model = VisionTransformer(cfg)
    load_pretrained(model, source)
    return model
