"""Attention rollout (Abnar & Zuidema 2020) and the relevance of each image token to the pooled output.

``model.attention_maps(x)`` gives every block's softmax weights (B, heads, T, T), T = P prefix + N image tokens;
:func:`attention_rollout` fuses the heads, adds the identity for the residual connection and multiplies through
the layers; :func:`token_relevance` reads the row(s) the head actually pools; :func:`pixel_relevance` maps that
to pixels (``vitlab.interpret.receptive_field.to_pixels``).
"""
from __future__ import annotations

import math
from typing import Literal, Sequence

import torch
from torch import nn

from .receptive_field import to_pixels

HeadFusion = Literal["mean", "max", "min"]


def attention_rollout(maps: Sequence[torch.Tensor], discard_ratio: float = 0.0,
                      head_fusion: HeadFusion = "mean") -> torch.Tensor:
    """Attention rollout (Abnar & Zuidema 2020) through all layers.

    Per layer: fuse the heads, optionally zero the weakest ``discard_ratio`` of each row's weights, add the
    identity (the residual connection), renormalise every row to sum 1; then multiply the layers, last on the
    left: ``R = A_L @ ... @ A_1``. Row i of R says how much of each input token ends up in output token i.

    Args:
        maps: One (B, heads, T, T) tensor per layer, first layer first (``model.attention_maps(x)``).
        discard_ratio: Fraction in [0, 1) of each row's smallest fused weights set to 0 before adding the
            identity (the "discard ratio" of Gildenblat's vit-explain, applied per row); 0 keeps everything.
        head_fusion: How heads are combined: their mean, max or min.

    Returns:
        (B, T, T) rollout, rows summing to 1.
    """
    return rollout_per_layer(maps, discard_ratio, head_fusion)[-1]


def rollout_per_layer(maps: Sequence[torch.Tensor], discard_ratio: float = 0.0,
                      head_fusion: HeadFusion = "mean") -> list[torch.Tensor]:
    """The rollout through the first 1, 2, ..., L layers: L tensors (B, T, T); arguments as
    :func:`attention_rollout`."""
    if not maps:
        raise ValueError("attention_rollout needs at least one layer of attention maps, got none")
    if not 0.0 <= discard_ratio < 1.0:
        raise ValueError(f"discard_ratio must be in [0, 1), got {discard_ratio!r}")
    fuse = {"mean": lambda a: a.mean(dim=1), "max": lambda a: a.amax(dim=1), "min": lambda a: a.amin(dim=1)}
    if head_fusion not in fuse:
        raise ValueError(f"head_fusion must be one of {list(fuse)}, got {head_fusion!r}")
    B, _, T, _ = maps[0].shape
    eye = torch.eye(T, dtype=torch.float32, device=maps[0].device)
    rollout, out = eye.expand(B, T, T), []
    for attn in maps:
        if attn.ndim != 4 or attn.shape[0] != B or attn.shape[-2:] != (T, T):
            raise ValueError(f"every attention map must be (B={B}, heads, {T}, {T}), got {tuple(attn.shape)}")
        a = fuse[head_fusion](attn.float())  # (B, T, T)
        k = int(T * discard_ratio)
        if k:
            weakest = a.topk(k, dim=-1, largest=False).indices  # (B, T, k)
            a = a.scatter(-1, weakest, 0.0)
        a = a + eye
        a = a / a.sum(dim=-1, keepdim=True)  # rows sum to 1
        rollout = a @ rollout  # (B, T, T)
        out.append(rollout)
    return out


def pooled_row_weights(model: nn.Module, x: torch.Tensor) -> torch.Tensor | None:
    """How the pooled output combines the image tokens' rollout rows: None for the class token, else
    (B, N, 1) weights summing to 1 over the tokens (uniform for ``avg``, the sequence-pooling softmax of
    this very input for ``seq``)."""
    if model.cfg.pool == "cls":
        return None
    P = model.num_prefix_tokens
    N = math.prod(model.patch_embed.grid(*x.shape[-2:]))
    if model.cfg.pool == "avg":
        return torch.full((x.shape[0], N, 1), 1.0 / N, device=x.device)
    with torch.no_grad():
        tokens = model.forward_features(x)[:, P:]  # (B, N, D), normalised as SeqPool sees them
        return model.seq_pool.attention(tokens).softmax(dim=1).float()  # (B, N, 1)


def _relevance_from_rollout(rollout: torch.Tensor, P: int, weights: torch.Tensor | None) -> torch.Tensor:
    """(B, T, T) rollout -> (B, N) image-token relevance of the pooled output."""
    if weights is None:
        return rollout[:, 0, P:]  # the class token's row
    return (weights * rollout[:, P:, P:]).sum(dim=1)  # weighted image-token rows


def token_relevance(model: nn.Module, x: torch.Tensor, discard_ratio: float = 0.0,
                    head_fusion: HeadFusion = "mean", per_layer: bool = False) -> torch.Tensor:
    """Relevance of each image token to the model's pooled output, from the attention rollout.

    Which rollout row(s), following what the head actually reads (``cfg.pool``):

    * ``cls``: the class token's row.
    * ``avg``: the mean of the image tokens' rows (the pooled vector is the mean of the image tokens, so its
      rollout row is the mean of theirs). A model with a class token but ``avg`` pooling uses this too,
      since its head never reads the class token.
    * ``seq``: the image tokens' rows weighted by the sequence-pooling weights softmax(Linear(x)) of this
      very input (from an ordinary forward pass), as the pooled vector is that weighted sum.

    Only the image-token columns are kept (class and register tokens have no place in the image); values are
    rollout mass, not renormalised (each map sums to at most 1).

    Args:
        model: A vitlab ``VisionTransformer``.
        x: Normalised images (B, C, H, W).
        discard_ratio, head_fusion: As :func:`attention_rollout`.
        per_layer: Return the relevance of the rollout through the first 1, 2, ..., L layers.

    Returns:
        (B, gh, gw) relevance on the token grid of ``x``; (B, L, gh, gw) with ``per_layer``.
    """
    P = model.num_prefix_tokens
    gh, gw = model.patch_embed.grid(*x.shape[-2:])
    rollouts = rollout_per_layer(model.attention_maps(x), discard_ratio, head_fusion)
    weights = pooled_row_weights(model, x)
    if not per_layer:
        rollouts = rollouts[-1:]
    rel = torch.stack([_relevance_from_rollout(r, P, weights) for r in rollouts], dim=1)  # (B, L, N)
    rel = rel.reshape(x.shape[0], -1, gh, gw)
    return rel if per_layer else rel[:, 0]



def pixel_relevance(model: nn.Module, x: torch.Tensor, discard_ratio: float = 0.0,
                    head_fusion: HeadFusion = "mean", per_layer: bool = False) -> torch.Tensor:
    """:func:`token_relevance` mapped to pixels with :func:`to_pixels`: (B, C, H, W) -> (B, H, W), or
    (B, L, H, W) with ``per_layer``."""
    rel = token_relevance(model, x, discard_ratio, head_fusion, per_layer=per_layer)
    if not per_layer:
        return to_pixels(rel, model.patch_embed, tuple(x.shape[-2:]))
    B, L = rel.shape[:2]
    pix = to_pixels(rel.flatten(0, 1), model.patch_embed, tuple(x.shape[-2:]))  # (B * L, H, W)
    return pix.reshape(B, L, *pix.shape[-2:])
