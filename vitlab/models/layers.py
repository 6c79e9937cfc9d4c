"""Transformer encoder layers: multi-head self-attention, MLP, pre-norm block.

Module and parameter names follow timm's VisionTransformer (``attn.qkv``, ``mlp.fc1``, ``ls1.gamma``, ...) so a
timm state_dict loads without renaming.
"""

from contextlib import contextmanager
from typing import Iterator, Optional

import torch
import torch.nn.functional as F
from timm.layers import DropPath, LayerScale
from torch import nn


def layer_norm(dim: int) -> nn.LayerNorm:
    return nn.LayerNorm(dim, eps=1e-6)  # timm's ViT epsilon


class Attention(nn.Module):
    """Multi-head self-attention from queries, keys and values.

    The fused path calls ``F.scaled_dot_product_attention``; the explicit path computes
    softmax(q k^T / sqrt(hd)) v step by step, gives the same result, and can return the attention weights.
    """

    def __init__(self, dim: int, num_heads: int, *, qkv_bias: bool = True, qk_norm: bool = False,
                 attn_drop: float = 0.0, proj_drop: float = 0.0) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.scale = self.head_dim ** -0.5
        self.fused_attn = True  # False -> explicit softmax path (see ``explicit_attention``)
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.q_norm = layer_norm(self.head_dim) if qk_norm else nn.Identity()
        self.k_norm = layer_norm(self.head_dim) if qk_norm else nn.Identity()
        self.attn_drop = nn.Dropout(attn_drop)
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._attend(x)[0]

    def forward_with_attn(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The output and the attention weights (B, H, N, N), through the explicit path."""
        out, attn = self._attend(x, need_weights=True)
        assert attn is not None
        return out, attn

    def _attend(self, x: torch.Tensor, need_weights: bool = False) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
        B, N, D = x.shape
        qkv = self.qkv(x).reshape(B, N, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)  # (3, B, H, N, hd)
        q, k, v = qkv.unbind(0)  # each (B, H, N, hd)
        q, k = self.q_norm(q), self.k_norm(k)

        attn: Optional[torch.Tensor] = None
        if self.fused_attn and not need_weights:
            x = F.scaled_dot_product_attention(
                q, k, v, dropout_p=self.attn_drop.p if self.training else 0.0)  # (B, H, N, hd)
        else:
            attn = (q * self.scale) @ k.transpose(-2, -1)  # (B, H, N, N)
            attn = attn.softmax(dim=-1)
            x = self.attn_drop(attn) @ v  # (B, H, N, hd)

        x = x.transpose(1, 2).reshape(B, N, D)  # (B, N, D): heads concatenated
        return self.proj_drop(self.proj(x)), attn


class Mlp(nn.Module):
    """Feed-forward network: Linear -> GELU -> Linear, applied to every token."""

    def __init__(self, dim: int, hidden_dim: int, drop: float = 0.0) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden_dim)
        self.act = nn.GELU()
        self.drop1 = nn.Dropout(drop)
        self.fc2 = nn.Linear(hidden_dim, dim)
        self.drop2 = nn.Dropout(drop)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.drop1(self.act(self.fc1(x)))  # (B, N, hidden)
        return self.drop2(self.fc2(x))  # (B, N, D)


class Block(nn.Module):
    """Pre-norm Transformer block: x + attn(norm(x)), then x + mlp(norm(x)); LayerScale and drop path optional."""

    def __init__(self, dim: int, num_heads: int, *, mlp_ratio: float = 4.0, qkv_bias: bool = True,
                 qk_norm: bool = False, drop: float = 0.0, attn_drop: float = 0.0, drop_path: float = 0.0,
                 layer_scale_init: float | None = None) -> None:
        super().__init__()
        self.norm1 = layer_norm(dim)
        self.attn = Attention(dim, num_heads, qkv_bias=qkv_bias, qk_norm=qk_norm, attn_drop=attn_drop,
                              proj_drop=drop)
        self.ls1 = LayerScale(dim, layer_scale_init) if layer_scale_init else nn.Identity()
        self.drop_path1 = DropPath(drop_path) if drop_path > 0 else nn.Identity()
        self.norm2 = layer_norm(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), drop=drop)
        self.ls2 = LayerScale(dim, layer_scale_init) if layer_scale_init else nn.Identity()
        self.drop_path2 = DropPath(drop_path) if drop_path > 0 else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.drop_path1(self.ls1(self.attn(self.norm1(x))))  # (B, N, D)
        return x + self.drop_path2(self.ls2(self.mlp(self.norm2(x))))  # (B, N, D)

    def forward_with_attn(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """As ``forward``, also returning the attention weights (B, H, N, N)."""
        y, attn = self.attn.forward_with_attn(self.norm1(x))
        x = x + self.drop_path1(self.ls1(y))  # (B, N, D)
        return x + self.drop_path2(self.ls2(self.mlp(self.norm2(x)))), attn


class SeqPool(nn.Module):
    """CCT's sequence pooling: softmax(Linear(D, 1)(x)) over the tokens weights their average."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.attention = nn.Linear(dim, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = self.attention(x).softmax(dim=1)  # (B, N, 1)
        return (w.transpose(1, 2) @ x).squeeze(1)  # (B, D)


def set_fused_attention(model: nn.Module, fused: bool) -> None:
    """SDPA (``fused=True``) or the explicit softmax path in every ``Attention`` of ``model``; same results."""
    for m in model.modules():
        if isinstance(m, Attention):
            m.fused_attn = fused


def explicit_attention_pays(device: torch.device, compiled: bool) -> bool:
    """Whether the explicit path is the faster one: under ``torch.compile`` on a CPU, where inductor fuses the
    scale, softmax and their backward around two small matmuls (vit_micro training: +10-12 % over compiled SDPA
    on the 2-core CI machine; docs/performance.md). Eager and on GPUs SDPA is as fast or (flash) faster."""
    return compiled and torch.device(device).type == "cpu"


@contextmanager
def explicit_attention(model: nn.Module) -> Iterator[None]:
    """Use the explicit softmax path in every ``Attention`` of ``model`` inside the block, then restore."""
    layers = [m for m in model.modules() if isinstance(m, Attention)]
    saved = [m.fused_attn for m in layers]
    set_fused_attention(model, False)
    try:
        yield
    finally:
        for m, fused in zip(layers, saved):
            m.fused_attn = fused
