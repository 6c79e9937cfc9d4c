"""Conv tokenizer of Hassani et al. 2021 (Compact Convolutional Transformers)."""

import re
from dataclasses import dataclass
from typing import Any, Dict, Optional

import torch
from torch import nn

from .base import (Layout, Tokenizer, check_input, check_option, conv_macs, conv_out, is_int, is_power_of_2, log2,
                   register_tokenizer)


@register_tokenizer
class CCTTokenizer(Tokenizer):
    """``layers`` x [Conv2d(kernel, stride 1, no bias) -> ReLU -> MaxPool(3, stride 2, pad 1)]: overlapping
    tokens, each layer halving the grid; intermediate layers have ``mid_channels`` channels, the last one D
    (as SHI-Labs/Compact-Transformers). ``patch_size`` plays no part.
    """

    name = "cct"
    first_conv = "layers.0.0"

    @dataclass
    class Options:
        layers: int = 1  # conv + ReLU + max-pool layers
        kernel: int = 3  # conv kernel side (odd)
        mid_channels: int = 64  # width of the layers before the last

        def __post_init__(self) -> None:
            check_option("layers", is_int(self.layers), "be an integer > 0", self.layers)
            check_option("kernel", is_int(self.kernel) and self.kernel % 2 == 1, "be an odd integer > 0", self.kernel)
            check_option("mid_channels", is_int(self.mid_channels), "be an integer > 0", self.mid_channels)

    @classmethod
    def validate(cls, cfg: Any, options: "CCTTokenizer.Options") -> None:
        if min(cfg.img_hw) < 2 ** options.layers:
            raise ValueError(f"img_size={cfg.img_size} is too small for tokenizer_options.layers={options.layers} "
                             f"(each layer halves the grid)")

    @classmethod
    def matching_options(cls, cfg: Any) -> Dict[str, Any]:
        if not is_power_of_2(cfg.patch_size):
            raise ValueError(f"cct reaches the patch grid only for a power-of-2 patch_size, got {cfg.patch_size}")
        return {"layers": max(1, log2(cfg.patch_size))}  # each layer halves the grid

    def __init__(self, cfg: Any, options: "CCTTokenizer.Options") -> None:
        n, k = options.layers, options.kernel
        rf, jump = 1, 1
        for _ in range(n):
            rf += (k - 1) * jump  # conv
            rf += 2 * jump  # max-pool 3
            jump *= 2
        super().__init__(cfg, options, stride=jump, receptive_field=rf)
        self.n_layers = n
        widths = [cfg.in_chans] + [options.mid_channels] * (n - 1) + [cfg.embed_dim]
        self.layers = nn.Sequential(*[
            nn.Sequential(
                nn.Conv2d(widths[i], widths[i + 1], k, stride=1, padding=k // 2, bias=False),
                nn.ReLU(inplace=True),
                nn.MaxPool2d(kernel_size=3, stride=2, padding=1),
            ) for i in range(n)])
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight)

    def grid(self, H: int, W: int) -> tuple[int, int]:
        for _ in range(self.n_layers):
            H, W = (H + 1) // 2, (W + 1) // 2  # max-pool(3, 2, 1) gives ceil(H / 2)
        return H, W

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_input(x, self.in_chans, 1, "cct")
        x = self.layers(x)  # (B, D, gh, gw)
        return x.flatten(2).transpose(1, 2)  # (B, N, D)

    def macs(self, H: int, W: int) -> int:
        macs = 0
        for conv, _, pool in self.layers:
            H, W = conv_out(conv, H), conv_out(conv, W)
            macs += conv_macs(conv, H, W)
            H, W = conv_out(pool, H), conv_out(pool, W)
        return macs

    @classmethod
    def read_layout(cls, tensors: Dict[str, torch.Tensor], hint: Dict[str, Any]) -> Optional[Layout]:
        convs = sorted((k for k in tensors if re.fullmatch(r"layers\.\d+\.0\.weight", k)),
                       key=lambda k: int(k.split(".")[1]))
        if not convs:
            return None
        first = tensors[convs[0]]  # (C_out, C_in, k, k)
        options = {"layers": len(convs), "kernel": first.shape[-1]}
        if len(convs) > 1:
            options["mid_channels"] = first.shape[0]
        return Layout({"in_chans": first.shape[1], "tokenizer_options": options}, 2 ** len(convs))
