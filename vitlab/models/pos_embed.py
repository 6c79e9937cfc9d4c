"""Position embeddings: learned absolute tables (resampled to new grids as timm does) and fixed 2D sin-cos.

The table lives on the model as ``pos_embed`` (timm's key): a Parameter when learned, a non-persistent buffer
when sin-cos, None when off.
"""
from __future__ import annotations

import torch
from timm.layers import is_exporting, resample_abs_pos_embed
from timm.layers.pos_embed_sincos import build_sincos2d_pos_embed


def sincos_2d(grid: tuple[int, int], dim: int) -> torch.Tensor:
    """Fixed 2D sin-cos positions (MoCo v3 / big_vision) for a gh x gw grid: (1, gh*gw, D)."""
    return build_sincos2d_pos_embed(list(grid), dim=dim).unsqueeze(0)


def resample(pos_embed: torch.Tensor, new_grid: tuple[int, int], old_grid: tuple[int, int],
             num_prefix: int) -> torch.Tensor:
    """Bicubic resampling of a (1, P + gh*gw, D) table to a new grid, the P prefix rows kept as they are."""
    if tuple(new_grid) == tuple(old_grid) and not is_exporting():
        return pos_embed
    return resample_abs_pos_embed(pos_embed, new_size=list(new_grid), old_size=list(old_grid),
                                  num_prefix_tokens=num_prefix)  # (1, P + N', D)


def infer_grid(num_positions: int, num_prefix: int) -> tuple[int, int]:
    """The square grid of a table with ``num_positions`` rows, ``num_prefix`` of them for prefix tokens."""
    n = num_positions - num_prefix
    side = int(round(n ** 0.5))
    if side * side != n:
        raise ValueError(f"cannot infer a square grid from a position table of {num_positions} rows "
                         f"({num_prefix} prefix)")
    return side, side
