"""The architecture of a pretrained source: what its tensors decide, what vitlab cannot express, and the config
that results (explicit overrides > the checkpoint > the preset)."""
from __future__ import annotations

import math
import re
from typing import Any

import torch

from ..checkpoint import TRAINING_FIELDS
from ..config import ViTConfig, merge_fields
from ..registry import get_config
from ..tokenizers import get_tokenizer, list_tokenizers
from .sources import Source

# read from the checkpoint even when a preset is named: a preset value that differs would load and run wrongly
LAYOUT_FIELDS = ("pool", "class_token", "fc_norm", "num_registers", "pos_embed", "pos_embed_prefix", "qkv_bias",
                 "qk_norm", "layer_scale_init", "distilled")
POOL_FIELDS = ("pool", "class_token", "fc_norm")  # decided together: overriding one lets the config decide the rest

_KNOWN_KEY = re.compile(r"""(
    cls_token | dist_token | reg_token | pos_embed
  | patch_embed\.proj\.(weight|bias)
  | patch_embed\.stem\.\d+\.[01]\.(weight|bias|running_mean|running_var|num_batches_tracked)
  | patch_embed\.layers\.\d+\.0\.weight
  | blocks\.\d+\.(norm1|norm2|attn\.qkv|attn\.proj|attn\.q_norm|attn\.k_norm|mlp\.fc1|mlp\.fc2)\.(weight|bias)
  | blocks\.\d+\.ls[12]\.gamma
  | (norm|fc_norm|head|head_dist|seq_pool\.attention)\.(weight|bias)
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
    out["distilled"] = distilled = "dist_token" in state  # DeiT: its token and head_dist, read with the class token
    if distilled:
        pool = "cls"
    elif "seq_pool.attention.weight" in state:
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
    rows, n_prefix = state["pos_embed"].shape[1], int(has_cls) + int(distilled) + out["num_registers"]
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

