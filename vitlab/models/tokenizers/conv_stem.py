"""Convolutional stem of Xiao et al. 2021 ("Early Convolutions Help Transformers See Better")."""

import re
from dataclasses import dataclass
from typing import Any, Dict, Optional

import torch
from torch import nn

from .base import (Layout, Tokenizer, check_input, check_option, conv_macs, conv_out, is_int, is_power_of_2, log2,
                   register_tokenizer)


def conv_bn_relu(c_in: int, c_out: int, stride: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, kernel_size=3, stride=stride, padding=1, bias=False),
        nn.BatchNorm2d(c_out),
        nn.ReLU(inplace=True),
    )


def default_stem_channels(embed_dim: int, patch_size: int) -> tuple[int, ...]:
    """Xiao et al.'s widths: one stride-2 layer per halving, doubling up to embed_dim (ViTC-1GF: 24,48,96,192)."""
    n = log2(patch_size)
    return tuple(max(8, embed_dim // 2 ** (n - 1 - i)) for i in range(n))


@register_tokenizer
class ConvStem(Tokenizer):
    """3x3 conv + BN + ReLU layers; the first log2(p) have stride 2 (halving the grid, widths growing), any further
    ones stride 1; then a 1x1 conv to D. For a given patch size it yields the same token grid as ``PatchEmbed``.
    """

    name = "conv"
    first_conv = "stem.0.0"

    @dataclass
    class Options:
        channels: Optional[tuple[int, ...]] = None  # widths of the 3x3 layers; None = derived from patch_size

        def __post_init__(self) -> None:
            if isinstance(self.channels, list):
                self.channels = tuple(self.channels)
            check_option("channels", self.channels is None or (
                isinstance(self.channels, tuple) and len(self.channels) > 0 and all(map(is_int, self.channels))),
                "be a list of positive widths (or null)", self.channels)

    @classmethod
    def validate(cls, cfg: Any, options: "ConvStem.Options") -> None:
        super().validate(cfg, options)  # patch_size divides the image
        p = cfg.patch_size
        if not is_power_of_2(p):
            raise ValueError(f"tokenizer='conv' needs patch_size a power of 2 (the stem halves the grid per "
                             f"stride-2 layer), got patch_size={p}")
        if options.channels is not None and len(options.channels) < log2(p):
            raise ValueError(f"tokenizer_options.channels={list(options.channels)} must be >= {log2(p)} widths for "
                             f"patch_size={p} (one stride-2 layer per halving)")

    def __init__(self, cfg: Any, options: "ConvStem.Options") -> None:
        p = cfg.patch_size
        channels = options.channels or default_stem_channels(cfg.embed_dim, p)
        layers, c_in, rf, jump = [], cfg.in_chans, 1, 1
        for i, c_out in enumerate(channels):
            stride = 2 if i < log2(p) else 1
            layers.append(conv_bn_relu(c_in, c_out, stride))
            rf, jump = rf + 2 * jump, jump * stride
            c_in = c_out
        super().__init__(cfg, options, stride=jump, receptive_field=rf)
        self.patch_size = p
        self.stem = nn.Sequential(*layers)
        self.proj = nn.Conv2d(c_in, cfg.embed_dim, kernel_size=1)

    def grid(self, H: int, W: int) -> tuple[int, int]:
        return H // self.patch_size, W // self.patch_size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_input(x, self.in_chans, self.patch_size, "conv")
        x = self.proj(self.stem(x))  # (B, D, gh, gw)
        return x.flatten(2).transpose(1, 2)  # (B, N, D)

    def macs(self, H: int, W: int) -> int:
        macs = 0
        for layer in self.stem:
            conv = layer[0]
            H, W = conv_out(conv, H), conv_out(conv, W)
            macs += conv_macs(conv, H, W)
        return macs + conv_macs(self.proj, H, W)

    @classmethod
    def read_layout(cls, tensors: Dict[str, torch.Tensor], hint: Dict[str, Any]) -> Optional[Layout]:
        stem = sorted((k for k in tensors if re.fullmatch(r"stem\.\d+\.0\.weight", k)),
                      key=lambda k: int(k.split(".")[1]))
        if not stem:
            return None
        # stride-1 layers after the stride-2 ones look the same: the stated patch size decides, else all stride 2
        p = hint["patch_size"] if hint.get("tokenizer") == "conv" and hint.get("patch_size") else 2 ** len(stem)
        channels = tuple(tensors[k].shape[0] for k in stem)
        return Layout({"patch_size": p, "in_chans": tensors[stem[0]].shape[1],
                       "tokenizer_options": {"channels": channels}}, p)
