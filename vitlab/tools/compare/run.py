"""One run of `vitlab compare`: a tokenizer, a train size, an optimizer and lr, a seed. It checkpoints after
every epoch into ``OUT/ckpt/<run id>/`` (Lightning's ModelCheckpoint), so a killed comparison resumes inside the
run it was in; its validation history (with training wall-clock) travels in the checkpoint."""
from __future__ import annotations

import argparse
import shutil
import statistics
import time
from importlib import import_module
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import ModelCheckpoint

from vitlab.models.config import ViTConfig
from vitlab.models.flops import model_stats
from vitlab.tools.compare.plan import DATA, RunSpec, machine, recipe


class EpochRecorder(L.Callback):
    """Validation acc1 after every epoch, with the training wall-clock spent so far (validation excluded)."""

    def __init__(self) -> None:
        self.history: list[dict[str, float]] = []
        self.train_seconds = 0.0
        self.train_samples = 0
        self._t0 = 0.0

    def _add_train_time(self) -> None:
        now = time.perf_counter()
        self.train_seconds += now - self._t0
        self._t0 = now

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._t0 = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.train_samples += len(batch[0])

    def on_validation_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not trainer.sanity_checking:
            self._add_train_time()  # validation runs inside the training epoch, before on_train_epoch_end

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking or "val/acc1" not in trainer.callback_metrics:
            return
        self.history.append({"epoch": trainer.current_epoch + 1, "seconds": self.train_seconds,
                             "val_acc1": float(trainer.callback_metrics["val/acc1"])})
        self._t0 = time.perf_counter()  # the validation time is not training time

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._add_train_time()

    def state_dict(self) -> dict[str, Any]:  # saved in the per-epoch checkpoint: a resumed run keeps its curve
        return {"history": self.history, "train_seconds": self.train_seconds, "train_samples": self.train_samples}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.history = list(state["history"])
        self.train_seconds = float(state["train_seconds"])
        self.train_samples = int(state["train_samples"])


@torch.no_grad()
def inference_speed(model: torch.nn.Module, shape: tuple[int, ...], repeats: int = 5) -> float:
    """Eval-mode images per second on one batch of ``shape`` (median of ``repeats``)."""
    model.eval()
    x = torch.randn(shape)
    model(x)
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        model(x)
        times.append(time.perf_counter() - t)
    return shape[0] / statistics.median(times)


def run_one(cfg: ViTConfig, spec: RunSpec, args: argparse.Namespace, ckpt_root: Path) -> dict[str, Any]:
    """Train ``spec`` (config ``cfg``) to its last epoch, resuming from its checkpoint folder if a kill left one;
    returns its results (history, accuracies, speeds) and removes the folder."""
    from vitlab.training.module import ImageClassifier

    L.seed_everything(spec.seed, verbose=False)
    module_path, cls_name = DATA[args.data][0].rsplit(".", 1)
    data = getattr(import_module(module_path), cls_name)(
        data_dir=args.data_dir, batch_size=args.batch_size, seed=0, num_workers=args.num_workers,
        train_subset=spec.size, eval_subset=args.eval_subset, img_size=cfg.img_size, in_chans=cfg.in_chans)
    model = ImageClassifier(arch=cfg.replace(num_classes=data.num_classes),
                            optim={"name": spec.optimizer, "base_lr": spec.lr, "weight_decay": args.weight_decay},
                            schedule={"warmup_epochs": args.warmup_epochs},
                            regularization={"label_smoothing": args.label_smoothing})
    recorder = EpochRecorder()
    folder = ckpt_root / spec.run_id
    saver = ModelCheckpoint(dirpath=folder, filename="last", save_top_k=1,  # no monitor: the newest epoch
                            enable_version_counter=False)
    trainer = L.Trainer(max_epochs=spec.epochs, accelerator=args.accelerator, devices=1, logger=False,
                        enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
                        callbacks=[recorder, saver, EpochPrinter(spec)], precision=args.precision)
    last = folder / "last.ckpt"
    if last.is_file():
        print(f"    {spec.run_id}: resuming from {last}", flush=True)
    trainer.fit(model, datamodule=data, ckpt_path=str(last) if last.is_file() else None)
    test_acc = trainer.test(model, datamodule=data, verbose=False)[0]["test/acc1"]
    accs = [h["val_acc1"] for h in recorder.history]
    stats = model_stats(cfg)
    result = {
        "tokenizer": spec.tokenizer, "seed": spec.seed, "size": spec.size, "epochs": spec.epochs,
        "optimizer": spec.optimizer, "lr": spec.lr, "train_images": len(data.train_set),
        "depth": cfg.depth, "params_m": stats["params_m"], "gflops": stats["gflops"], "history": recorder.history,
        "test_acc1": test_acc, "final_val_acc1": accs[-1] if accs else None,
        "best_val_acc1": max(accs) if accs else None,
        "train_img_s": recorder.train_samples / max(recorder.train_seconds, 1e-9),
        "infer_img_s": inference_speed(model.model.cpu(), (args.batch_size, cfg.in_chans, cfg.img_size,
                                                            cfg.img_size)),
        "machine": machine(), "config": cfg.to_dict(), "batch_size": args.batch_size, "recipe": recipe(args),
    }
    shutil.rmtree(folder, ignore_errors=True)
    return result


class EpochPrinter(L.Callback):
    """One progress line per validation: run, epoch, accuracy, training seconds so far."""

    def __init__(self, spec: RunSpec) -> None:
        self.spec = spec

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking or "val/acc1" not in trainer.callback_metrics:
            return
        print(f"    {self.spec.run_id} epoch {trainer.current_epoch + 1}/{self.spec.epochs}: "
              f"val acc1 {float(trainer.callback_metrics['val/acc1']):.4f}", flush=True)
