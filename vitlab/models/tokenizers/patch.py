"""Patch embedding: non-overlapping p x p patches, each linearly projected to D (timm's PatchEmbed)."""

from typing import Any, Dict, Optional

import torch
from timm.layers import resample_patch_embed
from torch import nn

from .base import Layout, Tokenizer, check_input, conv_macs, register_tokenizer


@register_tokenizer
class PatchEmbed(Tokenizer):
    """A strided p x p conv: one token per patch. No options: ``patch_size`` is the patch side."""

    name = "patch"
    first_conv = "proj"

    def __init__(self, cfg: Any, options: Any) -> None:
        p = cfg.patch_size
        super().__init__(cfg, options, stride=p, receptive_field=p)
        self.patch_size = p
        self.proj = nn.Conv2d(cfg.in_chans, cfg.embed_dim, kernel_size=p, stride=p)  # timm's key names

    def grid(self, H: int, W: int) -> tuple[int, int]:
        return H // self.patch_size, W // self.patch_size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_input(x, self.in_chans, self.patch_size, "patch")
        x = self.proj(x)  # (B, D, gh, gw)
        return x.flatten(2).transpose(1, 2)  # (B, N, D)

    def macs(self, H: int, W: int) -> int:
        return conv_macs(self.proj, *self.grid(H, W))

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

    @classmethod
    def read_layout(cls, tensors: Dict[str, torch.Tensor], hint: Dict[str, Any]) -> Optional[Layout]:
        if "proj.weight" not in tensors or not set(tensors) <= {"proj.weight", "proj.bias"}:
            return None
        w = tensors["proj.weight"]  # (D, C, p, p)
        if w.shape[-1] != w.shape[-2]:
            raise ValueError(f"patch_embed.proj.weight has a non-square kernel {tuple(w.shape[-2:])}")
        return Layout({"patch_size": w.shape[-1], "in_chans": w.shape[1], "tokenizer_options": {}}, w.shape[-1])
