"""The one config vocabulary of vitlab, used from Python, YAML and the CLI alike.

Every field is validated in ``ViTConfig.validate()``; a bad value raises ``ValueError`` whose message names the
field and the value, so a user never meets a shape-mismatch traceback from inside torch.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields
from typing import Any, Literal, Optional, Union

Tokenizer = Literal["patch", "conv", "cct"]
Pool = Literal["cls", "avg", "seq"]
PosEmbed = Literal["learned", "sincos", "none"]

TOKENIZERS = ("patch", "conv", "cct")
POOLS = ("cls", "avg", "seq")
POS_EMBEDS = ("learned", "sincos", "none")


@dataclass
class ViTConfig:
    """Architecture of a vitlab Vision Transformer."""

    tokenizer: Tokenizer = "patch"
    img_size: Union[int, tuple[int, int]] = 224  # a side, or (H, W)
    patch_size: int = 16  # patch: patch side; conv: total stride of the stem (a power of 2)
    in_chans: int = 3
    num_classes: int = 1000
    embed_dim: int = 768
    depth: int = 12
    num_heads: int = 12
    mlp_ratio: float = 4.0
    pool: Pool = "cls"
    num_registers: int = 0
    pos_embed: PosEmbed = "learned"
    drop_rate: float = 0.0  # dropout before the head and after attention/MLP projections
    attn_drop_rate: float = 0.0
    drop_path_rate: float = 0.0
    layer_scale_init: Optional[float] = None  # LayerScale gamma init; None = off
    qk_norm: bool = False
    qkv_bias: bool = True
    class_token: Optional[bool] = None  # None = only when pool == "cls"
    pos_embed_prefix: bool = True  # learned positions cover the prefix (class/register) tokens, as timm's default
    fc_norm: Optional[bool] = None  # final norm after pooling (timm's fc_norm) instead of before; None = pool == "avg"
    # tokenizer details
    stem_channels: Optional[tuple[int, ...]] = None  # conv: widths of the 3x3 layers; None = derived from patch_size
    cct_layers: int = 1  # cct: number of conv + ReLU + max-pool layers
    cct_kernel: int = 3
    grad_checkpointing: bool = False

    def __post_init__(self) -> None:
        if isinstance(self.stem_channels, list):
            self.stem_channels = tuple(self.stem_channels)
        if isinstance(self.img_size, (list, tuple)) and len(self.img_size) == 2:
            h, w = self.img_size
            self.img_size = h if h == w and _is_int(h) else (h, w)  # a square stays an int
        self.validate()

    @property
    def use_class_token(self) -> bool:
        return self.pool == "cls" if self.class_token is None else bool(self.class_token)

    @property
    def img_hw(self) -> tuple[int, int]:
        """(H, W) of the input images."""
        return (self.img_size, self.img_size) if isinstance(self.img_size, int) else tuple(self.img_size)

    @property
    def use_fc_norm(self) -> bool:
        return self.pool == "avg" if self.fc_norm is None else bool(self.fc_norm)

    @property
    def num_prefix_tokens(self) -> int:
        return int(self.use_class_token) + self.num_registers

    def validate(self) -> None:
        """Raise ``ValueError`` naming the first bad field."""
        _choice("tokenizer", self.tokenizer, TOKENIZERS)
        _choice("pool", self.pool, POOLS)
        _choice("pos_embed", self.pos_embed, POS_EMBEDS)
        if isinstance(self.img_size, tuple):
            if len(self.img_size) != 2 or not all(_is_int(v) and v > 0 for v in self.img_size):
                raise ValueError(f"img_size must be an integer > 0 or (H, W), got {self.img_size!r}")
        else:
            _positive_int("img_size", self.img_size)
        for name in ("patch_size", "in_chans", "embed_dim", "depth", "num_heads", "cct_layers", "cct_kernel"):
            _positive_int(name, getattr(self, name))
        for name in ("num_classes", "num_registers"):
            value = getattr(self, name)
            if not _is_int(value) or value < 0:
                raise ValueError(f"{name} must be an integer >= 0, got {value!r}")
        if not _is_number(self.mlp_ratio) or self.mlp_ratio <= 0:
            raise ValueError(f"mlp_ratio must be a finite number > 0, got {self.mlp_ratio!r}")
        for name in ("drop_rate", "attn_drop_rate", "drop_path_rate"):
            value = getattr(self, name)
            if not _is_number(value) or not 0.0 <= value < 1.0:
                raise ValueError(f"{name} must be a number in [0, 1), got {value!r}")
        if self.layer_scale_init is not None and (not _is_number(self.layer_scale_init) or self.layer_scale_init <= 0):
            raise ValueError(f"layer_scale_init must be a finite number > 0 or None, got {self.layer_scale_init!r}")
        if self.embed_dim % self.num_heads:
            raise ValueError(
                f"embed_dim={self.embed_dim} is not divisible by num_heads={self.num_heads}")
        if self.pool == "cls" and not self.use_class_token:
            raise ValueError("pool='cls' needs a class token, but class_token=False")
        if self.pos_embed == "sincos" and self.embed_dim % 4:
            raise ValueError(f"pos_embed='sincos' needs embed_dim divisible by 4, got embed_dim={self.embed_dim}")
        H, W = self.img_hw
        if self.tokenizer in ("patch", "conv") and (H % self.patch_size or W % self.patch_size):
            raise ValueError(
                f"patch_size={self.patch_size} does not divide img_size={self.img_size}: "
                f"choose an img_size that is a multiple of {self.patch_size}")
        if self.tokenizer == "conv":
            if self.patch_size & (self.patch_size - 1):
                raise ValueError(f"tokenizer='conv' needs patch_size a power of 2 (the stem halves the grid "
                                 f"per stride-2 layer), got patch_size={self.patch_size}")
            if self.stem_channels is not None:
                if not isinstance(self.stem_channels, tuple):
                    raise ValueError(f"stem_channels must be a list of widths, got {self.stem_channels!r}")
                n_stride2 = self.patch_size.bit_length() - 1
                if len(self.stem_channels) < n_stride2 or any(not _is_int(c) or c <= 0 for c in self.stem_channels):
                    raise ValueError(
                        f"stem_channels={self.stem_channels} must be >= {n_stride2} positive widths for "
                        f"patch_size={self.patch_size} (one stride-2 layer per halving)")
        if self.tokenizer == "cct":
            if self.cct_kernel % 2 == 0:
                raise ValueError(f"cct_kernel must be odd, got {self.cct_kernel}")
            if min(H, W) < 2 ** self.cct_layers:
                raise ValueError(
                    f"img_size={self.img_size} is too small for cct_layers={self.cct_layers} "
                    f"(each layer halves the grid)")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def field_names(cls) -> set[str]:
        return {f.name for f in fields(cls)}

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> "ViTConfig":
        """Build a config; an unknown key is a ``ValueError`` that names it and lists the valid ones."""
        unknown = sorted(set(values) - cls.field_names())
        if unknown:
            raise ValueError(f"unknown config key(s) {unknown}; valid keys: {sorted(cls.field_names())}")
        return cls(**values)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _positive_int(name: str, value: Any) -> None:
    if not _is_int(value) or value <= 0:
        raise ValueError(f"{name} must be an integer > 0, got {value!r}")


def _choice(name: str, value: Any, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ValueError(f"unknown {name} {value!r}; choose one of {list(choices)}")


__all__ = ["ViTConfig", "TOKENIZERS", "POOLS", "POS_EMBEDS"]
