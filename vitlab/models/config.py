"""The one config vocabulary of vitlab, used from Python, YAML and the CLI alike.

Every field is validated in ``ViTConfig.validate()``; a bad value raises ``ValueError`` whose message names the
field and the value, so a user never meets a shape-mismatch traceback from inside torch. The tokenizer's own
options (``tokenizer_options``) are declared and checked by the tokenizer (``vitlab/models/tokenizers/``).
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, fields, make_dataclass
from typing import Any, Literal, Mapping, Optional, Union, get_type_hints

from .tokenizers import get_tokenizer, list_tokenizers

Pool = Literal["cls", "avg", "seq"]
PosEmbed = Literal["learned", "sincos", "none"]

POOLS = ("cls", "avg", "seq")
POS_EMBEDS = ("learned", "sincos", "none")

# The flat fields configs had before tokenizers declared their own options -> (tokenizer, option): from_dict names
# the new key; older checkpoints and hub folders are read through vitlab.models.pretrained.upgrade_config_fields.
RENAMED_FIELDS = {"stem_channels": ("conv", "channels"), "cct_layers": ("cct", "layers"),
                  "cct_kernel": ("cct", "kernel")}


@dataclass
class ViTConfig:
    """Architecture of a vitlab Vision Transformer.

    Args:
        tokenizer: A registered tokenizer (``list_tokenizers()``): "patch", "conv", "cct" or a plug-in.
        img_size: Input side, or (H, W).
        patch_size: patch: the patch side; conv: the stem's total stride (a power of 2); cct: unused.
        in_chans: Input channels.
        num_classes: Classes of the head; 0 = no head (features).
        embed_dim: Token width D.
        depth: Transformer blocks.
        num_heads: Attention heads per block (D divisible by it).
        mlp_ratio: MLP hidden width / D.
        pool: "cls" (class token), "avg" (mean of the image tokens) or "seq" (CCT's sequence pooling).
        num_registers: Register tokens (Darcet et al. 2024).
        pos_embed: "learned", "sincos" (fixed 2-D) or "none".
        drop_rate: Dropout before the head and after the attention/MLP projections.
        attn_drop_rate: Dropout of the attention weights.
        drop_path_rate: Stochastic depth at the last block (linear from 0 at the first).
        layer_scale_init: LayerScale gamma init; None = off.
        qk_norm: LayerNorm on queries and keys.
        qkv_bias: Bias of the query/key/value projection.
        class_token: None = only when pool is "cls".
        pos_embed_prefix: Learned positions cover the prefix (class/register) tokens, as timm's default.
        fc_norm: Final norm after pooling (timm's fc_norm) instead of before; None = when pool is "avg".
        tokenizer_options: The tokenizer's own options, e.g. {"layers": 2} for cct (defaults filled in).
        grad_checkpointing: Recompute block activations in backward (less memory, slower).
        distilled: DeiT's distillation token (after the class token) and its own head ``head_dist``; needs pool
            "cls". Evaluation averages the two heads; training with a teacher uses each (``model.distill``).
    """

    tokenizer: str = "patch"  # a registered tokenizer: "patch", "conv", "cct" or a plug-in
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
    # the tokenizer's own options, e.g. {"layers": 2} for cct (its Options dataclass: defaults filled in)
    tokenizer_options: dict[str, Any] = field(default_factory=dict)
    grad_checkpointing: bool = False
    distilled: bool = False  # DeiT: a distillation token and a second head (head_dist); pool "cls"

    def __post_init__(self) -> None:
        if isinstance(self.img_size, (list, tuple)) and len(self.img_size) == 2:
            h, w = self.img_size
            self.img_size = h if h == w and _is_int(h) else (h, w)  # a square stays an int
        self.validate()
        # every option stated, defaults included: the config says in full what is built
        self.tokenizer_options = asdict(get_tokenizer(self.tokenizer).parse_options(self.tokenizer_options))

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
        return int(self.use_class_token) + int(self.distilled) + self.num_registers

    def validate(self) -> None:
        """Raise ``ValueError`` naming the first bad field."""
        tokenizer = get_tokenizer(self.tokenizer)  # unknown: a ValueError listing the registered ones
        _choice("pool", self.pool, POOLS)
        _choice("pos_embed", self.pos_embed, POS_EMBEDS)
        if isinstance(self.img_size, tuple):
            if len(self.img_size) != 2 or not all(_is_int(v) and v > 0 for v in self.img_size):
                raise ValueError(f"img_size must be an integer > 0 or (H, W), got {self.img_size!r}")
        else:
            _positive_int("img_size", self.img_size)
        for name in ("patch_size", "in_chans", "embed_dim", "depth", "num_heads"):
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
        if not isinstance(self.distilled, bool):
            raise ValueError(f"distilled must be true or false, got {self.distilled!r}")
        if self.distilled and self.pool != "cls":
            raise ValueError(f"distilled=True reads the class and distillation tokens: it needs pool='cls', "
                             f"got pool={self.pool!r}")
        if self.pos_embed == "sincos" and self.embed_dim % 4:
            raise ValueError(f"pos_embed='sincos' needs embed_dim divisible by 4, got embed_dim={self.embed_dim}")
        tokenizer.validate(self, tokenizer.parse_options(self.tokenizer_options))  # its options, image size, ...

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def replace(self, **changes: Any) -> ViTConfig:
        """A copy with ``changes`` applied (see :func:`merge_fields`), validated."""
        return ViTConfig.from_dict(merge_fields(self.to_dict(), changes))

    @classmethod
    def field_names(cls) -> set[str]:
        return {f.name for f in fields(cls)}

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> "ViTConfig":
        """Build a config; an unknown key is a ``ValueError`` that names it and lists the valid ones."""
        renamed = [k for k in RENAMED_FIELDS if k in values]
        if renamed:
            raise ValueError(renamed_message({k: values[k] for k in renamed}))
        unknown = sorted(set(values) - cls.field_names())
        if unknown:
            raise ValueError(f"unknown config key(s) {unknown}; valid keys: {sorted(cls.field_names())}")
        return cls(**values)


# ``ViTConfig``'s fields, each optional: what ``ImageClassifier(arch=...)`` and ``model.arch.*`` take; None keeps the
# preset's value (or ViTConfig's default without a preset). Derived, so every field is declared once, above.
ViTOverrides = make_dataclass(
    "ViTOverrides", [(f.name, Optional[t], field(default=None))
                     for f, t in zip(fields(ViTConfig), get_type_hints(ViTConfig).values())], frozen=True)
ViTOverrides.__module__ = __name__
ViTOverrides.__doc__ = ViTConfig.__doc__.replace(
    "Architecture of a vitlab Vision Transformer.",
    "Architecture overrides: ``ViTConfig``'s fields, each None = the preset's value.")


def merge_fields(base: Mapping[str, Any], changes: Mapping[str, Any]) -> dict[str, Any]:
    """``base`` config fields updated by ``changes``. ``tokenizer_options`` belong to their tokenizer: they update the
    base's options while the tokenizer stays, and start from the new tokenizer's defaults when it changes."""
    out = {**base, **changes}
    old, new = base.get("tokenizer", "patch"), out.get("tokenizer", "patch")
    given = changes.get("tokenizer_options")
    if given is None or isinstance(given, Mapping):
        kept = (base.get("tokenizer_options") or {}) if new == old else {}
        out["tokenizer_options"] = {**kept, **(given or {})}
    return out


def renamed_message(values: Mapping[str, Any]) -> str:
    """One line naming the new key of old flat tokenizer fields, e.g. ``cct_layers=2``."""
    options = {RENAMED_FIELDS[k][1]: list(v) if isinstance(v, tuple) else v for k, v in values.items()}
    yaml = ", ".join(f"{k}: {'null' if v is None else v}" for k, v in options.items())
    return (f"{', '.join(values)} {'was' if len(values) == 1 else 'were'} renamed: use tokenizer_options={options} "
            f"(YAML: model.arch.tokenizer_options: {{{yaml}}})")


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


__all__ = ["ViTConfig", "ViTOverrides", "POOLS", "POS_EMBEDS", "RENAMED_FIELDS", "merge_fields", "list_tokenizers"]
