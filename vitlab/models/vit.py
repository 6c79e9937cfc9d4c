"""The Vision Transformer, in reading order: tokenize -> prefix tokens + positions -> blocks -> norm -> pool -> head.

With the same weights it gives the same logits as timm's ``VisionTransformer``: module and parameter names are
timm's, so a timm state_dict loads as it is (see ``pretrained.py``). It also keeps timm's model contract
(``forward_intermediates``, ``prune_intermediate_layers``, ``feature_info``, ``group_matcher``,
``reset_classifier``, ``set_input_size``), scripts with TorchScript and traces with torch.fx.
"""

from contextlib import nullcontext
from typing import Any, Dict, List, Optional, Tuple, Union

import torch
from timm.models._features import feature_take_indices
from torch import nn
from torch.utils.checkpoint import checkpoint

from .config import ViTConfig
from .layers import Block, SeqPool, explicit_attention, layer_norm
from .pos_embed import positions_for_grid, resample, sincos_2d
from .tokenizers import build_tokenizer

# timm's global_pool names -> vitlab's pool; what timm offers beyond these has no vitlab equivalent
TIMM_POOLS = {"token": "cls", "cls": "cls", "avg": "avg", "seq": "seq"}


class VisionTransformer(nn.Module):
    """A Vision Transformer built from a ``ViTConfig`` (or the same fields as keyword arguments).

    ``device`` and ``dtype`` create the parameters there directly (``device="meta"`` allocates nothing).
    """

    def __init__(self, cfg: ViTConfig | None = None, *, device: Any = None, dtype: Optional[torch.dtype] = None,
                 **kwargs: Any) -> None:
        super().__init__()
        if cfg is None:
            cfg = ViTConfig.from_dict(kwargs)
        elif kwargs:
            cfg = cfg.replace(**kwargs)
        with torch.device(device) if device is not None else nullcontext():
            self._build(cfg)
            self.init_weights()
        if dtype is not None:
            self.to(dtype)

    def _build(self, cfg: ViTConfig) -> None:
        self.cfg = cfg
        D = self.embed_dim = self.num_features = self.head_hidden_size = cfg.embed_dim
        self.num_classes = cfg.num_classes
        self.in_chans = cfg.in_chans
        self.global_pool = cfg.pool
        self.num_prefix_tokens = cfg.num_prefix_tokens
        self.has_class_token = cfg.use_class_token
        self.grad_checkpointing = cfg.grad_checkpointing

        # 1. tokenizer: (B, C, H, W) -> (B, N, D)
        self.patch_embed = build_tokenizer(cfg)
        self.grid: Tuple[int, int] = self.patch_embed.grid(*cfg.img_hw)
        num_tokens = self.grid[0] * self.grid[1]

        # 2. prefix tokens and positions
        self.cls_token = nn.Parameter(torch.zeros(1, 1, D)) if cfg.use_class_token else None
        self.dist_token = nn.Parameter(torch.zeros(1, 1, D)) if cfg.distilled else None  # DeiT, after the class token
        self.reg_token = nn.Parameter(torch.zeros(1, cfg.num_registers, D)) if cfg.num_registers else None
        self.learned_pos = cfg.pos_embed == "learned"
        self.pos_prefix = self.num_prefix_tokens if self.learned_pos and cfg.pos_embed_prefix else 0
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
        stride = self.patch_embed.stride
        self.feature_info = [dict(module=f"blocks.{i}", num_chs=D, reduction=stride) for i in range(cfg.depth)]

        # 4. final norm (before pooling, or after it as timm's fc_norm: the default for avg) and head
        self.norm = layer_norm(D) if not cfg.use_fc_norm else nn.Identity()
        self.seq_pool = SeqPool(D) if cfg.pool == "seq" else None
        self.fc_norm = layer_norm(D) if cfg.use_fc_norm else nn.Identity()
        self.head_drop = nn.Dropout(cfg.drop_rate)
        self.head = nn.Linear(D, cfg.num_classes) if cfg.num_classes > 0 else nn.Identity()
        # DeiT: the distillation token's own head; forward returns (head, head_dist) logits only while training
        # with distilled_training set (a teacher's loss on each), their average otherwise (timm's behaviour)
        self.head_dist = None
        if cfg.distilled:
            self.head_dist = nn.Linear(D, cfg.num_classes) if cfg.num_classes > 0 else nn.Identity()
        self.distilled_training = False

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
        if self.dist_token is not None:
            nn.init.trunc_normal_(self.dist_token, std=0.02)  # as timm's VisionTransformerDistilled

    @torch.jit.ignore
    def no_weight_decay(self) -> set[str]:
        """Positions and prefix tokens: timm's list, where they are parameters of this model."""
        return {n for n in ("pos_embed", "cls_token", "dist_token", "reg_token")
                if isinstance(getattr(self, n), nn.Parameter)}

    @torch.jit.ignore
    def group_matcher(self, coarse: bool = False) -> Dict[str, Any]:
        """Parameter groups by depth, as timm's ViT (layer-wise lr decay, ``create_optimizer_v2``): the
        tokenizer, positions and prefix tokens first, one group per block, the final norm, then pooling and head."""
        return dict(stem=r"^cls_token|^dist_token|^reg_token|^pos_embed|^patch_embed",
                    blocks=r"^blocks\.(\d+)" if coarse else [(r"^blocks\.(\d+)", None), (r"^norm", (99999,))])

    @torch.jit.ignore
    def load_pretrained(self, checkpoint_path: str, prefix: str = "") -> None:
        """timm's hook for file and url weights (``pretrained_cfg["custom_load"]``): vitlab's safe reading,
        adaptation and load table (``vitlab.models.pretrained.load_pretrained``)."""
        from .pretrained import load_pretrained
        load_pretrained(self, checkpoint_path)

    @torch.jit.ignore
    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.grad_checkpointing = enable

    @torch.jit.ignore
    def set_distilled_training(self, enable: bool = True) -> None:
        """timm's switch: in training mode, forward returns the (class head, distillation head) logits."""
        if enable and self.head_dist is None:
            raise ValueError("set_distilled_training needs a distilled model (distilled=True)")
        self.distilled_training = enable

    @torch.jit.ignore
    def get_classifier(self) -> Union[nn.Module, Tuple[nn.Module, nn.Module]]:
        """The head; (head, head_dist) for a distilled model, as timm's."""
        return self.head if self.head_dist is None else (self.head, self.head_dist)

    def reset_classifier(self, num_classes: int, global_pool: Optional[str] = None) -> None:
        """A fresh head for ``num_classes`` classes (0 = no head: forward returns pooled features), on the
        model's device and dtype. ``global_pool`` (timm's argument) must name the model's own pooling: vitlab
        fixes pooling at construction, since it decides where the final norm sits."""
        if not isinstance(num_classes, int) or isinstance(num_classes, bool) or num_classes < 0:
            raise ValueError(f"num_classes must be an integer >= 0, got {num_classes!r}")
        if global_pool is not None and TIMM_POOLS.get(global_pool) != self.global_pool:
            raise ValueError(f"global_pool={global_pool!r}: this model pools with {self.global_pool!r}, fixed when it "
                             f"is built; create it with global_pool (or pool) set instead")
        ref = next(self.parameters())  # the new head goes where the model is
        self.num_classes = self.cfg.num_classes = num_classes
        self.head = self._new_head(num_classes, ref)
        if self.head_dist is not None:
            self.head_dist = self._new_head(num_classes, ref)

    def _new_head(self, num_classes: int, ref: torch.Tensor) -> nn.Module:
        head: nn.Module = nn.Identity()
        if num_classes > 0:
            head = nn.Linear(self.embed_dim, num_classes, device=ref.device, dtype=ref.dtype)
            nn.init.trunc_normal_(head.weight, std=0.02)
            nn.init.zeros_(head.bias)
        return head.train(self.training)

    def set_input_size(self, img_size: Union[int, Tuple[int, int], None] = None,
                       patch_size: Union[int, Tuple[int, int], None] = None) -> None:
        """Rebuild for another image size (int or (H, W)) and, for a tokenizer with ``set_patch_size`` (the patch
        tokenizer: kernel resampled as FlexiViT), another patch size; a learned position table is resampled
        (bicubic) to the new grid."""
        values = self.cfg.to_dict()
        if img_size is not None:
            values["img_size"] = _pair_or_int(img_size, "img_size")
        if patch_size is not None:
            p = _pair_or_int(patch_size, "patch_size")
            if not isinstance(p, int):
                raise ValueError(f"patch_size={patch_size!r}: vitlab tokenizers use square patches")
            if p != self.cfg.patch_size and not hasattr(self.patch_embed, "set_patch_size"):
                raise ValueError(f"patch_size can only change for the patch tokenizer (it resamples its kernel); "
                                 f"this model's is {self.cfg.tokenizer!r}, whose weights depend on it")
            values["patch_size"] = p
        cfg = ViTConfig.from_dict(values)  # validates (e.g. the patch size divides the image)
        if cfg.patch_size != self.cfg.patch_size:
            self.patch_embed.set_patch_size(cfg.patch_size)
        new_grid = self.patch_embed.grid(*cfg.img_hw)
        if isinstance(self.pos_embed, nn.Parameter):
            with torch.no_grad():
                table = resample(self.pos_embed, new_grid, self.grid, self.pos_prefix).detach().clone()
            self.pos_embed = nn.Parameter(table, requires_grad=self.pos_embed.requires_grad)
        elif self.pos_embed is not None:
            self.pos_embed = sincos_2d(new_grid, self.embed_dim).to(self.pos_embed)
        self.cfg, self.grid = cfg, new_grid
        self.feature_info = [dict(f, reduction=self.patch_embed.stride) for f in self.feature_info]
        _record_input_size(self, cfg)

    # ---------------------------------------------------------------- forward
    def _pos_embed(self, x: torch.Tensor, grid: Tuple[int, int]) -> torch.Tensor:
        """Add positions and prepend [class, distillation, registers]: (B, N, D) -> (B, P + N, D)."""
        prefix: List[torch.Tensor] = []
        if self.cls_token is not None:
            prefix.append(self.cls_token.expand(x.shape[0], -1, -1))
        if self.dist_token is not None:
            prefix.append(self.dist_token.expand(x.shape[0], -1, -1))
        if self.reg_token is not None:
            prefix.append(self.reg_token.expand(x.shape[0], -1, -1))
        if self.pos_embed is None:
            return self.pos_drop(torch.cat(prefix + [x], dim=1))
        pos = positions_for_grid(self.pos_embed, [grid[0], grid[1]], [self.grid[0], self.grid[1]], self.pos_prefix,
                                 self.learned_pos)  # at another image size: resampled / rebuilt
        if self.pos_prefix:  # the table has rows for the prefix tokens: concatenate, then add
            x = torch.cat(prefix + [x], dim=1) + pos
        else:  # positions for image tokens only: add, then concatenate
            x = torch.cat(prefix + [x + pos], dim=1)
        return self.pos_drop(x)  # (B, P + N, D)

    def _embed(self, x: torch.Tensor) -> torch.Tensor:
        """Images (B, C, H, W) -> tokens with positions (B, P + N, D), before the blocks."""
        grid = self.patch_embed.grid(x.shape[-2], x.shape[-1])
        return self._pos_embed(self.patch_embed(x), grid)  # (B, P + N, D)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Images (B, C, H, W) -> normalised tokens (B, P + N, D), P prefix tokens first."""
        x = self._embed(x)  # (B, P + N, D)
        for blk in self.blocks:
            if self.grad_checkpointing and self.training and not torch.jit.is_scripting():
                x = checkpoint(blk, x, use_reentrant=False)
            else:
                x = blk(x)
        return self.norm(x)  # (B, P + N, D)

    def pool(self, x: torch.Tensor) -> torch.Tensor:
        """(B, P + N, D) -> (B, D) by the class token, the mean of image tokens, or sequence pooling."""
        if self.global_pool == "cls":
            return x[:, 0]
        tokens = x[:, self.num_prefix_tokens:]  # (B, N, D)
        if self.seq_pool is not None:
            return self.seq_pool(tokens)
        return tokens.mean(dim=1)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """Tokens (B, P + N, D) -> logits (B, K) (or pooled features (B, D) with ``pre_logits``). A distilled model
        while training with ``distilled_training`` returns the pair (class head, distillation head), as timm's."""
        if self.head_dist is not None:
            return self._forward_distilled_head(x, pre_logits)
        x = self.head_drop(self.fc_norm(self.pool(x)))  # (B, D)
        return x if pre_logits else self.head(x)  # (B, K)

    def _forward_distilled_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x_cls = self.head_drop(self.fc_norm(x[:, 0]))  # (B, D) class token
        x_dist = self.head_drop(self.fc_norm(x[:, 1]))  # (B, D) distillation token
        if pre_logits:
            return (x_cls + x_dist) / 2  # (B, D)
        assert self.head_dist is not None
        logits, logits_dist = self.head(x_cls), self.head_dist(x_dist)  # (B, K) each
        if not torch.jit.is_scripting():
            if self.distilled_training and self.training:  # one loss per head (the teacher's on head_dist)
                return logits, logits_dist  # type: ignore[return-value]
        return (logits + logits_dist) / 2  # (B, K): evaluation and plain training average the heads

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))

    # ---------------------------------------------------------------- features (timm's contract)
    def forward_intermediates(
            self,
            x: torch.Tensor,
            indices: Optional[Union[int, List[int]]] = None,
            return_prefix_tokens: bool = False,
            norm: bool = False,
            stop_early: bool = False,
            output_fmt: str = "NCHW",
            intermediates_only: bool = False,
    ) -> Union[List[torch.Tensor], Tuple[torch.Tensor, List[torch.Tensor]]]:
        """Block outputs on the way, as timm's ViT.

        Args:
            x: Images (B, C, H, W).
            indices: The last n blocks if an int, these blocks if a list (negative counts from the end), all if None.
            return_prefix_tokens: Return (image tokens, prefix tokens) pairs.
            norm: Apply the final norm to every intermediate.
            stop_early: Stop after the last block asked for.
            output_fmt: ``"NCHW"`` (B, D, gh, gw) or ``"NLC"`` (B, N, D).
            intermediates_only: Return only the intermediates.

        Returns:
            The intermediates, or (final normalised tokens (B, P + N, D), intermediates).
        """
        if output_fmt not in ("NCHW", "NLC"):
            raise ValueError(f"output_fmt must be 'NCHW' or 'NLC', got {output_fmt!r}")
        take_indices, max_index = feature_take_indices(len(self.blocks), indices)
        B, _, height, width = x.shape
        gh, gw = self.patch_embed.grid(height, width)
        x = self._embed(x)  # (B, P + N, D)
        blocks = self.blocks if torch.jit.is_scripting() or not stop_early else self.blocks[:max_index + 1]
        intermediates: List[torch.Tensor] = []
        for i, blk in enumerate(blocks):
            if self.grad_checkpointing and self.training and not torch.jit.is_scripting():
                x = checkpoint(blk, x, use_reentrant=False)
            else:
                x = blk(x)
            if i in take_indices:
                intermediates.append(self.norm(x) if norm else x)  # (B, P + N, D)
        prefix = [y[:, :self.num_prefix_tokens] for y in intermediates]  # (B, P, D) each
        intermediates = [y[:, self.num_prefix_tokens:] for y in intermediates]  # (B, N, D) each
        if output_fmt == "NCHW":
            intermediates = [y.reshape(B, gh, gw, -1).permute(0, 3, 1, 2).contiguous()
                             for y in intermediates]  # (B, D, gh, gw) each
        if not torch.jit.is_scripting() and return_prefix_tokens:
            intermediates = list(zip(intermediates, prefix))  # type: ignore[arg-type]
        if intermediates_only:
            return intermediates
        return self.norm(x), intermediates

    def prune_intermediate_layers(self, indices: Union[int, List[int]] = 1, prune_norm: bool = False,
                                  prune_head: bool = True) -> List[int]:
        """Drop the blocks after the last index asked for (and the final norm and head if asked), as timm's
        ViT; returns the kept indices."""
        take_indices, max_index = feature_take_indices(len(self.blocks), indices)
        self.blocks = self.blocks[:max_index + 1]
        self.feature_info = self.feature_info[:max_index + 1]
        if prune_norm:
            self.norm = nn.Identity()
        if prune_head:  # the head goes with what feeds only it: sequence pooling (as timm drops attention pooling)
            self.fc_norm = nn.Identity()
            if self.seq_pool is not None:
                self.seq_pool, self.global_pool = None, "avg"
            self.reset_classifier(0)
        return take_indices

    @torch.no_grad()
    def attention_maps(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Every block's attention weights, (B, heads, P + N, P + N) each, through the explicit path."""
        x = self._embed(x)
        maps = []
        with explicit_attention(self):
            for blk in self.blocks:
                x, attn = blk.forward_with_attn(x)
                maps.append(attn)
        return maps


def _pair_or_int(value: Any, name: str) -> Union[int, Tuple[int, int]]:
    """timm passes sizes as int or (H, W); a square pair becomes an int."""
    if isinstance(value, (tuple, list)):
        if len(value) != 2:
            raise ValueError(f"{name} must be an int or (H, W), got {value!r}")
        h, w = (int(v) for v in value)
        return h if h == w else (h, w)
    return value


def _record_input_size(model: nn.Module, cfg: ViTConfig) -> None:
    """Tell timm's model traits (what ``resolve_model_data_config`` reads) the new input size, where timm has them."""
    try:
        from timm.models._input import update_model_input_size
    except ImportError:  # older timm: resolve_model_data_config reads pretrained_cfg only
        return
    update_model_input_size(model, cfg.img_hw, patch_size=cfg.patch_size)
