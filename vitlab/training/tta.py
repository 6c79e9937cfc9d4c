"""Test-time augmentation views: each image mirrored and/or shifted by a pixel, same size."""
from __future__ import annotations

import torch
from torch import nn

# views per ``evaluation.tta`` value: (mirror, shift down, shift right) in pixels
_SHIFTS = ((0, 0), (1, 0), (-1, 0), (0, 1), (0, -1))
TTA_VIEWS: dict[str, tuple[tuple[bool, int, int], ...]] = {
    "none": ((False, 0, 0),),
    "flip": ((False, 0, 0), (True, 0, 0)),
    "flip_shift": tuple((m, dy, dx) for m in (False, True) for dy, dx in _SHIFTS),
}


def tta_view(x: torch.Tensor, mirror: bool, dy: int, dx: int) -> torch.Tensor:
    """``x`` (B, C, H, W) mirrored left-right and/or shifted by ``dy`` rows and ``dx`` columns, same size; the
    uncovered edge repeats the border pixels (no wrap-around)."""
    if mirror:
        x = x.flip(-1)
    if dy == 0 and dx == 0:
        return x
    H, W = x.shape[-2:]
    py, px = abs(dy), abs(dx)
    xp = nn.functional.pad(x, (px, px, py, py), mode="replicate")  # (B, C, H + 2py, W + 2px)
    return xp[..., py - dy:py - dy + H, px - dx:px - dx + W]  # (B, C, H, W)


__all__ = ["TTA_VIEWS", "tta_view"]
