"""Tokenizers: turn an image (B, C, H, W) into a token sequence (B, N, D) on a 2D grid.

Each tokenizer is one class with the same small interface, so the encoder never needs to know which one it has:

* ``forward(x)``: (B, C, H, W) -> (B, N, D), N = gh * gw
* ``grid(H, W)``: the token grid (gh, gw) for an input of H x W pixels
* ``stride``, ``receptive_field``: pixels between neighbouring tokens and pixels one token sees (for attention maps)

To add a tokenizer: write one class here and add it to ``TOKENIZERS`` at the bottom.
"""

import math

import torch
from timm.layers import register_notrace_function, resample_patch_embed
from torch import nn


@torch.jit.ignore
@register_notrace_function  # a leaf under torch.fx: it runs on the real tensor when the traced graph runs
def check_input(x: torch.Tensor, in_chans: int, multiple: int, name: str) -> None:
    """Fail with a message naming the bad shape, not a conv traceback."""
    if x.ndim != 4:
        raise ValueError(f"{name} tokenizer expects images (B, C, H, W), got a tensor of shape {tuple(x.shape)}")
    if x.shape[1] != in_chans:
        raise ValueError(f"{name} tokenizer was built for in_chans={in_chans}, got images with {x.shape[1]} "
                         f"channels (shape {tuple(x.shape)})")
    H, W = x.shape[-2:]
    if H % multiple or W % multiple:
        raise ValueError(f"{name} tokenizer needs image sides divisible by patch_size={multiple}, got {H}x{W}")


class PatchEmbed(nn.Module):
    """Non-overlapping p x p patches, each linearly projected to D (a strided conv, as timm's PatchEmbed)."""

    def __init__(self, *, in_chans: int, embed_dim: int, patch_size: int) -> None:
        super().__init__()
        self.in_chans, self.patch_size = in_chans, patch_size
        self.stride = self.receptive_field = patch_size
        self.proj = nn.Conv2d(in_chans, embed_dim, kernel_size=patch_size, stride=patch_size)  # timm's key names

    def grid(self, H: int, W: int) -> tuple[int, int]:
        return H // self.patch_size, W // self.patch_size

    def set_patch_size(self, patch_size: int) -> None:
        """Another patch size, the kernel resampled as FlexiViT (timm's ``resample_patch_embed``)."""
        proj = self.proj
        weight = resample_patch_embed(proj.weight.detach(), [patch_size, patch_size])  # (D, C, p', p')
        self.proj = nn.Conv2d(proj.in_channels, proj.out_channels, kernel_size=patch_size, stride=patch_size,
                              bias=proj.bias is not None, device=weight.device, dtype=weight.dtype)
        with torch.no_grad():
            self.proj.weight.copy_(weight)
            if proj.bias is not None:
                self.proj.bias.copy_(proj.bias)
        self.proj.requires_grad_(proj.weight.requires_grad)
        self.patch_size = self.stride = self.receptive_field = patch_size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_input(x, self.in_chans, self.patch_size, "patch")
        x = self.proj(x)  # (B, D, gh, gw)
        return x.flatten(2).transpose(1, 2)  # (B, N, D)


def conv_bn_relu(c_in: int, c_out: int, stride: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, kernel_size=3, stride=stride, padding=1, bias=False),
        nn.BatchNorm2d(c_out),
        nn.ReLU(inplace=True),
    )


def default_stem_channels(embed_dim: int, patch_size: int) -> tuple[int, ...]:
    """Xiao et al.'s widths: one stride-2 layer per halving, doubling up to embed_dim (ViTC-1GF: 24,48,96,192)."""
    n = int(math.log2(patch_size))
    return tuple(max(8, embed_dim // 2 ** (n - 1 - i)) for i in range(n))


class ConvStem(nn.Module):
    """Convolutional stem of Xiao et al. 2021 ("Early Convolutions Help Transformers See Better").

    3x3 conv + BN + ReLU layers; the first log2(p) have stride 2 (halving the grid, widths growing), any further
    ones stride 1; then a 1x1 conv to D. For a given patch size it yields the same token grid as ``PatchEmbed``.
    """

    def __init__(self, *, in_chans: int, embed_dim: int, patch_size: int,
                 channels: tuple[int, ...] | None = None) -> None:
        super().__init__()
        self.in_chans, self.patch_size = in_chans, patch_size
        channels = tuple(channels) if channels else default_stem_channels(embed_dim, patch_size)
        n_down = int(math.log2(patch_size))
        layers, c_in, rf, jump = [], in_chans, 1, 1
        for i, c_out in enumerate(channels):
            stride = 2 if i < n_down else 1
            layers.append(conv_bn_relu(c_in, c_out, stride))
            rf, jump = rf + 2 * jump, jump * stride
            c_in = c_out
        self.stem = nn.Sequential(*layers)
        self.proj = nn.Conv2d(c_in, embed_dim, kernel_size=1)
        self.stride, self.receptive_field = jump, rf

    def grid(self, H: int, W: int) -> tuple[int, int]:
        return H // self.patch_size, W // self.patch_size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_input(x, self.in_chans, self.patch_size, "conv")
        x = self.proj(self.stem(x))  # (B, D, gh, gw)
        return x.flatten(2).transpose(1, 2)  # (B, N, D)


class CCTTokenizer(nn.Module):
    """Conv tokenizer of Hassani et al. 2021 (Compact Convolutional Transformers).

    ``n_layers`` x [Conv2d(k, stride 1, no bias) -> ReLU -> MaxPool(3, stride 2, pad 1)]: overlapping tokens;
    intermediate layers have 64 channels, the last one D (as SHI-Labs/Compact-Transformers).
    """

    def __init__(self, *, in_chans: int, embed_dim: int, n_layers: int = 1, kernel_size: int = 3,
                 mid_channels: int = 64) -> None:
        super().__init__()
        self.in_chans, self.n_layers = in_chans, n_layers
        widths = [in_chans] + [mid_channels] * (n_layers - 1) + [embed_dim]
        self.layers = nn.Sequential(*[
            nn.Sequential(
                nn.Conv2d(widths[i], widths[i + 1], kernel_size, stride=1, padding=kernel_size // 2, bias=False),
                nn.ReLU(inplace=True),
                nn.MaxPool2d(kernel_size=3, stride=2, padding=1),
            ) for i in range(n_layers)])
        rf, jump = 1, 1
        for _ in range(n_layers):
            rf += (kernel_size - 1) * jump  # conv
            rf += 2 * jump  # max-pool 3
            jump *= 2
        self.stride, self.receptive_field = jump, rf
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


def build_tokenizer(cfg) -> nn.Module:
    """The tokenizer named by ``cfg.tokenizer`` (a ``ViTConfig``)."""
    if cfg.tokenizer == "patch":
        return PatchEmbed(in_chans=cfg.in_chans, embed_dim=cfg.embed_dim, patch_size=cfg.patch_size)
    if cfg.tokenizer == "conv":
        return ConvStem(in_chans=cfg.in_chans, embed_dim=cfg.embed_dim, patch_size=cfg.patch_size,
                        channels=cfg.stem_channels)
    if cfg.tokenizer == "cct":
        return CCTTokenizer(in_chans=cfg.in_chans, embed_dim=cfg.embed_dim, n_layers=cfg.cct_layers,
                            kernel_size=cfg.cct_kernel)
    raise ValueError(f"unknown tokenizer {cfg.tokenizer!r}; choose one of {list(TOKENIZERS)}")


TOKENIZERS = {"patch": PatchEmbed, "conv": ConvStem, "cct": CCTTokenizer}
