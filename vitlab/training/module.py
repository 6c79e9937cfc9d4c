"""The image classifier: a vitlab model plus everything training needs, in the order a step runs.

build model (+ EMA copy) -> [mixup/cutmix] -> loss -> metrics -> timm's optimizer (AdamW by default) with the
learning rate scaled by the global batch, linear warmup then cosine per step.

Every architecture field of ``ViTConfig`` is a constructor argument, so LightningCLI shows them as ``model.*``
(``model.preset: vit_micro_patch4_28``, ``model.tokenizer: conv``); an argument left ``None`` keeps the
preset's value (or ``ViTConfig``'s default when there is no preset).
"""
from __future__ import annotations

import math
from functools import partial
from typing import Any, Literal, Optional

import lightning as L
import torch
from lightning.pytorch.plugins.precision import MixedPrecision, Precision
from lightning.pytorch.utilities import GradClipAlgorithmType, rank_zero_info, rank_zero_warn
from timm.data import Mixup
from timm.loss import SoftTargetCrossEntropy
from timm.optim import create_optimizer_v2, list_optimizers
from timm.utils import ModelEmaV3
from torch import nn
from torchmetrics import MetricCollection
from torchmetrics.classification import MulticlassAccuracy

from vitlab.models.config import Pool, PosEmbed, ViTConfig
from vitlab.models.flops import forward_macs
from vitlab.models.layers import explicit_attention_pays, set_fused_attention
from vitlab.models.registry import PRESETS, get_config
from vitlab.models.vit import VisionTransformer
from vitlab.training.finetune import apply_trainable, clean_name, lr_scales

Preset = Literal[tuple(PRESETS)]  # type: ignore[valid-type]  # jsonargparse lists the choices on a typo
MAX_CONSECUTIVE_SKIPS = 20  # nonfinite="skip" stops a run whose loss stays non-finite this many steps


# Test-time augmentation views: (mirror, shift down, shift right) in pixels.
_SHIFTS = ((0, 0), (1, 0), (-1, 0), (0, 1), (0, -1))
TTA_VIEWS: dict[str, tuple[tuple[bool, int, int], ...]] = {
    "none": ((False, 0, 0),),
    "flip": ((False, 0, 0), (True, 0, 0)),
    "flip_shift": tuple((m, dy, dx) for m in (False, True) for dy, dx in _SHIFTS),
}


def tta_view(x: torch.Tensor, mirror: bool, dy: int, dx: int) -> torch.Tensor:
    """``x`` (B, C, H, W) mirrored left-right and/or shifted by ``dy`` rows and ``dx`` columns, same size; the
    uncovered edge repeats the border pixels (no wrap-around)."""
    if mirror:
        x = x.flip(-1)
    if dy == 0 and dx == 0:
        return x
    H, W = x.shape[-2:]
    py, px = abs(dy), abs(dx)
    xp = nn.functional.pad(x, (px, px, py, py), mode="replicate")  # (B, C, H + 2py, W + 2px)
    return xp[..., py - dy:py - dy + H, px - dx:px - dx + W]  # (B, C, H, W)


class NonFiniteLossError(RuntimeError):
    """The training loss was NaN or infinite; the message names the step, the epoch, the batch and the value."""



def warmup_cosine(step: int, warmup_steps: int, total_steps: int, min_ratio: float) -> float:
    """Learning-rate multiplier at optimizer step ``step``: linear from 1/warmup_steps to 1 over
    ``warmup_steps``, then cosine from 1 down to ``min_ratio`` at ``total_steps``."""
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
    return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


class ImageClassifier(L.LightningModule):
    """Train, evaluate and predict with a vitlab Vision Transformer.

    Args:
        preset: A named model from ``vitlab.list_models()``; None starts from ``ViTConfig``'s defaults.
        pretrained: Weights to load into the model (a .safetensors/.pth file, see ``vitlab.models.pretrained``).
        tokenizer ... grad_checkpointing: ``ViTConfig`` fields; None keeps the preset's value. ``num_classes``,
            ``in_chans`` and ``img_size`` are linked from the data module by the CLI.
        base_lr: Peak learning rate at a global batch of ``base_batch_size``; the peak used is
            ``base_lr * global_batch / base_batch_size`` (DeiT's rule), global batch = per-process batch x
            processes x ``accumulate_grad_batches``.
        base_batch_size: The global batch ``base_lr`` is given for.
        min_lr: Learning rate at the end of the cosine (not scaled).
        warmup_epochs: Linear warmup length in epochs (fractions allowed), counted in optimizer steps.
        weight_decay: AdamW weight decay, except for 1-d parameters (norms, biases) and ``no_weight_decay()``
            (positions, class and register tokens), which get none.
        optimizer: Any optimizer of timm's factory by its name (``timm.optim.list_optimizers()``: adamw, lamb,
            lion, sgd, ...), built by ``timm.optim.create_optimizer_v2`` on vitlab's parameter groups.
        betas: Betas, for the optimizers that take them (timm drops them for the others).
        momentum: Momentum, for the optimizers that take it (sgd, ...).
        label_smoothing: Label smoothing of the training loss (also applied to mixup targets).
        mixup: Mixup alpha; 0 = off.
        cutmix: CutMix alpha; 0 = off. With either on, a batch gets one of them (50/50 when both are on)
            and the loss is soft-target cross-entropy.
        ema_decay: Keep an exponential moving average of the weights with this decay and validate, test and
            predict with it; None = off.
        layer_decay: Layer-wise lr decay: block i trains at ``layer_decay ** (depth - i)`` of the lr, the
            head at the full lr (BEiT); None = off. See ``vitlab.training.finetune``.
        freeze: ``"backbone"`` = linear probe: only the head trains.
        unfreeze_every_epochs: Gradual unfreezing: head first, one more block from the top every this many
            epochs. With DDP, use ``strategy: ddp_find_unused_parameters_true``.
        tokenizer_warmup_steps: Train only the tokenizer and positions for this many steps (after a transplant).
        tta: Test-time augmentation of validation, test and prediction: ``"flip"`` averages the class
            probabilities of each image and its horizontal mirror (two forward passes); ``"flip_shift"`` also
            of both shifted by one pixel up, down, left and right (ten passes; the uncovered edge repeats the
            border pixels); ``"none"`` = one pass.
        top_k: Classes returned per image by ``predict_step``.
        nonfinite: What a NaN or infinite training loss does: ``"stop"`` ends training with an error naming
            the step and the value; ``"skip"`` skips that step (no backward, no update), warns, and counts it in
            ``train/skipped_steps``, stopping only after ``MAX_CONSECUTIVE_SKIPS`` skips in a row. Either way no
            broken weights reach a checkpoint.
        compile: ``torch.compile`` the network (in place, with ``compile_backend`` and ``compile_mode``).
        channels_last: channels_last memory format for the model and the training images (conv tokenizers).
    """

    def __init__(
        self,
        preset: Optional[Preset] = None,
        pretrained: Optional[str] = None,
        # ---- architecture (ViTConfig); None = the preset's value
        tokenizer: Optional[str] = None,
        img_size: Optional[int] = None,
        patch_size: Optional[int] = None,
        in_chans: Optional[int] = None,
        num_classes: Optional[int] = None,
        embed_dim: Optional[int] = None,
        depth: Optional[int] = None,
        num_heads: Optional[int] = None,
        mlp_ratio: Optional[float] = None,
        pool: Optional[Pool] = None,
        num_registers: Optional[int] = None,
        pos_embed: Optional[PosEmbed] = None,
        drop_rate: Optional[float] = None,
        attn_drop_rate: Optional[float] = None,
        drop_path_rate: Optional[float] = None,
        layer_scale_init: Optional[float] = None,
        qk_norm: Optional[bool] = None,
        qkv_bias: Optional[bool] = None,
        class_token: Optional[bool] = None,
        pos_embed_prefix: Optional[bool] = None,
        fc_norm: Optional[bool] = None,
        tokenizer_options: Optional[dict] = None,
        grad_checkpointing: Optional[bool] = None,
        # ---- optimisation
        base_lr: float = 5e-4,
        base_batch_size: int = 512,
        min_lr: float = 1e-6,
        warmup_epochs: float = 5.0,
        weight_decay: float = 0.05,
        optimizer: str = "adamw",
        betas: tuple[float, float] = (0.9, 0.999),
        momentum: float = 0.9,
        # ---- regularisation
        label_smoothing: float = 0.1,
        mixup: float = 0.0,
        cutmix: float = 0.0,
        ema_decay: Optional[float] = None,
        # ---- fine-tuning
        layer_decay: Optional[float] = None,
        freeze: Literal["none", "backbone"] = "none",
        unfreeze_every_epochs: Optional[float] = None,
        tokenizer_warmup_steps: int = 0,
        # ---- evaluation and prediction
        tta: Literal["none", "flip", "flip_shift"] = "none",
        top_k: int = 5,
        # ---- reliability
        nonfinite: Literal["stop", "skip"] = "stop",
        # ---- speed
        compile: bool = False,
        compile_backend: str = "inductor",
        compile_mode: Literal["default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs"] = "default",
        channels_last: bool = False,
    ) -> None:
        super().__init__()
        # saved into checkpoints; logged under "model/" in setup(), as the data module's hparams share names
        # (img_size, in_chans) with different meanings (a request vs the resolved value)
        self.save_hyperparameters(logger=False)
        _check("base_lr", base_lr, low=0.0, low_open=True)
        _check("min_lr", min_lr, low=0.0)
        _check("warmup_epochs", warmup_epochs, low=0.0)
        _check("weight_decay", weight_decay, low=0.0)
        _check("label_smoothing", label_smoothing, low=0.0, high=1.0)
        _check("mixup", mixup, low=0.0)
        _check("cutmix", cutmix, low=0.0)
        if ema_decay is not None:
            _check("ema_decay", ema_decay, low=0.0, high=1.0, low_open=True)
        if layer_decay is not None:
            _check("layer_decay", layer_decay, low=0.0, high=1.0 + 1e-9, low_open=True)
        if unfreeze_every_epochs is not None:
            _check("unfreeze_every_epochs", unfreeze_every_epochs, low=0.0, low_open=True)
        if compile_mode != "default" and compile_backend != "inductor":
            raise ValueError(f"compile_mode={compile_mode!r} is inductor's; compile_backend is {compile_backend!r}")
        if nonfinite not in ("stop", "skip"):
            raise ValueError(f"nonfinite must be 'stop' or 'skip', got {nonfinite!r}")
        if tta not in TTA_VIEWS:
            raise ValueError(f"tta must be one of {list(TTA_VIEWS)}, got {tta!r}")
        if freeze not in ("none", "backbone"):
            raise ValueError(f"freeze must be 'none' or 'backbone', got {freeze!r}")
        if not isinstance(tokenizer_warmup_steps, int) or tokenizer_warmup_steps < 0:
            raise ValueError(f"tokenizer_warmup_steps must be an integer >= 0, got {tokenizer_warmup_steps!r}")
        for name, value in (("base_batch_size", base_batch_size), ("top_k", top_k)):
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
        if optimizer not in list_optimizers():
            raise ValueError(f"optimizer={optimizer!r} is not one of timm's optimizers: {list_optimizers()}")
        _check("momentum", momentum, low=0.0, high=1.0)
        if len(betas) != 2 or not all(0.0 <= b < 1.0 for b in betas):
            raise ValueError(f"betas must be two numbers in [0, 1), got {betas!r}")

        # 1. the model: preset + overrides (ViTConfig validates every field)
        overrides = {k: v for k, v in self.hparams.items() if k in ViTConfig.field_names() and v is not None}
        self.cfg: ViTConfig = get_config(preset, **overrides)
        if self.cfg.num_classes < 2:
            raise ValueError(f"num_classes must be >= 2 for a classifier, got {self.cfg.num_classes}")
        self.model = VisionTransformer(self.cfg)
        if pretrained:
            from vitlab.models.pretrained import load_pretrained
            load_pretrained(self.model, pretrained)
        # names (relative to self.model) of the parameters without weight decay, fixed before any wrapping
        skip = self.model.no_weight_decay()
        self.no_decay_names = {n for n, p in self.model.named_parameters() if p.ndim <= 1 or n in skip}
        self.lr_scales = lr_scales(self.model, layer_decay)  # timm's layer grouping (group_matcher)
        self.ema = None
        if ema_decay is not None:
            self.ema = ModelEmaV3(self.model, decay=ema_decay).requires_grad_(False)

        # 2. losses: mixup/cutmix -> soft targets (smoothing folded in), else smoothed hard targets
        K = self.cfg.num_classes
        self.mixup_fn = None
        if mixup > 0 or cutmix > 0:
            self.mixup_fn = Mixup(mixup_alpha=mixup, cutmix_alpha=cutmix, label_smoothing=label_smoothing,
                                  num_classes=K)
            self.train_loss = SoftTargetCrossEntropy()
        else:
            self.train_loss = nn.CrossEntropyLoss(label_smoothing=label_smoothing)
        self.eval_loss = nn.CrossEntropyLoss()

        # 3. metrics: one collection, cloned per stage so each keeps its own state (synced under DDP)
        metrics = {"acc1": MulticlassAccuracy(K, top_k=1, average="micro")}
        if K >= 5:
            metrics["acc5"] = MulticlassAccuracy(K, top_k=5, average="micro")
        metrics = MetricCollection(metrics)
        self.train_metrics = metrics.clone(prefix="train/")
        self.val_metrics = metrics.clone(prefix="val/")
        self.test_metrics = metrics.clone(prefix="test/")

        # an example batch: Lightning's model summary measures FLOPs and in/out sizes with it (not when compiling:
        # a batch of one would compile a graph the training batches then recompile)
        if not compile:
            self.example_input_array = torch.zeros(1, self.cfg.in_chans, *self.cfg.img_hw)
        self.skipped_steps = 0  # non-finite losses skipped (nonfinite="skip"), kept in checkpoints
        self._skips_in_a_row = 0
        self.lr: float | None = None  # the scaled peak learning rate, set in configure_optimizers
        self.global_batch_size: int | None = None

    # ---------------------------------------------------------------- forward
    @property
    def train_flops_per_sample(self) -> float:
        """Training FLOPs per image, analytic (``vitlab.models.flops``: attention counted, 3 x the forward): the
        throughput callback's FLOP/s and MFU."""
        return 6.0 * forward_macs(self.cfg)

    @property
    def eval_model(self) -> nn.Module:
        """The weights used for validation, test and prediction: the EMA when on."""
        return self.ema.module if self.ema is not None else self.model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)  # (B, K)

    def eval_logits(self, x: torch.Tensor) -> torch.Tensor:
        """Logits of ``eval_model`` for validation, test and prediction; with test-time augmentation
        (``tta`` other than ``"none"``) the log of the mean class probabilities over the views of ``x``."""
        views = TTA_VIEWS[self.hparams.tta]
        if len(views) == 1:
            return self.eval_model(x)  # (B, K)
        probs = sum(self.eval_model(tta_view(x, *v)).float().softmax(-1) for v in views)  # (B, K)
        return (probs / len(views)).log()

    # ---------------------------------------------------------------- steps
    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor | None:
        x, y = batch  # (B, C, H, W), (B,)
        if self.hparams.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        target = y
        if self.mixup_fn is not None:
            if len(x) % 2:  # timm mixes a batch with its flip, which needs an even size
                x, y = x[:-1], y[:-1]
            x, target = self.mixup_fn(x, y)  # target: (B, K) soft labels
        logits = self.model(x)  # (B, K)
        loss = self.train_loss(logits, target)
        if self._nonfinite(loss, batch_idx):
            return None  # Lightning skips backward and the optimizer step
        self.train_metrics.update(logits, y)  # on the (possibly mixed) inputs, against their main label
        self.log("train/loss", loss, on_step=False, on_epoch=True, sync_dist=True, batch_size=len(x))
        self.log("train/loss_step", loss, on_step=True, on_epoch=False, prog_bar=True, batch_size=len(x))
        self.log_dict(self.train_metrics, on_step=False, on_epoch=True)
        return loss

    def _nonfinite(self, loss: torch.Tensor, batch_idx: int) -> bool:
        """True when this step is to be skipped; raises ``NonFiniteLossError`` when training must stop."""
        bad = not bool(torch.isfinite(loss).all())  # one host sync per step (the progress bar does one anyway)
        if self.trainer.world_size > 1:  # every process skips, or none does (one would wait for the others)
            bad = self.trainer.strategy.reduce_boolean_decision(bad, all=False)
        if not bad:
            self._skips_in_a_row = 0
            return False
        where = (f"step {self.trainer.global_step} (epoch {self.trainer.current_epoch}, batch {batch_idx}): "
                 f"training loss is {loss.item()}")
        if self.hparams.nonfinite == "stop":
            raise NonFiniteLossError(f"{where}; training stopped, checkpoints already written are unchanged. "
                                     "Lower model.base_lr, raise warmup, check the data for NaN/inf, or set "
                                     "model.nonfinite: skip to skip such steps")
        self.skipped_steps += 1
        self._skips_in_a_row += 1
        if self._skips_in_a_row >= MAX_CONSECUTIVE_SKIPS:
            raise NonFiniteLossError(f"{where}; {self._skips_in_a_row} steps in a row were non-finite, so "
                                     "training stopped (nonfinite: skip gives up after "
                                     f"{MAX_CONSECUTIVE_SKIPS})")
        rank_zero_warn(f"{where}; step skipped (no update), {self.skipped_steps} skipped so far")
        self.log("train/skipped_steps", float(self.skipped_steps), on_step=True, on_epoch=False,
                 batch_size=1)
        return True

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["skipped_steps"] = self.skipped_steps
        # what the model was fed and what its outputs mean, for predict, export and attention maps
        dm = getattr(self._trainer, "datamodule", None) if self._trainer is not None else None
        data_config = getattr(dm, "data_config", None) or getattr(self, "data_config", None)
        class_names = getattr(dm, "classes", None) or getattr(self, "class_names", None)
        if data_config:
            checkpoint["data_config"] = dict(data_config)
        if class_names:
            checkpoint["class_names"] = [str(c) for c in class_names]

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        self.skipped_steps = int(checkpoint.get("skipped_steps", 0))
        self.data_config = checkpoint.get("data_config")  # None for checkpoints written before they stored it
        self.class_names = checkpoint.get("class_names")
        check_checkpoint_fits(self, checkpoint.get("state_dict", {}), checkpoint.get("hyper_parameters", {}))

    def _eval_step(self, batch: tuple[torch.Tensor, torch.Tensor], stage: str, metrics: MetricCollection):
        x, y = batch
        logits = self.eval_logits(x)  # (B, K)
        loss = self.eval_loss(logits, y)
        metrics.update(logits, y)
        self.log(f"{stage}/loss", loss, on_epoch=True, sync_dist=True, batch_size=len(x))
        self.log_dict(metrics, on_epoch=True, prog_bar=stage == "val")
        return {"loss": loss, "preds": logits.argmax(-1), "target": y}  # for the confusion-matrix callback

    def validation_step(self, batch, batch_idx: int) -> dict[str, torch.Tensor]:
        return self._eval_step(batch, "val", self.val_metrics)

    def test_step(self, batch, batch_idx: int) -> dict[str, torch.Tensor]:
        return self._eval_step(batch, "test", self.test_metrics)

    def predict_step(self, batch, batch_idx: int) -> dict[str, torch.Tensor] | None:
        """``(images, indices)`` -> ``{"index" (B,), "classes" (B, k), "probs" (B, k)}``, best first."""
        if batch is None:  # every file of this batch failed to decode
            return None
        x, index = batch
        probs = self.eval_logits(x).float().softmax(-1)  # (B, K)
        top = probs.topk(min(self.hparams.top_k, probs.shape[-1]), dim=-1)
        return {"index": index, "classes": top.indices, "probs": top.values}

    # ---------------------------------------------------------------- EMA
    def optimizer_step(self, *args: Any, **kwargs: Any) -> None:
        super().optimizer_step(*args, **kwargs)
        if self.ema is not None:  # after each real optimizer step (not each accumulated micro-batch)
            self.ema.update(self.model, step=self.trainer.global_step + 1)  # step 1 copies the weights

    def configure_model(self) -> None:
        """Speed options, applied once before fit/validate/test/predict: channels_last memory for the conv
        tokenizers, ``torch.compile`` of the network in place (``nn.Module.compile`` keeps the state_dict keys, so
        checkpoints stay loadable without it)."""
        if self.hparams.channels_last:
            self.model.to(memory_format=torch.channels_last)
            if self.ema is not None:  # the EMA copy too: it runs validation
                self.ema.to(memory_format=torch.channels_last)
        if self.hparams.compile and not getattr(self, "_compiled", False):
            device = self.trainer.strategy.root_device if self._trainer is not None else self.device
            if explicit_attention_pays(device, compiled=True):  # inductor fuses it; faster than SDPA on CPUs
                set_fused_attention(self.model, False)
            mode = self.hparams.compile_mode
            self.model.compile(backend=self.hparams.compile_backend, mode=None if mode == "default" else mode)
            self._compiled = True

    def setup(self, stage: str) -> None:
        params = {f"model/{k}": v for k, v in self.hparams.items()}
        params.update({f"model/resolved/{k}": v for k, v in self.cfg.to_dict().items()})
        for logger in self.loggers:
            logger.log_hyperparams(params)

    def on_fit_start(self) -> None:
        if self.ema is not None and "FSDP" in type(self.trainer.strategy).__name__:
            raise ValueError("ema_decay is not supported with FSDP (the EMA copy would be sharded); "
                             "use DDP or set model.ema_decay null")
        if self.ema is not None:  # the copy only averages during training (no forward); Lightning's eval()
            self.ema.train()      # covers validation. In eval mode it set off "N module(s) in eval mode".

    # ---------------------------------------------------------------- what trains when (fine-tuning)
    def _freezing(self) -> bool:
        hp = self.hparams
        return hp.freeze != "none" or bool(hp.unfreeze_every_epochs) or hp.tokenizer_warmup_steps > 0

    def on_train_batch_start(self, batch: Any, batch_idx: int) -> None:
        if self._freezing():
            hp = self.hparams
            apply_trainable(self.model, self.cfg.depth, step=self.trainer.global_step,
                            epoch=self.trainer.current_epoch, freeze=hp.freeze,
                            unfreeze_every_epochs=hp.unfreeze_every_epochs,
                            tokenizer_warmup_steps=hp.tokenizer_warmup_steps)

    # ---------------------------------------------------------------- optimiser and schedule
    def param_groups(self, weight_decay: float) -> list[dict[str, Any]]:
        """Parameter groups by (weight decay, lr scale): no decay for 1-d parameters, positions and tokens; with
        ``layer_decay`` one lr scale per layer. Frozen parameters stay in (no gradient: the optimizer skips them), so
        unfreezing needs no new optimiser."""
        groups: dict[tuple[bool, float], dict[str, Any]] = {}
        for name, p in self.model.named_parameters():
            if not p.requires_grad and not self._freezing():
                continue
            name = clean_name(name)
            no_decay = name in self.no_decay_names
            scale = self.lr_scales[name]
            group = groups.setdefault((no_decay, scale), {
                "params": [], "weight_decay": 0.0 if no_decay else weight_decay, "lr_scale": scale,
                "name": ("no_decay" if no_decay else "decay") + (f"_x{scale:.3g}" if scale != 1.0 else "")})
            group["params"].append(p)
        return list(groups.values())

    def configure_optimizers(self) -> dict[str, Any]:
        hp = self.hparams
        trainer = self.trainer
        total_steps = trainer.estimated_stepping_batches  # loads the train loader; respects max_steps, limits
        if not math.isfinite(total_steps):
            raise ValueError("the learning-rate schedule needs a finite run: set trainer.max_epochs or max_steps")
        accumulate = trainer.accumulate_grad_batches
        steps_per_epoch = max(1, math.ceil(trainer.num_training_batches / accumulate))

        # 1. peak lr from the global batch
        per_process = getattr(trainer.train_dataloader, "batch_size", None)
        if per_process is None:
            per_process = getattr(trainer.datamodule, "batch_size", None)
        if per_process is None:
            raise ValueError("cannot tell the per-process batch size to scale base_lr: use a data module "
                             "with a batch_size attribute or a DataLoader with batch_size")
        self.global_batch_size = per_process * trainer.world_size * accumulate
        self.lr = hp.base_lr * self.global_batch_size / hp.base_batch_size
        rank_zero_info(f"lr = base_lr {hp.base_lr:g} x global batch {self.global_batch_size} "
                       f"({per_process} x {trainer.world_size} processes x {accumulate} accumulated) "
                       f"/ {hp.base_batch_size} = {self.lr:.4g}")

        # 2. timm's optimizer by name on vitlab's groups; torch's Adam/AdamW fused on CUDA (unless fp16 loss
        #    scaling meets clipping), foreach elsewhere
        groups = self.param_groups(hp.weight_decay)
        for group in groups:
            group["lr"] = self.lr * group["lr_scale"]  # LambdaLR scales each group's own initial lr
        extra: dict[str, Any] = {}
        if hp.optimizer in ("adam", "adamw"):
            fused = use_fused_adamw(self.device, trainer.precision_plugin, trainer.gradient_clip_val)
            extra = {"fused": True} if fused else {"foreach": True}
        optimizer = create_optimizer_v2(groups, opt=hp.optimizer, lr=self.lr, weight_decay=hp.weight_decay,
                                        momentum=hp.momentum, betas=tuple(hp.betas), **extra)

        # 3. warmup then cosine, per optimizer step
        warmup_steps = round(hp.warmup_epochs * steps_per_epoch)
        schedule = partial(warmup_cosine, warmup_steps=warmup_steps, total_steps=int(total_steps),
                           min_ratio=min(1.0, hp.min_lr / self.lr))
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    def configure_gradient_clipping(self, optimizer: torch.optim.Optimizer, gradient_clip_val: float | None = None,
                                    gradient_clip_algorithm: str | None = None) -> None:
        """Clip as Lightning does, and also under bf16 autocast with the fused AdamW.

        Lightning's AMP plugin refuses to clip for any optimizer that unscales inside its step (fused AdamW),
        because of fp16's loss scaler. bf16-mixed has no scaler: the gradients are the real ones, so clipping them
        before the fused step is exact, and the base plugin's clipping is used.
        """
        plugin = self.trainer.precision_plugin
        if gradient_clip_val and isinstance(plugin, MixedPrecision) and plugin.scaler is None:
            algorithm = GradClipAlgorithmType(gradient_clip_algorithm or "norm")
            Precision.clip_gradients(plugin, optimizer, gradient_clip_val, algorithm)
            return
        super().configure_gradient_clipping(optimizer, gradient_clip_val, gradient_clip_algorithm)


def use_fused_adamw(device: torch.device, precision_plugin: Any, gradient_clip_val: float | None) -> bool:
    """Fused AdamW kernels on CUDA, except with fp16 loss scaling and gradient clipping together: the fused step
    unscales the gradients itself, so they could only be clipped while still scaled (Lightning refuses that)."""
    scaled = getattr(precision_plugin, "scaler", None) is not None
    return device.type == "cuda" and not (scaled and bool(gradient_clip_val))


class CheckpointMismatchError(ValueError):
    """A checkpoint's weights do not fit the model built from the config and the data."""


def check_checkpoint_fits(module: ImageClassifier, state: dict[str, torch.Tensor], hparams: dict[str, Any]) -> None:
    """Raise :class:`CheckpointMismatchError` naming what differs (class count first) unless every tensor of
    ``state`` has the shape of the module's own."""
    own = module.state_dict()
    shapes = [f"{k} {tuple(v.shape)} vs {tuple(own[k].shape)}" for k, v in state.items()
              if k in own and isinstance(v, torch.Tensor) and v.shape != own[k].shape]
    if not shapes:
        return
    head = state.get("model.head.weight")
    if head is not None and head.shape[0] != module.cfg.num_classes:
        raise CheckpointMismatchError(
            f"the checkpoint was trained for {head.shape[0]} classes, but the data has {module.cfg.num_classes}: "
            f"use the data it was trained on, or start a new fit from its weights with model.pretrained=PATH "
            f"(the head is then re-initialised)")
    differ = [f"{k}={hparams[k]!r} (model: {getattr(module.cfg, k)!r})" for k in ("img_size", "in_chans", "patch_size",
              "embed_dim", "depth", "tokenizer") if hparams.get(k) is not None and hparams[k] != getattr(module.cfg, k)]
    raise CheckpointMismatchError(
        f"the checkpoint does not fit the model{': it has ' + ', '.join(differ) if differ else ''}; "
        f"{len(shapes)} tensors differ in shape (checkpoint vs model), e.g. {shapes[0]}")


def _check(name: str, value: Any, low: float, high: float | None = None, low_open: bool = False) -> None:
    """Raise ``ValueError`` naming ``name`` unless ``value`` is a number in [low, high) (or (low, high))."""
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    ok = ok and (value > low if low_open else value >= low) and (high is None or value < high)
    if not ok:
        bound = f"{'(' if low_open else '['}{low:g}, {'inf)' if high is None else f'{high:g})'}"
        raise ValueError(f"{name} must be a number in {bound}, got {value!r}")


__all__ = ["ImageClassifier", "CheckpointMismatchError", "NonFiniteLossError", "warmup_cosine"]
