"""Position embeddings: learned absolute tables (resampled to new grids as timm does) and fixed 2D sin-cos.

The table lives on the model as ``pos_embed`` (timm's key): a Parameter when learned, a non-persistent buffer
when sin-cos, None when off.
"""

from typing import List

import torch
from timm.layers import is_exporting, register_notrace_function, resample_abs_pos_embed
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


@register_notrace_function  # a leaf under torch.fx: the grid is only known when the traced graph runs
def positions_for_grid(pos_embed: torch.Tensor, grid: List[int], base_grid: List[int], num_prefix: int,
                       learned: bool) -> torch.Tensor:
    """The position table for a ``grid`` of tokens: the model's own table at its ``base_grid``, else the learned
    table resampled (bicubic, as timm's ``dynamic_img_size``) or the sin-cos table rebuilt for that grid."""
    if grid[0] == base_grid[0] and grid[1] == base_grid[1] and not is_exporting():
        return pos_embed
    if learned:
        return resample_abs_pos_embed(pos_embed, new_size=grid, old_size=base_grid,
                                      num_prefix_tokens=num_prefix)  # (1, P + N', D)
    return _sincos_like(grid, pos_embed)  # (1, N', D)


@torch.jit.ignore  # timm's builder takes *args, which TorchScript cannot compile: called back in Python
def _sincos_like(grid: List[int], like: torch.Tensor) -> torch.Tensor:
    return sincos_2d((grid[0], grid[1]), like.shape[-1]).to(like)  # (1, N', D)


def infer_grid(num_positions: int, num_prefix: int) -> tuple[int, int]:
    """The square grid of a table with ``num_positions`` rows, ``num_prefix`` of them for prefix tokens."""
    n = num_positions - num_prefix
    side = int(round(n ** 0.5))
    if side * side != n:
        raise ValueError(f"cannot infer a square grid from a position table of {num_positions} rows "
                         f"({num_prefix} prefix)")
    return side, side
