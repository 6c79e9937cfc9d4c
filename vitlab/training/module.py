"""The image classifier: a vitlab model plus everything training needs, in the order a step runs.

build model (+ EMA copy) -> [mixup/cutmix] -> loss -> metrics -> timm's optimizer (AdamW by default) with the
learning rate scaled by the global batch, linear warmup then cosine per step.

The architecture is ``ViTConfig``'s, taken as ``arch`` (``model.arch.tokenizer: conv``; a field left None keeps the
preset's value); training settings come in typed groups (``optim``, ``schedule``, ``regularization``, ``finetune``,
``evaluation``, ``speed``: ``vitlab.training.settings``), so LightningCLI shows ``model.optim.base_lr`` and so on.
"""
from __future__ import annotations

import io
import math
import os
from functools import partial
from typing import Any, Literal, Optional

import lightning as L
import torch
from lightning.pytorch.plugins.precision import MixedPrecision, Precision
from lightning.pytorch.utilities import GradClipAlgorithmType, rank_zero_info, rank_zero_warn
from timm.data import Mixup
from timm.loss import SoftTargetCrossEntropy
from timm.optim import create_optimizer_v2
from timm.utils import ModelEmaV3
from torch import nn
from torchmetrics import MetricCollection
from torchmetrics.classification import MulticlassAccuracy

from vitlab.models.config import RENAMED_FIELDS, ViTConfig, ViTOverrides
from vitlab.models.flops import forward_macs
from vitlab.models.layers import explicit_attention_pays, set_fused_attention
from vitlab.models.registry import PRESETS, get_config
from vitlab.models.vit import VisionTransformer
from vitlab.training.checkpointing import CheckpointMismatchError, check_checkpoint_fits
from vitlab.training.distill import Distiller
from vitlab.training.finetune import apply_trainable, lr_scales
from vitlab.training.optim import param_groups, use_fused_adamw, warmup_cosine
from vitlab.training.settings import (MOVED, Distill, Evaluation, Finetune, Optim, Regularization, Schedule, Speed,
                                      as_group, group_dict, moved_message, upgrade_hparams)
from vitlab.training.timm_model import (DataShape, build_timm_model, check_timm_settings, forward_flops,
                                        no_weight_decay_names)
from vitlab.training.tta import TTA_VIEWS, tta_view

Preset = Literal[tuple(PRESETS)]  # type: ignore[valid-type]  # jsonargparse lists the choices on a typo
MAX_CONSECUTIVE_SKIPS = 20  # nonfinite="skip" stops a run whose loss stays non-finite this many steps


class NonFiniteLossError(RuntimeError):
    """The training loss was NaN or infinite; the message names the step, the epoch, the batch and the value."""


class ImageClassifier(L.LightningModule):
    """Train, evaluate and predict with a vitlab Vision Transformer.

    Args:
        preset: A named model from ``vitlab.list_models()``; None starts from ``ViTConfig``'s defaults.
        pretrained: Weights to load into the model (a .safetensors/.pth file, a hub folder, a timm name; see
            ``vitlab.models.pretrained``).
        arch: ``ViTConfig`` fields that differ from the preset (a mapping, ``ViTOverrides`` or a whole
            ``ViTConfig``). ``num_classes``, ``in_chans`` and ``img_size`` are linked from the data module by the CLI.
        optim: Optimizer and learning-rate scaling (:class:`~vitlab.training.settings.Optim`).
        schedule: Warmup and cosine (:class:`~vitlab.training.settings.Schedule`).
        regularization: Label smoothing, mixup/cutmix, EMA (:class:`~vitlab.training.settings.Regularization`).
        finetune: Layer decay, freezing, gradual unfreezing (:class:`~vitlab.training.settings.Finetune`).
        evaluation: Test-time augmentation and top-k of predictions (:class:`~vitlab.training.settings.Evaluation`).
        speed: torch.compile and channels_last (:class:`~vitlab.training.settings.Speed`).
        distill: DeiT distillation from a frozen teacher (:class:`~vitlab.training.settings.Distill`), on the
            distillation head with ``arch.distilled``, else on the one head (any pooling, e.g. CCT's seqpool).
        timm_model: Train timm's model of this name instead of a vitlab ViT (e.g. a CNN teacher for ``distill``):
            ``timm.create_model(timm_model, num_classes=K, in_chans=C, **timm_kwargs)``; the ViT-only settings
            (``preset``, ``arch`` fields, ``pretrained``, freezing, ``distill``) are refused
            (:mod:`vitlab.training.timm_model`).
        timm_kwargs: Keyword arguments of that model (``drop_path_rate``, ``stem_type``, ...).
        nonfinite: What a NaN or infinite training loss does: ``"stop"`` ends training with an error naming
            the step and the value; ``"skip"`` skips that step (no backward, no update), warns, and counts it in
            ``train/skipped_steps``, stopping only after ``MAX_CONSECUTIVE_SKIPS`` skips in a row. Either way no
            broken weights reach a checkpoint.
    """

    def __init__(
        self,
        preset: Optional[Preset] = None,
        pretrained: Optional[str] = None,
        arch: ViTOverrides = ViTOverrides(),
        optim: Optim = Optim(),
        schedule: Schedule = Schedule(),
        regularization: Regularization = Regularization(),
        finetune: Finetune = Finetune(),
        evaluation: Evaluation = Evaluation(),
        speed: Speed = Speed(),
        distill: Distill = Distill(),
        timm_model: Optional[str] = None,
        timm_kwargs: Optional[dict[str, Any]] = None,
        nonfinite: Literal["stop", "skip"] = "stop",
        **moved: Any,
    ) -> None:
        super().__init__()
        if moved:  # a key of vitlab before the groups (base_lr, tokenizer, ...): say where it lives now
            known = [k for k in moved if k in MOVED or k in RENAMED_FIELDS]
            raise TypeError(moved_message(known[0]) if known else
                            f"ImageClassifier got unexpected argument(s) {sorted(moved)}")
        if nonfinite not in ("stop", "skip"):
            raise ValueError(f"nonfinite must be 'stop' or 'skip', got {nonfinite!r}")
        arch = as_group(ViTOverrides, arch)
        self.optim, self.schedule = as_group(Optim, optim), as_group(Schedule, schedule)
        self.regularization, self.finetune = as_group(Regularization, regularization), as_group(Finetune, finetune)
        self.evaluation, self.speed = as_group(Evaluation, evaluation), as_group(Speed, speed)
        self.distill = as_group(Distill, distill)
        self.nonfinite = nonfinite
        # saved into checkpoints as plain dicts (torch.load(weights_only=True) reads them); logged under "model/"
        # in setup(), as the data module's hparams share names (img_size, in_chans) with different meanings
        self.save_hyperparameters({
            "preset": preset, "pretrained": pretrained, "arch": group_dict(arch), "optim": group_dict(self.optim),
            "schedule": group_dict(self.schedule), "regularization": group_dict(self.regularization),
            "finetune": group_dict(self.finetune), "evaluation": group_dict(self.evaluation),
            "speed": group_dict(self.speed), "distill": group_dict(self.distill), "timm_model": timm_model,
            "timm_kwargs": dict(timm_kwargs or {}), "nonfinite": nonfinite},
            logger=False)

        # 1. the model: preset + overrides (ViTConfig validates every field), or timm's network of that name (e.g. a
        #    CNN teacher; the ViT-only settings are refused, cfg holds only the data's shape)
        self.timm_model = timm_model
        self._forward_flops: float | None = None
        if timm_model is not None:
            check_timm_settings(timm_model, preset, group_dict(arch), pretrained, self.finetune.freezing,
                                self.distill.teacher)
            self.cfg: ViTConfig | DataShape = DataShape.from_arch(group_dict(arch))
        else:
            self.cfg = get_config(preset, **group_dict(arch))
        if self.cfg.num_classes < 2:
            raise ValueError(f"num_classes must be >= 2 for a classifier, got {self.cfg.num_classes}")
        self.model = (VisionTransformer(self.cfg) if timm_model is None else
                      build_timm_model(timm_model, self.cfg.num_classes, self.cfg.in_chans, timm_kwargs))
        if pretrained:
            from vitlab.models.pretrained import load_pretrained
            load_pretrained(self.model, pretrained)
        # names (relative to self.model) of the parameters without weight decay, fixed before any wrapping
        self.no_decay_names = no_weight_decay_names(self.model)
        self.lr_scales = lr_scales(self.model, self.finetune.layer_decay)  # timm's layer grouping (group_matcher)
        self.ema = None
        if self.regularization.ema_decay is not None:
            self.ema = ModelEmaV3(self.model, decay=self.regularization.ema_decay).requires_grad_(False)

        # 2. losses: mixup/cutmix -> soft targets (smoothing folded in), else smoothed hard targets
        K = self.cfg.num_classes
        reg = self.regularization
        self.mixup_fn = None
        if reg.mixup > 0 or reg.cutmix > 0:
            self.mixup_fn = Mixup(mixup_alpha=reg.mixup, cutmix_alpha=reg.cutmix,
                                  label_smoothing=reg.label_smoothing, num_classes=K)
            self.train_loss = SoftTargetCrossEntropy()
        else:
            self.train_loss = nn.CrossEntropyLoss(label_smoothing=reg.label_smoothing)
        self.eval_loss = nn.CrossEntropyLoss()
        # DeiT distillation: the teacher supervises head_dist (training only; evaluation averages the two heads);
        # a student without a distillation token takes both losses on its one head (DeiT's "usual distillation")
        self.distiller: Distiller | None = None
        if self.distill.teacher is not None:
            if self.cfg.distilled:
                self.model.set_distilled_training(True)  # training forward: (class head, distillation head)
            self.distiller = Distiller(self.distill, K, self.cfg.in_chans)

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
        if not self.speed.compile:
            self.example_input_array = torch.zeros(1, self.cfg.in_chans, *self.cfg.img_hw)
        self.skipped_steps = 0  # non-finite losses skipped (nonfinite="skip"), kept in checkpoints
        self._skips_in_a_row = 0
        self.lr: float | None = None  # the scaled peak learning rate, set in configure_optimizers
        self.global_batch_size: int | None = None

    @classmethod
    def load_from_checkpoint(cls, checkpoint_path: Any, *args: Any, **kwargs: Any) -> "ImageClassifier":
        """Lightning's ``load_from_checkpoint``; a checkpoint written before the settings groups (flat
        ``base_lr``, ``tokenizer``, ...) is read in today's groups (:func:`~vitlab.training.settings.upgrade_hparams`)."""
        if isinstance(checkpoint_path, (str, os.PathLike)) and "://" not in str(checkpoint_path):
            checkpoint = torch.load(checkpoint_path, map_location="cpu", weights_only=True)
            hparams = checkpoint.get("hyper_parameters") or {}
            if any(k in MOVED or k in RENAMED_FIELDS for k in hparams):  # old flat keys: read in today's groups
                checkpoint["hyper_parameters"] = upgrade_hparams(hparams)
                checkpoint_path = io.BytesIO()
                torch.save(checkpoint, checkpoint_path)
                checkpoint_path.seek(0)
        return super().load_from_checkpoint(checkpoint_path, *args, **kwargs)

    # ---------------------------------------------------------------- forward
    @property
    def train_flops_per_sample(self) -> float:
        """Training FLOPs per image, analytic (``vitlab.models.flops``: attention counted, 3 x the forward): the
        throughput callback's FLOP/s and MFU."""
        if self.timm_model is None:
            return 6.0 * forward_macs(self.cfg)
        if self._forward_flops is None:  # a timm network: counted once by torch's flop counter
            self._forward_flops = forward_flops(self.model, self.cfg.in_chans, self.cfg.img_hw)
        return 3.0 * self._forward_flops

    @property
    def eval_model(self) -> nn.Module:
        """The weights used for validation, test and prediction: the EMA when on."""
        return self.ema.module if self.ema is not None else self.model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)  # (B, K)

    def eval_logits(self, x: torch.Tensor) -> torch.Tensor:
        """Logits of ``eval_model`` for validation, test and prediction; with test-time augmentation
        (``tta`` other than ``"none"``) the log of the mean class probabilities over the views of ``x``."""
        views = TTA_VIEWS[self.evaluation.tta]
        if len(views) == 1:
            return self.eval_model(x)  # (B, K)
        probs = sum(self.eval_model(tta_view(x, *v)).float().softmax(-1) for v in views)  # (B, K)
        return (probs / len(views)).log()

    # ---------------------------------------------------------------- steps
    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor | None:
        x, y = batch  # (B, C, H, W), (B,)
        if self.speed.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        target = y
        if self.mixup_fn is not None:
            if len(x) % 2:  # timm mixes a batch with its flip, which needs an even size
                x, y = x[:-1], y[:-1]
            x, target = self.mixup_fn(x, y)  # target: (B, K) soft labels
        if self.distiller is not None:  # the teacher sees the same (mixed) images
            out = self.model(x)  # (B, K) each: (class head, distillation head), or the one head twice
            logits, logits_dist = out if self.cfg.distilled else (out, out)
            loss, base, distill = self.distiller.loss(x, logits, logits_dist, target, self.train_loss)
            logits = (logits + logits_dist) / 2  # metrics on the averaged heads, as evaluation
        else:
            logits = self.model(x)  # (B, K)
            loss = self.train_loss(logits, target)
        if self._nonfinite(loss, batch_idx):
            return None  # Lightning skips backward and the optimizer step
        self.train_metrics.update(logits, y)  # on the (possibly mixed) inputs, against their main label
        if self.distiller is not None:
            self.log_dict({"train/loss_base": base, "train/loss_distill": distill}, on_step=False, on_epoch=True,
                          sync_dist=True, batch_size=len(x))
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
        if self.nonfinite == "stop":
            raise NonFiniteLossError(f"{where}; training stopped, checkpoints already written are unchanged. "
                                     "Lower model.optim.base_lr, raise model.schedule.warmup_epochs, check the data for NaN/inf, or set "
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
        top = probs.topk(min(self.evaluation.top_k, probs.shape[-1]), dim=-1)
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
        if self.speed.channels_last:
            self.model.to(memory_format=torch.channels_last)
            if self.ema is not None:  # the EMA copy too: it runs validation
                self.ema.to(memory_format=torch.channels_last)
        if self.speed.compile and not getattr(self, "_compiled", False):
            device = self.trainer.strategy.root_device if self._trainer is not None else self.device
            if explicit_attention_pays(device, compiled=True):  # inductor fuses it; faster than SDPA on CPUs
                set_fused_attention(self.model, False)
            mode = self.speed.compile_mode
            self.model.compile(backend=self.speed.compile_backend, mode=None if mode == "default" else mode)
            self._compiled = True

    def setup(self, stage: str) -> None:
        params = {f"model/{k}": v for k, v in self.hparams.items()}  # groups: flattened by the loggers
        if self.timm_model is None:
            params.update({f"model/resolved/{k}": v for k, v in self.cfg.to_dict().items()})
        for logger in self.loggers:
            logger.log_hyperparams(params)

    def on_fit_start(self) -> None:
        if self.ema is not None and "FSDP" in type(self.trainer.strategy).__name__:
            raise ValueError("ema_decay is not supported with FSDP (the EMA copy would be sharded); "
                             "use DDP or set model.regularization.ema_decay null")
        if self.ema is not None:  # the copy only averages during training (no forward); Lightning's eval()
            self.ema.train()      # covers validation. In eval mode it set off "N module(s) in eval mode".
        if self.distiller is not None:  # built here (not when a checkpoint is only evaluated), frozen, eval mode
            self.distiller.to(self.device)

    def on_train_epoch_end(self) -> None:
        if self.distiller is not None:
            self.distiller.end_epoch()

    # ---------------------------------------------------------------- what trains when (fine-tuning)
    def on_train_batch_start(self, batch: Any, batch_idx: int) -> None:
        ft = self.finetune
        if ft.freezing:
            apply_trainable(self.model, self.cfg.depth, step=self.trainer.global_step,
                            epoch=self.trainer.current_epoch, freeze=ft.freeze,
                            unfreeze_every_epochs=ft.unfreeze_every_epochs,
                            tokenizer_warmup_steps=ft.tokenizer_warmup_steps)

    # ---------------------------------------------------------------- optimiser and schedule
    def param_groups(self, weight_decay: float) -> list[dict[str, Any]]:
        """Parameter groups by (weight decay, lr scale) (see :func:`vitlab.training.optim.param_groups`)."""
        return param_groups(self.model, self.no_decay_names, self.lr_scales, weight_decay,
                            keep_frozen=self.finetune.freezing)

    def configure_optimizers(self) -> dict[str, Any]:
        opt, trainer = self.optim, self.trainer
        try:
            total_steps = trainer.estimated_stepping_batches  # loads the train loader; respects max_steps, limits
        except OverflowError:  # max_steps without max_epochs: Lightning multiplies by an infinite epoch count
            total_steps = trainer.max_steps if trainer.max_steps and trainer.max_steps > 0 else math.inf
        if not math.isfinite(total_steps):
            raise ValueError("the learning-rate schedule needs a finite run: set trainer.max_epochs or max_steps")
        accumulate = trainer.accumulate_grad_batches
        batches = trainer.num_training_batches  # inf when max_steps comes without max_epochs: the loader's length
        if not math.isfinite(batches) and trainer.train_dataloader is None:
            trainer.fit_loop.setup_data()  # Lightning skips loading it for max_epochs -1: warmup counts real epochs,
            batches = trainer.num_training_batches  # not fractions of max_steps (which a resume could enlarge)
        if not math.isfinite(batches):
            batches = len(trainer.train_dataloader) if hasattr(trainer.train_dataloader, "__len__") else total_steps
        steps_per_epoch = max(1, math.ceil(batches / accumulate))

        # 1. peak lr from the global batch
        per_process = getattr(trainer.train_dataloader, "batch_size", None)
        if per_process is None:
            per_process = getattr(trainer.datamodule, "batch_size", None)
        if per_process is None:
            raise ValueError("cannot tell the per-process batch size to scale base_lr: use a data module "
                             "with a batch_size attribute or a DataLoader with batch_size")
        self.global_batch_size = per_process * trainer.world_size * accumulate
        self.lr = opt.base_lr * self.global_batch_size / opt.base_batch_size
        rank_zero_info(f"lr = optim.base_lr {opt.base_lr:g} x global batch {self.global_batch_size} "
                       f"({per_process} x {trainer.world_size} processes x {accumulate} accumulated) "
                       f"/ {opt.base_batch_size} = {self.lr:.4g}")

        # 2. timm's optimizer by name on vitlab's groups; torch's Adam/AdamW fused on CUDA (unless fp16 loss
        #    scaling meets clipping), foreach elsewhere
        groups = self.param_groups(opt.weight_decay)
        for group in groups:
            group["lr"] = self.lr * group["lr_scale"]  # LambdaLR scales each group's own initial lr
        extra: dict[str, Any] = {}
        if opt.name in ("adam", "adamw"):
            fused = use_fused_adamw(self.device, trainer.precision_plugin, trainer.gradient_clip_val)
            extra = {"fused": True} if fused else {"foreach": True}
        optimizer = create_optimizer_v2(groups, opt=opt.name, lr=self.lr, weight_decay=opt.weight_decay,
                                        momentum=opt.momentum, betas=tuple(opt.betas), **extra)

        # 3. warmup then cosine, per optimizer step. A resume lays it out again over today's total (a larger
        #    max_steps/max_epochs stretches the cosine; warmup is not repeated) and goes on at the resumed step
        #    (ResumeState applies the new rate from the first resumed step)
        warmup_steps = round(self.schedule.warmup_epochs * steps_per_epoch)
        schedule = partial(warmup_cosine, warmup_steps=warmup_steps, total_steps=int(total_steps),
                           min_ratio=min(1.0, self.schedule.min_lr / self.lr))
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


__all__ = ["ImageClassifier", "NonFiniteLossError", "CheckpointMismatchError", "warmup_cosine"]
