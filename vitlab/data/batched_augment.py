"""timm's RandAugment (and TrivialAugment) for a whole batch of uint8 images on the device, each sample with its own
ops and magnitudes.

Written by hand: no library applies timm's RandAugment per sample to a batch of device tensors (torchvision's
``v2.RandAugment`` draws one op for the whole batch). timm's own parser reads the config string and timm's op lists
name the ops; the ops themselves are batched re-implementations of timm's PIL ones, checked against them in
``tests/data/test_batched_augment.py``:

- geometric (Rotate, ShearX/Y, TranslateX/Y, TranslateX/YRel): PIL's affine maps, one bilinear warp per layer with a
  per-sample matrix, in float64 with Pillow's edge clamping and truncation, ``fill`` outside the image (timm picks
  bilinear or bicubic at random when no interpolation is set; here it is always bilinear);
- look-up tables (AutoContrast, Equalize, Invert, Posterize, Solarize, SolarizeAdd): one per-sample, per-channel
  256-entry table per layer, built as Pillow builds it;
- blends (Color, Contrast, Brightness, Sharpness, Desaturate): ``ImageEnhance``'s blend of the image with its
  "degenerate" (gray, mean gray, black, smoothed) at a per-sample factor.

Each layer (one of ``n``) draws per sample: an op, whether it applies (probability ``p``), a magnitude (N(m, mstd)
clipped to [0, mmax], or uniform in [0, m] when mstd > 100) and a sign, all from the ``torch.Generator`` passed in,
so a batch is a function of the generator's seed. On a GPU every family is computed for the whole batch and
selected per sample: fixed shapes, no host synchronisation, a few hundred small kernels per batch whatever its size;
on a CPU only the samples that chose a family are computed.
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from timm.data import auto_augment

GEOMETRIC_OPS = ("Rotate", "ShearX", "ShearY", "TranslateX", "TranslateY", "TranslateXRel", "TranslateYRel")
LUT_OPS = ("AutoContrast", "Equalize", "Invert", "Posterize", "PosterizeIncreasing", "PosterizeOriginal", "Solarize",
           "SolarizeIncreasing", "SolarizeAdd")
BLEND_OPS = {  # op -> what ImageEnhance blends the image with
    "Color": "gray", "ColorIncreasing": "gray", "Desaturate": "gray",
    "Contrast": "mean", "ContrastIncreasing": "mean",
    "Brightness": "black", "BrightnessIncreasing": "black",
    "Sharpness": "smooth", "SharpnessIncreasing": "smooth",
}
SUPPORTED_OPS = (*GEOMETRIC_OPS, *LUT_OPS, *BLEND_OPS)


@dataclass(frozen=True)
class RandAugmentSpec:
    """What timm's ``rand_augment_transform`` builds from a config string."""

    ops: tuple[str, ...]  # timm's op names, e.g. ``_RAND_INCREASING_TRANSFORMS``
    num_layers: int  # ops applied per image ("n")
    magnitude: float  # "m", on timm's 0-10 scale
    magnitude_std: float  # "mstd"; inf: uniform in [0, magnitude]
    magnitude_max: float  # the clip of the sampled magnitude ("mmax", else 10)
    prob: float  # chance that each drawn op is applied ("p")
    weights: tuple[float, ...] | None = None  # weighted choice without replacement ("tweights"); None: uniform
    translate_pct: float = 0.45  # TranslateXRel/YRel range, fraction of the side


def rand_augment_spec(config: str) -> RandAugmentSpec:
    """Read a timm RandAugment string (``rand-m9-mstd0.5-inc1``, ``rand-n1-m10-mstd101``) with timm's own parser.

    Raises:
        ValueError: ``config`` is no string timm reads as RandAugment, or names an op with no batched version here.
    """
    if not isinstance(config, str) or not config.startswith("rand"):
        raise ValueError(f"auto_augment={config!r}: on the device only timm's RandAugment strings are batched "
                         f"(e.g. 'rand-m9-mstd0.5-inc1', 'rand-n1-m10-mstd101')")
    try:
        ra = auto_augment.rand_augment_transform(config, {"translate_const": 250})
    except (AssertionError, KeyError, ValueError, IndexError) as err:
        raise ValueError(f"auto_augment={config!r} is not a timm RandAugment string: {err}") from None
    op = ra.ops[0]
    names = tuple(o.name for o in ra.ops)
    missing = [n for n in names if n not in SUPPORTED_OPS]
    if missing:
        raise ValueError(f"auto_augment={config!r} uses {missing}, which have no batched version "
                         f"(supported: {', '.join(SUPPORTED_OPS)})")
    return RandAugmentSpec(
        ops=names, num_layers=ra.num_layers, magnitude=float(op.magnitude),
        magnitude_std=float(op.magnitude_std), magnitude_max=float(op.magnitude_max or auto_augment._LEVEL_DENOM),
        prob=float(op.prob), weights=None if ra.choice_weights is None else tuple(map(float, ra.choice_weights)),
        translate_pct=float(op.hparams.get("translate_pct", 0.45)),
    )


def level_to_arg(name: str, level: torch.Tensor, negate: torch.Tensor, *, translate_const: float = 250.0,
                 translate_pct: float = 0.45) -> torch.Tensor:
    """timm's ``LEVEL_TO_ARG[name]`` for a batch of magnitudes ``level`` (B,) (float64), with the random sign flip
    of the signed ops given as ``negate`` (B,) bool; ops without an argument give zeros."""
    f = level / torch.full_like(level, auto_augment._LEVEL_DENOM)  # (B,) a true division, as Python's
    sign = 1.0 - 2.0 * negate.to(f.dtype)  # (B,) -1 where negated
    if name == "Rotate":
        return f * 30.0 * sign
    if name in ("ShearX", "ShearY"):
        return f * 0.3 * sign
    if name in ("TranslateX", "TranslateY"):
        return f * float(translate_const) * sign
    if name in ("TranslateXRel", "TranslateYRel"):
        return f * translate_pct * sign
    if name == "Posterize":
        return (f * 4).floor()  # int() of a non-negative number
    if name == "PosterizeIncreasing":
        return 4 - (f * 4).floor()
    if name == "PosterizeOriginal":
        return (f * 4).floor() + 4
    if name == "Solarize":
        return (f * 256).floor().clamp(max=256)
    if name == "SolarizeIncreasing":
        return 256 - (f * 256).floor().clamp(max=256)
    if name == "SolarizeAdd":
        return (f * 110).floor().clamp(max=128)
    if name in ("Color", "Contrast", "Brightness", "Sharpness"):
        return f * 1.8 + 0.1
    if name in ("ColorIncreasing", "ContrastIncreasing", "BrightnessIncreasing", "SharpnessIncreasing"):
        return (1.0 + f * 0.9 * sign).clamp(min=0.1)
    if name == "Desaturate":  # _minmax_level_to_arg(min_val=0.5, max_val=1.0)
        return (0.5 + 0.5 * f).clamp(0.5, 1.0)
    if name in ("AutoContrast", "Equalize", "Invert"):
        return torch.zeros_like(f)
    raise ValueError(f"no batched version of timm's op {name!r}")


def _gray(x: torch.Tensor) -> torch.Tensor:
    """Pillow's ``convert("L")`` of uint8 (B, C, H, W): (B, 1, H, W) int64 (its fixed-point luma for RGB)."""
    if x.shape[1] == 1:
        return x.long()
    r, g, b = x.long().unbind(1)  # (B, H, W) each
    return ((r * 19595 + g * 38470 + b * 7471 + 0x8000) >> 16).unsqueeze(1)


def _histogram(x: torch.Tensor) -> torch.Tensor:
    """uint8 (B, C, H, W) -> per-sample, per-channel counts (B, C, 256) int64."""
    B, C = x.shape[:2]
    flat = x.reshape(B * C, -1).long()  # (B*C, HW)
    hist = torch.zeros(B * C, 256, dtype=torch.int64, device=x.device)
    return hist.scatter_add_(1, flat, torch.ones_like(flat)).view(B, C, 256)


def _autocontrast_lut(hist: torch.Tensor) -> torch.Tensor:
    """``ImageOps.autocontrast`` (cutoff 0) tables (B, C, 256) from histograms (B, C, 256): the darkest value to 0,
    the brightest to 255, linear between (float64 and ``int()`` as Pillow)."""
    levels = torch.arange(256, device=hist.device, dtype=torch.float64)  # (256,)
    seen = hist > 0  # (B, C, 256)
    lo = torch.where(seen, levels, 256.0).amin(-1, keepdim=True)  # (B, C, 1)
    hi = torch.where(seen, levels, -1.0).amax(-1, keepdim=True)
    scale = torch.full_like(hi, 255.0) / (hi - lo).clamp(min=1)  # not 255.0 / t: torch takes a reciprocal there
    lut = (levels * scale + (-lo * scale)).clamp(0, 255).floor()  # (B, C, 256)
    return torch.where(hi > lo, lut, levels).long()


def _equalize_lut(hist: torch.Tensor) -> torch.Tensor:
    """``ImageOps.equalize`` tables (B, C, 256) from histograms (B, C, 256), Pillow's integer steps."""
    levels = torch.arange(256, device=hist.device)  # (256,)
    last = torch.where(hist > 0, levels, -1).amax(-1, keepdim=True)  # (B, C, 1) the brightest value present
    step = (hist.sum(-1, keepdim=True) - hist.gather(-1, last.clamp(min=0))) // 255  # (B, C, 1)
    before = hist.cumsum(-1) - hist  # (B, C, 256) pixels darker than each value
    lut = ((step // 2 + before) // step.clamp(min=1)).clamp(max=255)
    return torch.where(step > 0, lut, levels)


def _smooth(x: torch.Tensor) -> torch.Tensor:
    """Pillow's ``ImageFilter.SMOOTH`` (3x3 kernel 1 1 1 / 1 5 1 / 1 1 1, / 13, rounded) of uint8 (B, C, H, W),
    border pixels kept as they are; float32 (B, C, H, W)."""
    xf = x.float()
    rows = xf[..., :-2] + xf[..., 1:-1] + xf[..., 2:]  # (B, C, H, W-2) sums of 3 neighbours in a row
    box = rows[..., :-2, :] + rows[..., 1:-1, :] + rows[..., 2:, :]  # (B, C, H-2, W-2) sums of the 3x3 windows
    out = xf.clone()
    out[..., 1:-1, 1:-1] = ((box + 4 * xf[..., 1:-1, 1:-1]) / 13 + 0.5).floor()  # never near a .5: sums are ints
    return out


def _affine(x: torch.Tensor, mat: torch.Tensor, fill: torch.Tensor) -> torch.Tensor:
    """Pillow's ``Image.transform(AFFINE, resample=BILINEAR, fillcolor=fill)`` for each sample, in float64 and in
    Pillow's order of operations (so equal to it but for the last bit of a rotation's sine): output pixel centre
    (x + .5, y + .5) reads the source at ``mat @ (x + .5, y + .5, 1)`` (pixels); a point inside [0, W) x [0, H)
    interpolates its four neighbours (clamped at the edges) and truncates, a point outside gets ``fill``.

    Args:
        x: (B, C, H, W) uint8.
        mat: (B, 2, 3) float64 output-to-source maps in pixels (PIL's affine ``data``).
        fill: (1, C, 1, 1) fill colour in 0-255.
    """
    B, C, H, W = x.shape
    dev = x.device
    xs = (torch.arange(W, device=dev, dtype=torch.float64) + 0.5).view(1, 1, W)  # output pixel centres
    ys = (torch.arange(H, device=dev, dtype=torch.float64) + 0.5).view(1, H, 1)
    a = mat.view(B, 6, 1, 1).unbind(1)  # six (B, 1, 1)
    sx = a[0] * xs + a[1] * ys + a[2]  # (B, H, W) source x in pixels
    sy = a[3] * xs + a[4] * ys + a[5]
    inside = (sx >= 0) & (sx < W) & (sy >= 0) & (sy < H)  # (B, H, W)
    x0, y0 = (sx - 0.5).floor(), (sy - 0.5).floor()  # (B, H, W) top-left neighbour
    dx, dy = (sx - 0.5 - x0).unsqueeze(1), (sy - 0.5 - y0).unsqueeze(1)  # (B, 1, H, W) weights
    c0, c1 = ((x0 + i).clamp(0, W - 1).long() for i in (0, 1))  # edge clamping, as Pillow's XCLIP / YCLIP
    r0, r1 = ((y0 + i).clamp(0, H - 1).long() for i in (0, 1))
    corners = torch.stack([r0 * W + c0, r0 * W + c1, r1 * W + c0, r1 * W + c1], 1)  # (B, 4, H, W) flat indices
    idx = corners.view(B, 1, 4 * H * W).expand(B, C, 4 * H * W)
    v = x.reshape(B, C, H * W).gather(2, idx).view(B, C, 4, H, W).double()  # the four neighbours
    top = v[:, :, 0] + (v[:, :, 1] - v[:, :, 0]) * dx  # (B, C, H, W)
    bottom = v[:, :, 2] + (v[:, :, 3] - v[:, :, 2]) * dx
    out = (top + (bottom - top) * dy).floor()  # Pillow truncates
    return torch.where(inside.unsqueeze(1), out, fill.double())  # (B, C, H, W)


def _rotation(degrees: torch.Tensor, H: int, W: int) -> torch.Tensor:
    """(B,) angles -> (B, 2, 3) float64 PIL affine data of ``Image.rotate(degrees)``: counter-clockwise about the
    centre (W / 2, H / 2)."""
    a = -degrees * (math.pi / 180)
    cos, sin = a.cos(), a.sin()
    cx, cy = W / 2, H / 2
    rows = [cos, sin, -cos * cx - sin * cy + cx, -sin, cos, sin * cx - cos * cy + cy]
    return torch.stack(rows, -1).view(-1, 2, 3)


# the entry of PIL's affine data that the argument of a shear or translation sets (timm: ShearX (1, f, 0, 0, 1, 0),
# TranslateXRel (1, 0, pct * W, 0, 1, 0), ...)
_AFFINE_ENTRY = {"ShearX": (0, 1), "ShearY": (1, 0), "TranslateX": (0, 2), "TranslateY": (1, 2),
                 "TranslateXRel": (0, 2), "TranslateYRel": (1, 2)}


class BatchedRandAugment:
    """timm's RandAugment on a batch: each sample draws its own ``n`` ops, magnitudes, signs and coin flips.

    Args:
        config: timm's RandAugment string, e.g. ``rand-m9-mstd0.5-inc1`` (RandAugment as DeiT and CCT train) or
            ``rand-n1-m10-mstd101`` (TrivialAugment-like: one op, uniform magnitude); or a spec made from one.
        fill: Fill colour of the geometric ops per stored channel, in [0, 1] (vitlab passes the data mean, as the
            per-image path does); None: timm's gray 128.
        translate_const: Range of the absolute TranslateX/Y ops in pixels; None: 45 % of the image side, as
            vitlab's per-image path sets it (the standard op lists use the relative ones, 45 % of the side).
        subset: Compute each op family on the samples that chose it only (index by a mask: a host sync per family,
            free on a CPU) rather than on the whole batch, kept where chosen (fixed shapes, no sync: for a GPU).
            Same result either way; None: on a CPU only.
    """

    def __init__(self, config: str | RandAugmentSpec, *, fill: Sequence[float] | None = None,
                 translate_const: float | None = None, subset: bool | None = None) -> None:
        self.config = config
        self.subset = subset
        self.spec = config if isinstance(config, RandAugmentSpec) else rand_augment_spec(config)
        unknown = [name for name in self.spec.ops if name not in SUPPORTED_OPS]
        if unknown:
            raise ValueError(f"no batched version of {unknown} (supported: {', '.join(SUPPORTED_OPS)})")
        self.fill = None if fill is None else tuple(float(v) for v in fill)
        self.translate_const = translate_const
        families = (GEOMETRIC_OPS, LUT_OPS, tuple(BLEND_OPS))
        level_fns = list(dict.fromkeys(auto_augment.LEVEL_TO_ARG[name] for name in self.spec.ops))
        # per op: its family, and its timm level function (ops sharing one share a computation), as indices
        self._family = [next(f for f, ops in enumerate(families) if name in ops) for name in self.spec.ops]
        self._level_fn = [level_fns.index(auto_augment.LEVEL_TO_ARG[name]) for name in self.spec.ops]
        self._tables: dict[torch.device, dict[str, torch.Tensor]] = {}  # those, the weights, the fill per device

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.config!r}, fill={self.fill})"

    def _on(self, device: torch.device) -> dict[str, torch.Tensor]:
        """The constant tensors on ``device``, made once (not one host-to-device copy per batch)."""
        if device not in self._tables:
            fill = torch.tensor(self.fill or (128 / 255,), device=device).mul(255).round()  # (F,) in 0-255
            self._tables[device] = {"family": torch.tensor(self._family, device=device),  # (K,)
                                    "level_fn": torch.tensor(self._level_fn, device=device),  # (K,)
                                    "weights": torch.tensor(self.spec.weights or (1.0,), device=device),  # (K,)
                                    "fill": fill.view(1, -1, 1, 1)}
        return self._tables[device]

    def __call__(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """Augment ``x`` (B, C, H, W), uint8 (or float in [0, 1], rounded to 8 bits first as timm works on 8-bit
        images); returns the same dtype. One or three channels."""
        if x.ndim != 4 or x.shape[1] not in (1, 3):
            raise ValueError(f"need images (B, C, H, W) with 1 or 3 channels, got {tuple(x.shape)}")
        if x.dtype != torch.uint8:
            return self(x.mul(255).round().clamp(0, 255).to(torch.uint8), generator).to(x.dtype).div(255)
        x = x.contiguous()  # a crop's gather leaves it channels-last, which slows the ops below
        spec, g, dev = self.spec, generator, x.device
        B, n, K = x.shape[0], spec.num_layers, len(spec.ops)
        if spec.weights is None:  # np.random.choice with replacement
            op = torch.randint(0, K, (B, n), device=dev, generator=g)
        else:  # weighted: without replacement, as timm
            w = self._on(dev)["weights"].expand(B, K)
            op = torch.multinomial(w, n, replacement=False, generator=g)  # (B, n)
        on = torch.rand(B, n, device=dev, generator=g) <= spec.prob  # timm skips when random() > prob
        if math.isinf(spec.magnitude_std):
            level = torch.rand(B, n, device=dev, dtype=torch.float64, generator=g) * spec.magnitude
        elif spec.magnitude_std > 0:
            noise = torch.randn(B, n, device=dev, dtype=torch.float64, generator=g)
            level = spec.magnitude + spec.magnitude_std * noise
        else:
            level = torch.full((B, n), spec.magnitude, device=dev, dtype=torch.float64)
        level = level.clamp(0.0, spec.magnitude_max)  # (B, n)
        negate = torch.rand(B, n, device=dev, generator=g) > 0.5  # (B, n) timm's _randomly_negate
        arg = self.op_args(op, level, negate, x.shape[-1])  # (B, n)
        for i in range(n):
            x = self.apply_layer(x, op[:, i], arg[:, i], on[:, i])
        return x

    def op_args(self, op: torch.Tensor, level: torch.Tensor, negate: torch.Tensor, width: int) -> torch.Tensor:
        """The argument of each drawn op (``level_to_arg``), computed once per timm level function (ShearX and
        ShearY share one, the four enhance ops another). All tensors alike, e.g. (B, n)."""
        hp = dict(translate_const=self.translate_const if self.translate_const is not None else int(width * 0.45),
                  translate_pct=self.spec.translate_pct)
        fn_of_sample = self._on(op.device)["level_fn"][op]  # like op
        arg = torch.zeros_like(level)
        for i in sorted(set(self._level_fn)):
            name = self.spec.ops[self._level_fn.index(i)]
            if auto_augment.LEVEL_TO_ARG[name] is not None:  # AutoContrast, Equalize, Invert take no argument
                arg = torch.where(fn_of_sample == i, level_to_arg(name, level, negate, **hp), arg)
        return arg

    def apply_layer(self, x: torch.Tensor, op: torch.Tensor, arg: torch.Tensor, on: torch.Tensor) -> torch.Tensor:
        """One RandAugment layer with the draws given: sample b gets ``spec.ops[op[b]]`` with argument ``arg[b]``
        (from :meth:`op_args`) if ``on[b]``. op, arg, on: (B,); x: uint8 (B, C, H, W). Each op family (geometric,
        table, blend) is computed for the samples that chose it, or for all and kept where chosen (``subset``)."""
        family_of_sample = self._on(x.device)["family"][op]  # (B,)
        subset = x.device.type == "cpu" if self.subset is None else self.subset
        out = x.clone() if subset else x
        for f, apply in enumerate((self._geometric, _lookup, _blend)):
            ks = [k for k, family in enumerate(self._family) if family == f]
            if not ks:
                continue
            chosen = (family_of_sample == f) & on  # (B,)
            if subset:  # only the samples that chose this family (a host sync, free on a CPU)
                i = chosen.nonzero().squeeze(1)
                if len(i):
                    out[i] = apply(x[i], {self.spec.ops[k]: op[i] == k for k in ks}, arg[i])
            else:  # every sample, kept where chosen: fixed shapes, nothing waits for the device
                result = apply(x, {self.spec.ops[k]: op == k for k in ks}, arg)  # (B, C, H, W)
                out = torch.where(chosen[:, None, None, None], result, out)
        return out

    def _geometric(self, x: torch.Tensor, pick: dict[str, torch.Tensor], arg: torch.Tensor) -> torch.Tensor:
        """The geometric ops: one affine warp with each sample's matrix (identity where none was picked)."""
        B, C, H, W = x.shape
        mat = torch.eye(2, 3, device=x.device, dtype=torch.float64).repeat(B, 1, 1)  # (B, 2, 3)
        for name, chosen in pick.items():
            if name == "Rotate":
                mat = torch.where(chosen[:, None, None], _rotation(arg, H, W), mat)
            else:  # shear, translation: the identity with one entry set to the argument (x W or H when relative)
                i, j = _AFFINE_ENTRY[name]
                scale = {"TranslateXRel": W, "TranslateYRel": H}.get(name, 1)
                mat[:, i, j] += arg * chosen * scale
        fill = self._on(x.device)["fill"]  # (1, F, 1, 1)
        if fill.shape[1] not in (1, C):
            raise ValueError(f"fill has {fill.shape[1]} values for {C}-channel images")
        return _affine(x, mat, fill.expand(1, C, 1, 1)).to(torch.uint8)  # (B, C, H, W)


def _lookup(x: torch.Tensor, pick: dict[str, torch.Tensor], arg: torch.Tensor) -> torch.Tensor:
    """The table ops (AutoContrast, Equalize, Invert, Posterize, Solarize, SolarizeAdd): each sample's 256-entry
    table per channel, applied with one gather."""
    B, C, H, W = x.shape
    levels = torch.arange(256, device=x.device)  # (256,)
    a = arg.long()[:, None, None]  # (B, 1, 1)
    lut = levels.expand(B, C, 256)
    hist = _histogram(x) if {"AutoContrast", "Equalize"} & set(pick) else None
    for name, chosen in pick.items():
        if name == "AutoContrast":
            table = _autocontrast_lut(hist)
        elif name == "Equalize":
            table = _equalize_lut(hist)
        elif name == "Invert":
            table = 255 - levels
        elif name.startswith("Posterize"):  # keep the top `a` bits; 0 bits: black (vitlab's posterize)
            table = levels & ((0xFF << (8 - a.clamp(0, 8))) & 0xFF)
        elif name == "SolarizeAdd":  # timm's solarize_add, threshold 128
            table = torch.where(levels < 128, (levels + a).clamp(max=255), levels)
        else:  # Solarize, SolarizeIncreasing: invert from the threshold up
            table = torch.where(levels < a, levels, 255 - levels)
        lut = torch.where(chosen[:, None, None], table, lut)  # (B, C, 256)
    return lut.gather(2, x.reshape(B, C, H * W).long()).view(B, C, H, W).to(torch.uint8)


def _blend(x: torch.Tensor, pick: dict[str, torch.Tensor], arg: torch.Tensor) -> torch.Tensor:
    """The ImageEnhance ops: ``degenerate + factor * (x - degenerate)``, clipped and truncated as Pillow's blend;
    the degenerate image is gray (Color, Desaturate), the gray mean (Contrast), black (Brightness) or smoothed
    (Sharpness)."""
    B, C, H, W = x.shape
    xf = x.float()  # (B, C, H, W)
    kinds = {k: torch.stack([c for n, c in pick.items() if BLEND_OPS[n] == k]).any(0)[:, None, None, None]
             for k in {BLEND_OPS[n] for n in pick}}  # kind -> (B, 1, 1, 1) bool
    degenerate = torch.zeros_like(xf)  # black: Brightness
    if "gray" in kinds or "mean" in kinds:
        gray = _gray(x)  # (B, 1, H, W) int64
    if "gray" in kinds:
        degenerate = torch.where(kinds["gray"], gray.float(), degenerate)
    if "mean" in kinds:  # int(ImageStat's mean of the gray image + 0.5); a true division, as Python's
        total = gray.flatten(1).sum(1).double()  # (B,)
        mean = (total / torch.full_like(total, H * W) + 0.5).floor().float()
        degenerate = torch.where(kinds["mean"], mean[:, None, None, None], degenerate)
    if "smooth" in kinds:
        degenerate = torch.where(kinds["smooth"], _smooth(x), degenerate)
    factor = torch.ones(B, device=x.device)
    for name, chosen in pick.items():
        f = arg.float() if name != "Desaturate" else (1 - arg.float()).clamp(0, 1)  # timm's desaturate
        factor = torch.where(chosen, f, factor)
    mixed = degenerate + factor[:, None, None, None] * (xf - degenerate)  # (B, C, H, W)
    return mixed.clamp(0, 255).floor().to(torch.uint8)


__all__ = ["BatchedRandAugment", "RandAugmentSpec", "level_to_arg", "rand_augment_spec", "SUPPORTED_OPS"]
