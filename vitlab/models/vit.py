"""The Vision Transformer, in reading order: tokenize -> prefix tokens + positions -> blocks -> norm -> pool -> head.

With the same weights it gives the same logits as timm's ``VisionTransformer``: module and parameter names are
timm's, so a timm state_dict loads as it is (see ``pretrained.py``).
"""
from __future__ import annotations

from typing import Any

import torch
from timm.layers import is_exporting
from torch import nn
from torch.utils.checkpoint import checkpoint

from .config import ViTConfig
from .layers import Block, SeqPool, explicit_attention, layer_norm
from .pos_embed import resample, sincos_2d
from .tokenizers import build_tokenizer


class VisionTransformer(nn.Module):
    """A Vision Transformer built from a ``ViTConfig`` (or the same fields as keyword arguments)."""

    def __init__(self, cfg: ViTConfig | None = None, **kwargs: Any) -> None:
        super().__init__()
        if cfg is None:
            cfg = ViTConfig.from_dict(kwargs)
        elif kwargs:
            cfg = ViTConfig.from_dict({**cfg.to_dict(), **kwargs})
        self.cfg = cfg
        D = self.embed_dim = self.num_features = cfg.embed_dim
        self.num_classes = cfg.num_classes
        self.num_prefix_tokens = cfg.num_prefix_tokens
        self.grad_checkpointing = cfg.grad_checkpointing

        # 1. tokenizer: (B, C, H, W) -> (B, N, D)
        self.patch_embed = build_tokenizer(cfg)
        self.grid = self.patch_embed.grid(cfg.img_size, cfg.img_size)
        num_tokens = self.grid[0] * self.grid[1]

        # 2. prefix tokens and positions
        self.cls_token = nn.Parameter(torch.zeros(1, 1, D)) if cfg.use_class_token else None
        self.reg_token = nn.Parameter(torch.zeros(1, cfg.num_registers, D)) if cfg.num_registers else None
        self.pos_prefix = self.num_prefix_tokens if cfg.pos_embed == "learned" and cfg.pos_embed_prefix else 0
        if cfg.pos_embed == "learned":
            self.pos_embed = nn.Parameter(torch.zeros(1, self.pos_prefix + num_tokens, D))
        elif cfg.pos_embed == "sincos":
            self.register_buffer("pos_embed", sincos_2d(self.grid, D), persistent=False)
        else:
            self.pos_embed = None
        self.pos_drop = nn.Dropout(cfg.drop_rate)

        # 3. encoder blocks, stochastic depth rising linearly with depth
        dpr = [cfg.drop_path_rate * i / max(cfg.depth - 1, 1) for i in range(cfg.depth)]
        self.blocks = nn.Sequential(*[
            Block(D, cfg.num_heads, mlp_ratio=cfg.mlp_ratio, qkv_bias=cfg.qkv_bias, qk_norm=cfg.qk_norm,
                  drop=cfg.drop_rate, attn_drop=cfg.attn_drop_rate, drop_path=dpr[i],
                  layer_scale_init=cfg.layer_scale_init)
            for i in range(cfg.depth)])

        # 4. final norm (before pooling, or after it as timm's fc_norm: the default for avg) and head
        self.norm = layer_norm(D) if not cfg.use_fc_norm else nn.Identity()
        self.seq_pool = SeqPool(D) if cfg.pool == "seq" else None
        self.fc_norm = layer_norm(D) if cfg.use_fc_norm else nn.Identity()
        self.head_drop = nn.Dropout(cfg.drop_rate)
        self.head = nn.Linear(D, cfg.num_classes) if cfg.num_classes > 0 else nn.Identity()
        self.init_weights()

    # ---------------------------------------------------------------- init and timm-style housekeeping
    def init_weights(self) -> None:
        """timm's default ViT init: truncated normal(0.02) for linears and positions, tiny normal for tokens."""
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
        if isinstance(self.pos_embed, nn.Parameter):
            nn.init.trunc_normal_(self.pos_embed, std=0.02)
        for token in (self.cls_token, self.reg_token):
            if token is not None:
                nn.init.normal_(token, std=1e-6)

    def no_weight_decay(self) -> set[str]:
        return {"pos_embed", "cls_token", "reg_token"}

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.grad_checkpointing = enable

    def get_classifier(self) -> nn.Module:
        return self.head

    def reset_classifier(self, num_classes: int) -> None:
        """A fresh head for ``num_classes`` classes (0 = no head: forward returns pooled features)."""
        if not isinstance(num_classes, int) or num_classes < 0:
            raise ValueError(f"num_classes must be an integer >= 0, got {num_classes!r}")
        self.num_classes = self.cfg.num_classes = num_classes
        self.head = nn.Linear(self.embed_dim, num_classes) if num_classes > 0 else nn.Identity()
        if num_classes > 0:
            nn.init.trunc_normal_(self.head.weight, std=0.02)
            nn.init.zeros_(self.head.bias)

    def set_input_size(self, img_size: int) -> None:
        """Rebuild for another image size; a learned position table is resampled (bicubic) to the new grid."""
        cfg = ViTConfig.from_dict({**self.cfg.to_dict(), "img_size": img_size})  # validates
        new_grid = self.patch_embed.grid(img_size, img_size)
        if isinstance(self.pos_embed, nn.Parameter):
            with torch.no_grad():
                table = resample(self.pos_embed, new_grid, self.grid, self.pos_prefix).detach().clone()
            self.pos_embed = nn.Parameter(table)
        elif self.pos_embed is not None:
            self.pos_embed = sincos_2d(new_grid, self.embed_dim).to(self.pos_embed)
        self.cfg, self.grid = cfg, new_grid

    # ---------------------------------------------------------------- forward
    def _pos_embed(self, x: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
        """Add positions and prepend [class, registers]: (B, N, D) -> (B, P + N, D)."""
        B = x.shape[0]
        prefix = [t.expand(B, -1, -1) for t in (self.cls_token, self.reg_token) if t is not None]
        if self.pos_embed is None:
            return torch.cat(prefix + [x], dim=1)
        if tuple(grid) == self.grid and not is_exporting():  # exporting: keep the graph symbolic in H, W
            pos = self.pos_embed
        elif isinstance(self.pos_embed, nn.Parameter):
            pos = resample(self.pos_embed, grid, self.grid, self.pos_prefix)  # run at another image size
        else:
            pos = sincos_2d(grid, self.embed_dim).to(x)
        if self.pos_prefix:  # the table has rows for the prefix tokens: concatenate, then add
            x = torch.cat(prefix + [x], dim=1) + pos
        else:  # positions for image tokens only: add, then concatenate
            x = torch.cat(prefix + [x + pos], dim=1)
        return self.pos_drop(x)  # (B, P + N, D)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Images (B, C, H, W) -> normalised tokens (B, P + N, D), P prefix tokens first."""
        grid = self.patch_embed.grid(*x.shape[-2:])
        x = self.patch_embed(x)  # (B, N, D)
        x = self._pos_embed(x, grid)  # (B, P + N, D)
        for blk in self.blocks:
            if self.grad_checkpointing and self.training and torch.is_grad_enabled():
                x = checkpoint(blk, x, use_reentrant=False)
            else:
                x = blk(x)
        return self.norm(x)  # (B, P + N, D)

    def pool(self, x: torch.Tensor) -> torch.Tensor:
        """(B, P + N, D) -> (B, D) by the class token, the mean of image tokens, or sequence pooling."""
        if self.cfg.pool == "cls":
            return x[:, 0]
        tokens = x[:, self.num_prefix_tokens:]  # (B, N, D)
        return tokens.mean(dim=1) if self.cfg.pool == "avg" else self.seq_pool(tokens)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = self.head_drop(self.fc_norm(self.pool(x)))  # (B, D)
        return x if pre_logits else self.head(x)  # (B, K)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))

    @torch.no_grad()
    def attention_maps(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Every block's attention weights, (B, heads, P + N, P + N) each, through the explicit path."""
        grid = self.patch_embed.grid(*x.shape[-2:])
        x = self._pos_embed(self.patch_embed(x), grid)
        maps = []
        with explicit_attention(self):
            for blk in self.blocks:
                x, attn = blk(x, return_attn=True)
                maps.append(attn)
        return maps
