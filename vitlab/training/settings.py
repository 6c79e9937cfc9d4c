"""Training settings of :class:`~vitlab.training.ImageClassifier`, in typed groups.

Each group is a small dataclass that checks its own values; LightningCLI shows its fields as ``model.<group>.*``
(``--model.optim.base_lr 1e-3``, YAML ``model: {optim: {base_lr: 1e-3}}``). The architecture is not declared here:
``model.arch`` takes ``ViTConfig``'s fields (:class:`~vitlab.models.config.ViTOverrides`).

``MOVED`` maps the flat keys of vitlab before the groups (``model.base_lr``, ``model.tokenizer``, ...) to their
new place: the CLI names it in a one-line error, and :func:`upgrade_hparams` reads checkpoints written with them.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields
from typing import Any, Literal, Mapping, Optional, TypeVar

from vitlab.models.config import RENAMED_FIELDS, ViTConfig, ViTOverrides


@dataclass(frozen=True)
class Optim:
    """Optimizer and learning-rate scaling.

    Args:
        name: Any optimizer of timm's factory (``timm.optim.list_optimizers()``: adamw, lamb, lion, sgd, ...),
            built by ``timm.optim.create_optimizer_v2`` on vitlab's parameter groups.
        base_lr: Peak learning rate at a global batch of ``base_batch_size``; the peak used is
            ``base_lr * global_batch / base_batch_size`` (DeiT's rule), global batch = per-process batch x
            processes x ``accumulate_grad_batches``.
        base_batch_size: The global batch ``base_lr`` is given for.
        weight_decay: Weight decay, except for 1-d parameters (norms, biases) and ``no_weight_decay()``
            (positions, class and register tokens), which get none.
        betas: Betas, for the optimizers that take them (timm drops them for the others).
        momentum: Momentum, for the optimizers that take it (sgd, ...).
    """

    name: str = "adamw"
    base_lr: float = 5e-4
    base_batch_size: int = 512
    weight_decay: float = 0.05
    betas: tuple[float, float] = (0.9, 0.999)
    momentum: float = 0.9

    def __post_init__(self) -> None:
        from timm.optim import list_optimizers
        if self.name not in list_optimizers():
            raise ValueError(f"optim.name={self.name!r} is not one of timm's optimizers: {list_optimizers()}")
        check_number("optim.base_lr", self.base_lr, low=0.0, low_open=True)
        check_int("optim.base_batch_size", self.base_batch_size, low=1)
        check_number("optim.weight_decay", self.weight_decay, low=0.0)
        check_number("optim.momentum", self.momentum, low=0.0, high=1.0)
        betas = tuple(self.betas)
        if len(betas) != 2 or not all(isinstance(b, (int, float)) and 0.0 <= b < 1.0 for b in betas):
            raise ValueError(f"optim.betas must be two numbers in [0, 1), got {self.betas!r}")
        object.__setattr__(self, "betas", betas)


@dataclass(frozen=True)
class Schedule:
    """Learning-rate schedule: linear warmup, then cosine, per optimizer step.

    Args:
        warmup_epochs: Linear warmup length in epochs (fractions allowed), counted in optimizer steps.
        min_lr: Learning rate at the end of the cosine (not scaled by the batch).
    """

    warmup_epochs: float = 5.0
    min_lr: float = 1e-6

    def __post_init__(self) -> None:
        check_number("schedule.warmup_epochs", self.warmup_epochs, low=0.0)
        check_number("schedule.min_lr", self.min_lr, low=0.0)


@dataclass(frozen=True)
class Regularization:
    """Regularisation of training.

    Args:
        label_smoothing: Label smoothing of the training loss (also applied to mixup targets).
        mixup: Mixup alpha; 0 = off.
        cutmix: CutMix alpha; 0 = off. With either on, a batch gets one of them (50/50 when both are on) and the
            loss is soft-target cross-entropy (timm's Mixup).
        ema_decay: Keep an exponential moving average of the weights with this decay (timm's ModelEmaV3) and
            validate, test and predict with it; None = off.
    """

    label_smoothing: float = 0.1
    mixup: float = 0.0
    cutmix: float = 0.0
    ema_decay: Optional[float] = None

    def __post_init__(self) -> None:
        check_number("regularization.label_smoothing", self.label_smoothing, low=0.0, high=1.0)
        check_number("regularization.mixup", self.mixup, low=0.0)
        check_number("regularization.cutmix", self.cutmix, low=0.0)
        if self.ema_decay is not None:
            check_number("regularization.ema_decay", self.ema_decay, low=0.0, high=1.0, low_open=True)


@dataclass(frozen=True)
class Finetune:
    """What trains when, for fine-tuning (see ``vitlab.training.finetune``).

    Args:
        layer_decay: Layer-wise lr decay: block i trains at ``layer_decay ** (depth - i)`` of the lr, the head at
            the full lr (BEiT; timm's layer grouping); None = off.
        freeze: ``"backbone"`` = linear probe: only the head trains.
        unfreeze_every_epochs: Gradual unfreezing: head first, one more block from the top every this many epochs.
            With DDP, use ``strategy: ddp_find_unused_parameters_true``.
        tokenizer_warmup_steps: Train only the tokenizer and positions for this many steps (after a transplant).
    """

    layer_decay: Optional[float] = None
    freeze: Literal["none", "backbone"] = "none"
    unfreeze_every_epochs: Optional[float] = None
    tokenizer_warmup_steps: int = 0

    def __post_init__(self) -> None:
        if self.layer_decay is not None:
            check_number("finetune.layer_decay", self.layer_decay, low=0.0, high=1.0 + 1e-9, low_open=True)
        if self.freeze not in ("none", "backbone"):
            raise ValueError(f"finetune.freeze must be 'none' or 'backbone', got {self.freeze!r}")
        if self.unfreeze_every_epochs is not None:
            check_number("finetune.unfreeze_every_epochs", self.unfreeze_every_epochs, low=0.0, low_open=True)
        check_int("finetune.tokenizer_warmup_steps", self.tokenizer_warmup_steps, low=0)

    @property
    def freezing(self) -> bool:
        """Whether any parameter is frozen at some point of training."""
        return self.freeze != "none" or bool(self.unfreeze_every_epochs) or self.tokenizer_warmup_steps > 0


TTA = Literal["none", "flip", "flip_shift"]


@dataclass(frozen=True)
class Evaluation:
    """How validation, test and prediction run; a checkpoint being evaluated does not override them.

    Args:
        tta: Test-time augmentation: ``"flip"`` averages the class probabilities of each image and its horizontal
            mirror (two forward passes); ``"flip_shift"`` also of both shifted by one pixel up, down, left and
            right (ten passes; the uncovered edge repeats the border pixels); ``"none"`` = one pass.
        top_k: Classes returned per image by ``predict_step``.
    """

    tta: TTA = "none"
    top_k: int = 5

    def __post_init__(self) -> None:
        if self.tta not in ("none", "flip", "flip_shift"):
            raise ValueError(f"evaluation.tta must be one of ['none', 'flip', 'flip_shift'], got {self.tta!r}")
        check_int("evaluation.top_k", self.top_k, low=1)


CompileMode = Literal["default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs"]


@dataclass(frozen=True)
class Speed:
    """Speed options; none changes the results beyond floating-point rounding.

    Args:
        compile: ``torch.compile`` the network in place (checkpoints stay loadable without it).
        compile_backend: ``torch.compile`` backend.
        compile_mode: inductor's mode.
        channels_last: channels_last memory format for the model and the training images (conv tokenizers).
    """

    compile: bool = False
    compile_backend: str = "inductor"
    compile_mode: CompileMode = "default"
    channels_last: bool = False

    def __post_init__(self) -> None:
        if self.compile_mode != "default" and self.compile_backend != "inductor":
            raise ValueError(f"speed.compile_mode={self.compile_mode!r} is inductor's; "
                             f"speed.compile_backend is {self.compile_backend!r}")


@dataclass(frozen=True)
class Distill:
    """DeiT's distillation (``vitlab.training.distill``): through the distillation token and its head with
    ``model.arch.distilled: true``; without it, the distillation loss goes to the model's one head beside the
    label loss (DeiT's "usual distillation", Hinton et al.'s for soft), so any vitlab model can be a student.

    Args:
        teacher: A vitlab ``.ckpt`` path, or a timm model name (``timm.create_model(name, pretrained=False,
            num_classes=K, in_chans=C)``, weights from ``teacher_weights``); None = no distillation. Frozen, in
            eval mode, never saved in checkpoints.
        teacher_weights: A weights file for a timm teacher (.safetensors, .pth state_dict).
        kind: ``"soft"``: KL divergence to the teacher's softened probabilities (x tau^2); ``"hard"``:
            cross-entropy to the teacher's top class.
        alpha: Loss = (1 - alpha) x class-head loss + alpha x distillation-head loss.
        tau: Temperature of the soft loss.
        cache: Keep the teacher's logits of each image and reuse them in later epochs
            (:mod:`vitlab.training.teacher_cache`); switches itself off after the second epoch when the
            augmentations change the images (crops, flips, mixup), so it only helps un-augmented training.
    """

    teacher: Optional[str] = None
    teacher_weights: Optional[str] = None
    kind: Literal["soft", "hard"] = "soft"
    alpha: float = 0.5
    tau: float = 1.0
    cache: bool = True

    def __post_init__(self) -> None:
        if not isinstance(self.cache, bool):
            raise ValueError(f"distill.cache must be true or false, got {self.cache!r}")
        for name in ("teacher", "teacher_weights"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, str) or not value):
                raise ValueError(f"distill.{name} must be a path or a name, got {value!r}")
        if self.kind not in ("soft", "hard"):
            raise ValueError(f"distill.kind must be 'soft' or 'hard', got {self.kind!r}")
        check_number("distill.alpha", self.alpha, low=0.0)
        if self.alpha > 1.0:
            raise ValueError(f"distill.alpha must be a number in [0, 1], got {self.alpha!r}")
        check_number("distill.tau", self.tau, low=0.0, low_open=True)
        if self.teacher_weights is not None and self.teacher is None:
            raise ValueError(f"distill.teacher_weights={self.teacher_weights!r} needs distill.teacher (a timm "
                             f"model name)")


GROUPS: dict[str, type] = {"arch": ViTOverrides, "optim": Optim, "schedule": Schedule,
                           "regularization": Regularization, "finetune": Finetune, "evaluation": Evaluation,
                           "speed": Speed, "distill": Distill}

# flat keys of vitlab before the groups -> "group.field"
MOVED: dict[str, str] = {
    **{name: f"arch.{name}" for name in ViTConfig.field_names()},
    "optimizer": "optim.name",
    **{name: f"{group}.{name}" for group, cls in GROUPS.items() if group != "arch"
       for name in (f.name for f in fields(cls)) if name != "name"},
}

G = TypeVar("G")


def as_group(cls: type[G], value: Any) -> G:
    """``value`` (an instance, a mapping of its fields, or None for the defaults) as a ``cls`` group; an unknown
    key is a ``ValueError`` naming it and the group's fields."""
    group = next(name for name, c in GROUPS.items() if c is cls)
    if value is None:
        return cls()
    if isinstance(value, cls):
        return value
    if cls is ViTOverrides and isinstance(value, ViTConfig):  # a whole config: every field set
        value = value.to_dict()
    if not isinstance(value, Mapping):
        raise ValueError(f"model.{group} must be a mapping of {cls.__name__} fields, got {value!r}")
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(value) - known)
    if unknown:
        hint = "; ".join(moved_message(k) for k in unknown if k in RENAMED_FIELDS)
        raise ValueError(hint or f"unknown key(s) {unknown} in model.{group}; valid: {sorted(known)}")
    return cls(**value)


def moved_message(key: str) -> str:
    """One line naming where an old flat key (``base_lr``, ``tokenizer``, ``cct_layers``) lives now."""
    if key in RENAMED_FIELDS:
        tokenizer, option = RENAMED_FIELDS[key]
        return (f"model.{key} was renamed: use model.arch.tokenizer_options.{option} "
                f"(YAML: model: {{arch: {{tokenizer: {tokenizer}, tokenizer_options: {{{option}: ...}}}}}})")
    new = MOVED[key]
    group, name = new.split(".")
    return f"model.{key} moved: use model.{new} (YAML: model: {{{group}: {{{name}: ...}}}})"


def upgrade_hparams(hparams: Mapping[str, Any]) -> dict[str, Any]:
    """A checkpoint's ``hyper_parameters`` in today's groups: flat keys written before the groups existed are
    moved into their group (old tokenizer fields into ``arch.tokenizer_options``); already grouped ones are kept."""
    from vitlab.models.checkpoint import upgrade_config_fields

    flat = {k: v for k, v in hparams.items() if k in MOVED or k in RENAMED_FIELDS}
    if not flat:
        return dict(hparams)
    out = {k: v for k, v in hparams.items() if k not in flat}
    arch = upgrade_config_fields({k: v for k, v in flat.items() if k not in MOVED or MOVED[k].startswith("arch.")},
                                 hparams.get("preset"))
    out["arch"] = {**{k: v for k, v in arch.items() if v is not None}, **(out.get("arch") or {})}
    for key, value in flat.items():
        group, name = MOVED.get(key, "arch.").split(".")
        if group != "arch":
            out.setdefault(group, {})
            out[group] = {name: value, **out[group]}
    return out


def group_dict(group: Any) -> dict[str, Any]:
    """A group as a plain dict (saved in checkpoints: ``torch.load(weights_only=True)`` reads only plain types);
    for ``arch`` only the fields that were set."""
    values = asdict(group)
    if isinstance(group, ViTOverrides):
        values = {k: v for k, v in values.items() if v is not None}
    return {k: list(v) if isinstance(v, tuple) else v for k, v in values.items()}


def check_number(name: str, value: Any, low: float, high: float | None = None, low_open: bool = False) -> None:
    """Raise ``ValueError`` naming ``name`` unless ``value`` is a number in [low, high) (or (low, high))."""
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    ok = ok and (value > low if low_open else value >= low) and (high is None or value < high)
    if not ok:
        bound = f"{'(' if low_open else '['}{low:g}, {'inf)' if high is None else f'{high:g})'}"
        raise ValueError(f"{name} must be a number in {bound}, got {value!r}")


def check_int(name: str, value: Any, low: int) -> None:
    """Raise ``ValueError`` naming ``name`` unless ``value`` is an integer >= ``low``."""
    if not isinstance(value, int) or isinstance(value, bool) or value < low:
        raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")


__all__ = ["Optim", "Schedule", "Regularization", "Finetune", "Evaluation", "Speed", "Distill", "GROUPS", "MOVED",
           "as_group", "moved_message", "upgrade_hparams", "group_dict"]
