"""Resuming a fit from last.ckpt continues the step count, the learning-rate schedule and AdamW's state."""
import lightning as L
import pytest
import torch
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from test_training_module import data, tiny


class CaptureAtTrainStart(Callback):
    """What the trainer holds right after restoring, before the first resumed step."""

    def on_train_start(self, trainer, pl_module):
        sched = trainer.lr_scheduler_configs[0].scheduler
        self.global_step = trainer.global_step
        self.epoch = trainer.current_epoch
        self.sched_step = sched.last_epoch
        self.lr = trainer.optimizers[0].param_groups[0]["lr"]
        self.optimizer = {k: v.clone() for k, v in trainer.optimizers[0].state_dict()["state"][0].items()}


def fit(tmp_path, max_epochs: int, ckpt_path=None, callbacks=()):
    model = tiny(optim=dict(base_lr=1e-3, base_batch_size=16), schedule=dict(warmup_epochs=1, min_lr=0.0),
                 regularization=dict(ema_decay=0.9))
    trainer = L.Trainer(accelerator="cpu", devices=1, max_epochs=max_epochs, logger=False,
                        enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
                        limit_val_batches=1, default_root_dir=tmp_path,
                        callbacks=[ModelCheckpoint(dirpath=tmp_path / "ckpt", save_last=True), *callbacks])
    trainer.fit(model, datamodule=data(batch_size=16), ckpt_path=ckpt_path)
    return trainer, model


def test_resume_from_last_ckpt_continues_steps_schedule_and_optimizer(tmp_path, fashion_mnist_available):
    first, _ = fit(tmp_path, max_epochs=2)
    last = tmp_path / "ckpt" / "last.ckpt"
    saved = torch.load(last, weights_only=False)
    assert saved["global_step"] == first.global_step == 8  # 64 samples / 16 per batch x 2 epochs

    capture = CaptureAtTrainStart()
    resumed, model = fit(tmp_path, max_epochs=3, ckpt_path=str(last), callbacks=[capture])
    assert capture.global_step == saved["global_step"] and capture.epoch == 2
    assert capture.sched_step == saved["lr_schedulers"][0]["last_epoch"] == 8
    assert capture.lr == pytest.approx(saved["optimizer_states"][0]["param_groups"][0]["lr"])
    for key, value in saved["optimizer_states"][0]["state"][0].items():  # AdamW step, exp_avg, exp_avg_sq
        assert torch.equal(capture.optimizer[key], value), key
    assert resumed.global_step == 12
    assert resumed.lr_scheduler_configs[0].scheduler.last_epoch == 12
    # the schedule was rebuilt for 3 epochs: at its end the cosine has reached min_lr (0)
    assert resumed.optimizers[0].param_groups[0]["lr"] == pytest.approx(0.0, abs=1e-12)
    ema_keys = [k for k in saved["state_dict"] if k.startswith("ema.")]
    assert ema_keys, "the EMA weights are part of the checkpoint"
