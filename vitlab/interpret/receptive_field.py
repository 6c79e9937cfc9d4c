"""Which input pixels each token sees, and token values spread back over them.

The tokenizer declares its ``stride`` and ``receptive_field`` (``vitlab.models.tokenizers.Tokenizer``); the offset
of token 0 comes from walking its conv and pool layers. Exact for the overlapping conv-stem and CCT tokenizers too.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from vitlab.models.tokenizers.base import _first


def receptive_field_geometry(tokenizer: nn.Module) -> tuple[int, int, int]:
    """``(stride, receptive_field, offset)`` of a tokenizer along one image axis.

    Token i sees pixels ``[offset + i * stride, offset + i * stride + receptive_field)``. The stride and size
    are the tokenizer's own ``stride`` and ``receptive_field``; the offset comes from walking its Conv2d and
    MaxPool2d layers in order (``start -= padding * jump`` for each layer). It is 0 for patches and negative
    for padded convs: a 3x3 stride-2 padding-1 conv centres output 0 on pixel 0, so the conv stem's token 0
    sees pixels -3..3 (patch 4) and CCT-2's token 0 sees -6..6.

    Raises:
        ValueError: The walk finds no conv/pool layers or disagrees with the tokenizer's stride or
            receptive_field (a tokenizer whose layers do not run in registration order).
    """
    rf, jump, start = 1, 1, 0
    found = False
    for m in tokenizer.modules():
        if isinstance(m, (nn.Conv2d, nn.MaxPool2d, nn.AvgPool2d)):
            k, s, p, d = (_first(getattr(m, a, 1)) for a in ("kernel_size", "stride", "padding", "dilation"))
            start -= p * jump
            rf += (k - 1) * d * jump
            jump *= s
            found = True
    if not found:
        raise ValueError(f"{type(tokenizer).__name__} has no Conv2d/MaxPool2d layers to find its receptive field")
    if (jump, rf) != (tokenizer.stride, tokenizer.receptive_field):
        raise ValueError(f"{type(tokenizer).__name__}: its layers give stride {jump} and receptive field {rf}, but "
                         f"it declares stride {tokenizer.stride} and receptive_field {tokenizer.receptive_field}")
    return jump, rf, start


def to_pixels(relevance: torch.Tensor, tokenizer: nn.Module, img_hw: tuple[int, int]) -> torch.Tensor:
    """Spread token relevance (B, gh, gw) over the input pixels each token sees -> (B, H, W).

    A transposed conv with a ones kernel of the receptive field's size and the tokenizer's stride adds each
    token's value to every pixel of its receptive field; the result is shifted by the tokenizer's offset
    (see :func:`receptive_field_geometry`), cropped to the image, and divided by the number of tokens that
    see each pixel. So patch tokens give exact p x p tiles and the overlapping conv-stem and CCT tokens
    give smooth maps; a pixel no token sees gets 0.

    Args:
        relevance: (B, gh, gw) or (gh, gw) per-token values.
        tokenizer: The model's tokenizer (``model.patch_embed``).
        img_hw: (H, W) of the input images.

    Returns:
        (B, H, W) per-pixel relevance (the mean over the tokens that see each pixel).
    """
    if relevance.ndim == 2:
        relevance = relevance[None]
    H, W = img_hw
    if tuple(relevance.shape[-2:]) != tuple(tokenizer.grid(H, W)):
        raise ValueError(f"relevance grid {tuple(relevance.shape[-2:])} does not match the tokenizer's grid "
                         f"{tuple(tokenizer.grid(H, W))} for {H}x{W} images")
    stride, rf, offset = receptive_field_geometry(tokenizer)
    rel = relevance.float()[:, None]  # (B, 1, gh, gw)
    ones = torch.ones(1, 1, rf, rf, dtype=rel.dtype, device=rel.device)
    spread = F.conv_transpose2d(rel, ones, stride=stride)  # (B, 1, (gh-1)s+rf, (gw-1)s+rf), [0, 0] = pixel offset
    count = F.conv_transpose2d(torch.ones_like(rel[:1]), ones, stride=stride)  # tokens seeing each pixel
    h, w = spread.shape[-2:]
    pads = (offset, W - offset - w, offset, H - offset - h)  # left, right, top, bottom; negative pads crop
    spread, count = F.pad(spread, pads), F.pad(count, pads)  # (B, 1, H, W): [0, 0] = pixel 0
    return (spread / count.clamp(min=1))[:, 0]  # (B, H, W)
