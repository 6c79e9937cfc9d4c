"""Analytic parameter and FLOP counts for any ``ViTConfig``.

Attention matmuls are counted analytically (profilers often miss ``scaled_dot_product_attention``).
Forward MACs = tokenizer + L * [N * D^2 * (4 + 2r) + 2 * N^2 * D] + head; FLOPs = 2 * MACs. The tokenizer counts
its own (``Tokenizer.macs``) and gives the grid N comes from. Norms, softmax, GELU and biases are left out (under
1 % at these sizes).
"""
from __future__ import annotations

import torch

from .config import ViTConfig
from .tokenizers import Tokenizer, build_tokenizer


def _hw(cfg: ViTConfig, img_size: int | tuple[int, int] | None) -> tuple[int, int]:
    if img_size is None:
        return cfg.img_hw
    return (img_size, img_size) if isinstance(img_size, int) else tuple(img_size)


def _tokenizer(cfg: ViTConfig) -> Tokenizer:
    with torch.device("meta"):  # shapes only: no memory, no initialisation cost
        return build_tokenizer(cfg)


def tokenizer_macs(cfg: ViTConfig, img_size: int | tuple[int, int] | None = None) -> int:
    """Multiply-accumulates of the tokenizer for one image."""
    return _tokenizer(cfg).macs(*_hw(cfg, img_size))


def num_tokens(cfg: ViTConfig, img_size: int | tuple[int, int] | None = None) -> int:
    """Image tokens N (without class/register tokens) the tokenizer makes."""
    gh, gw = _tokenizer(cfg).grid(*_hw(cfg, img_size))
    return gh * gw


def forward_macs(cfg: ViTConfig, img_size: int | tuple[int, int] | None = None) -> int:
    """Forward multiply-accumulates for one image."""
    D, L, r = cfg.embed_dim, cfg.depth, cfg.mlp_ratio
    N = num_tokens(cfg, img_size) + cfg.num_prefix_tokens
    hidden = int(D * r)
    per_block = N * D * 3 * D + 2 * N * N * D + N * D * D + 2 * N * D * hidden  # qkv, q@k^T and a@v, proj, mlp
    pool = N * D if cfg.pool == "seq" else 0
    return tokenizer_macs(cfg, img_size) + L * per_block + pool + D * cfg.num_classes


def count_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def model_stats(cfg: ViTConfig, img_size: int | tuple[int, int] | None = None) -> dict[str, float]:
    """Params (M), tokens, forward GMACs and GFLOPs per image, training GFLOPs (~3x forward) per image."""
    from .vit import VisionTransformer

    with torch.device("meta"):
        params = count_params(VisionTransformer(cfg))
    macs = forward_macs(cfg, img_size)
    return {
        "params_m": params / 1e6,
        "tokens": num_tokens(cfg, img_size),
        "gmacs": macs / 1e9,
        "gflops": 2 * macs / 1e9,
        "train_gflops": 6 * macs / 1e9,
    }


def preset_table(names: list[str] | None = None) -> str:
    """A Markdown table of presets: tokenizer, input, tokens, params, forward GFLOPs (``vitlab models``)."""
    from .registry import get_config, list_models

    rows = ["| preset | tokenizer | input | tokens | params (M) | GFLOPs/img (fwd) |", "|---|---|---|---|---|---|"]
    for name in names or list_models():
        cfg = get_config(name)
        s = model_stats(cfg)
        rows.append(f"| `{name}` | {cfg.tokenizer} | {cfg.in_chans}x{cfg.img_hw[0]}x{cfg.img_hw[1]} | "
                    f"{s['tokens']} | {s['params_m']:.2f} | {s['gflops']:.3f} |")
    return "\n".join(rows)
