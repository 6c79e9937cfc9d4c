"""The tokenizer interface and the registry.

A tokenizer turns images (B, C, H, W) into tokens (B, N, D) on a gh x gw grid (N = gh * gw). The encoder, the
config validation, the FLOP counts, ``vitlab compare``, attention maps, ONNX export and timm's pretrained_cfg only
talk to it through :class:`Tokenizer`, so adding one is one subclass and one ``@register_tokenizer``::

    @register_tokenizer
    class PoolTokenizer(Tokenizer):
        name = "pool"                        # model.tokenizer: pool

        @dataclass
        class Options:                       # model.tokenizer_options: {hidden: 32}
            hidden: int = 32

            def __post_init__(self):         # ValueError: "tokenizer_options.hidden must be ..., got 0"
                check_option("hidden", is_int(self.hidden), "be an integer > 0", self.hidden)

        def __init__(self, cfg, options):
            super().__init__(cfg, options, stride=cfg.patch_size, receptive_field=cfg.patch_size)
            ...

        def forward(self, x):                # (B, C, H, W) -> (B, N, D)
            ...

        def macs(self, H, W):                # analytic count; the default measures one meta-device forward
            ...

tests/models/test_tokenizer_plugin.py registers such a tokenizer and runs it through everything above.

This file must not use ``from __future__ import annotations``: TorchScript and torch.fx read the annotations of
the modules' ``forward`` and ``grid``.
"""

import dataclasses
import math
from dataclasses import dataclass
from typing import Any, ClassVar, Dict, List, NamedTuple, Optional, Tuple, Type

import torch
from timm.layers import register_notrace_function
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


@dataclass
class NoOptions:
    """The options of a tokenizer that has none."""


class Layout(NamedTuple):
    """What a checkpoint's tokenizer tensors say: ViTConfig fields, and the pixels per token."""

    fields: Dict[str, Any]  # e.g. {"patch_size": 16, "in_chans": 3, "tokenizer_options": {...}}
    stride: int


class Tokenizer(nn.Module):
    """Base class of vitlab's tokenizers: images (B, C, H, W) -> tokens (B, N, D).

    A subclass sets ``name`` and, if it has options, ``Options``; builds its layers in ``__init__(cfg, options)``
    (``cfg`` is the model's ``ViTConfig``; it reads ``in_chans``, ``embed_dim``, ``patch_size`` or whatever else
    it needs); and implements ``forward``. The rest has defaults it overrides where they do not fit.

    Class attributes:
        name: the value of ``ViTConfig.tokenizer`` (and ``model.tokenizer`` in YAML) that selects it.
        Options: a dataclass of its own options with defaults: ``ViTConfig.tokenizer_options`` fills it. Its
            ``__post_init__`` checks each value, raising ``ValueError`` naming ``tokenizer_options.<field>``.
        first_conv: the first conv layer, relative to the tokenizer (timm's ``pretrained_cfg["first_conv"]``,
            which timm adapts to another ``in_chans``).

    Instance attributes (set by ``Tokenizer.__init__``):
        stride: pixels between neighbouring tokens.
        receptive_field: pixels one token sees along an axis (attention maps spread a token over them).
    """

    name: ClassVar[str] = ""
    Options: ClassVar[Type[Any]] = NoOptions
    first_conv: ClassVar[str] = "proj"
    stride: int
    receptive_field: int

    def __init__(self, cfg: Any, options: Any, *, stride: int, receptive_field: int) -> None:
        super().__init__()
        self.in_chans = cfg.in_chans
        self.stride, self.receptive_field = stride, receptive_field

    # ------------------------------------------------------------------ configuration (before building)
    @classmethod
    def parse_options(cls, values: Any) -> Any:
        """``ViTConfig.tokenizer_options`` as this tokenizer's ``Options``; a ``ValueError`` names what is wrong."""
        if values is None:
            values = {}
        if not isinstance(values, dict):
            raise ValueError(f"tokenizer_options must be a mapping of option -> value (YAML: "
                             f"model.tokenizer_options: {{key: value}}), got {values!r}")
        valid = [f.name for f in dataclasses.fields(cls.Options)]
        unknown = sorted(str(k) for k in values if k not in valid)
        if unknown:
            raise ValueError(f"unknown tokenizer_options {unknown} for tokenizer {cls.name!r}; "
                             + (f"its options: {valid}" if valid else "it has no options"))
        return cls.Options(**values)

    @classmethod
    def validate(cls, cfg: Any, options: Any) -> None:
        """Checks that involve other ``ViTConfig`` fields (``ValueError`` naming them). By default the image
        sides must be multiples of ``patch_size``, as for a tokenizer whose stride is the patch size."""
        H, W = cfg.img_hw
        if H % cfg.patch_size or W % cfg.patch_size:
            raise ValueError(f"patch_size={cfg.patch_size} does not divide img_size={cfg.img_size}: "
                             f"choose an img_size that is a multiple of {cfg.patch_size}")

    @classmethod
    def matching_options(cls, cfg: Any) -> Dict[str, Any]:
        """Options that give the token grid of ``cfg.patch_size`` x ``cfg.patch_size`` patches (``vitlab compare``
        sets every tokenizer up this way). Default: none, the tokenizer follows ``cfg.patch_size``."""
        return {}

    @classmethod
    def read_layout(cls, tensors: Dict[str, torch.Tensor], hint: Dict[str, Any]) -> Optional[Layout]:
        """What a checkpoint's tensors of this tokenizer decide, or None when they are not this tokenizer's.

        Args:
            tensors: the checkpoint's ``patch_embed.*`` tensors, without the ``patch_embed.`` prefix.
            hint: ViTConfig fields known so far (preset, what the source states, overrides; ``embed_dim`` from the
                blocks).

        The default recognises tensors that are exactly those of this tokenizer built from ``hint`` (a source that
        states its config); a tokenizer overrides it to read its options from the tensors' shapes.
        """
        from ..config import ViTConfig  # the config module imports this one

        if hint.get("tokenizer") != cls.name:
            return None
        try:
            cfg = ViTConfig.from_dict({k: v for k, v in hint.items() if k in ViTConfig.field_names()})
        except ValueError:
            return None
        with torch.device("meta"):
            own = cls(cfg, cls.parse_options(cfg.tokenizer_options))
        shapes = {k: tuple(v.shape) for k, v in own.state_dict().items()}
        if shapes != {k: tuple(v.shape) for k, v in tensors.items()}:
            return None
        fields = {k: getattr(cfg, k) for k in ("patch_size", "in_chans", "tokenizer_options")}
        return Layout(fields, own.stride)

    # ------------------------------------------------------------------ geometry and cost (built)
    def grid(self, H: int, W: int) -> Tuple[int, int]:
        """The token grid (gh, gw) for H x W images; by default floor(H / stride) x floor(W / stride)."""
        return H // self.stride, W // self.stride

    def macs(self, H: int, W: int) -> int:
        """Multiply-accumulates for one H x W image. By default measured: torch's FLOP counter over a forward on
        the meta device (no memory, no compute); a tokenizer overrides it with its analytic count."""
        from torch.utils.flop_counter import FlopCounterMode

        meta = torch.empty(1, self.in_chans, H, W, device="meta")
        with FlopCounterMode(display=False) as counter:
            if next(self.parameters(), meta).device.type == "meta":
                self(meta)
            else:  # a built model's tokenizer: count on a meta copy
                import copy
                copy.deepcopy(self).to("meta")(meta)
        return counter.get_total_flops() // 2


# ---------------------------------------------------------------------------------------------- helpers
def conv_out(conv: nn.Module, size: int) -> int:
    """Output side of a Conv2d / MaxPool2d / AvgPool2d for an input side ``size``."""
    k, s, p, d = (_first(getattr(conv, a, 1)) for a in ("kernel_size", "stride", "padding", "dilation"))
    if getattr(conv, "ceil_mode", False):
        return -(-(size + 2 * p - d * (k - 1) - 1) // s) + 1
    return (size + 2 * p - d * (k - 1) - 1) // s + 1


def conv_macs(conv: nn.Conv2d, h_out: int, w_out: int) -> int:
    """Multiply-accumulates of ``conv`` producing an h_out x w_out map."""
    kh, kw = conv.kernel_size
    return h_out * w_out * conv.out_channels * (conv.in_channels // conv.groups) * kh * kw


def check_option(name: str, ok: bool, must: str, value: Any) -> None:
    """For ``Options.__post_init__``: ``ValueError("tokenizer_options.<name> must <must>, got <value>")``."""
    if not ok:
        raise ValueError(f"tokenizer_options.{name} must {must}, got {value!r}")


def is_int(value: Any, low: int = 1) -> bool:
    """An int (not a bool) >= ``low``."""
    return isinstance(value, int) and not isinstance(value, bool) and value >= low


def is_power_of_2(n: int) -> bool:
    return n > 0 and n & (n - 1) == 0


def log2(n: int) -> int:
    return int(math.log2(n))


def _first(v: Any) -> int:
    return int(v[0] if isinstance(v, (tuple, list)) else v)


# ---------------------------------------------------------------------------------------------- registry
_REGISTRY: Dict[str, Type[Tokenizer]] = {}


def register_tokenizer(cls: Type[Tokenizer]) -> Type[Tokenizer]:
    """Make ``cls`` available as ``tokenizer=cls.name`` everywhere (a class decorator; returns ``cls``)."""
    if not (isinstance(cls, type) and issubclass(cls, Tokenizer)):
        raise TypeError(f"register_tokenizer expects a Tokenizer subclass, got {cls!r}")
    if not isinstance(cls.name, str) or not cls.name.isidentifier():
        raise ValueError(f"{cls.__name__}.name must be an identifier (it is a config value), got {cls.name!r}")
    if not (isinstance(cls.Options, type) and dataclasses.is_dataclass(cls.Options)):
        raise TypeError(f"{cls.__name__}.Options must be a dataclass, got {cls.Options!r}")
    if cls.name in _REGISTRY and _REGISTRY[cls.name] is not cls:
        raise ValueError(f"a tokenizer named {cls.name!r} is already registered ({_REGISTRY[cls.name].__qualname__})")
    _REGISTRY[cls.name] = cls
    return cls


def unregister_tokenizer(name: str) -> None:
    """Remove a registered tokenizer (tests that register their own clean up with this)."""
    _REGISTRY.pop(name, None)


def list_tokenizers() -> List[str]:
    """Names of the registered tokenizers, in registration order (built-ins first)."""
    return list(_REGISTRY)


def get_tokenizer(name: Any) -> Type[Tokenizer]:
    """The tokenizer class registered as ``name``; ``ValueError`` listing the registered ones otherwise."""
    if not isinstance(name, str) or name not in _REGISTRY:
        raise ValueError(f"unknown tokenizer {name!r}; choose one of {list_tokenizers()}")
    return _REGISTRY[name]


def build_tokenizer(cfg: Any) -> Tokenizer:
    """The tokenizer named by ``cfg.tokenizer`` (a ``ViTConfig``), built with ``cfg.tokenizer_options``."""
    cls = get_tokenizer(cfg.tokenizer)
    return cls(cfg, cls.parse_options(cfg.tokenizer_options))
