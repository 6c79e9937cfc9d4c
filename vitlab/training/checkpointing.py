"""Checkpoints a kill cannot break, and resumes that continue exactly where the run stopped.

* :class:`AtomicCheckpointIO` (Lightning's ``TorchCheckpointIO``) writes a local checkpoint to a temporary file in
  the same folder, fsyncs it and renames it over the target: a reader sees the old file or the new one, never half
  of one. Remote URLs (``s3://``, ``memory://``, any fsspec file system) go through Lightning's own writer. It
  refuses to write weights that are not finite, so a diverged run cannot replace a good checkpoint.
* :class:`LastCheckpoint` keeps ``last.ckpt`` fresh: every N training steps (or minutes) and after every
  validation, so a kill mid-epoch loses at most N steps.
* :class:`ResumeState` saves the global torch/CUDA/numpy/``random`` states (dropout, drop path, mixup draw from
  them) and puts them back right before the first resumed training step, makes sure the training loader
  continues from its place in the epoch, logs the resumed steps under their own step numbers, and starts the
  learning-rate schedule rebuilt for today's budget at the resumed step.
* :func:`budget_reached` says why a resume would train nothing; :func:`check_checkpoint_dirs` refuses a new run
  whose checkpoints would land among another run's.

Together with the training loader of ``vitlab.data.resumable`` (which saves its place in the epoch), a resumed
CPU run with ``trainer.deterministic: true`` ends with the same weights, bit for bit, as an uninterrupted one.
"""
from __future__ import annotations

import os
import random
from datetime import timedelta
from pathlib import Path
from typing import Any, Optional

import lightning as L
import numpy as np
import torch
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from lightning.pytorch.plugins.io import TorchCheckpointIO


class NonFiniteCheckpointError(ValueError):
    """A checkpoint about to be written holds NaN or infinite weights."""


class CheckpointWriteError(OSError):
    """A checkpoint could not be written (a full disk, a file-size limit, a read-only folder): ``filename`` is the
    checkpoint, ``errno`` the reason. The file at that path before the write is untouched."""


def nonfinite_tensors(state_dict: dict[str, Any]) -> list[str]:
    """Names of the floating-point tensors of ``state_dict`` with a NaN or an infinity."""
    return [k for k, v in state_dict.items()
            if isinstance(v, torch.Tensor) and v.is_floating_point() and not torch.isfinite(v).all()]


class AtomicCheckpointIO(TorchCheckpointIO):
    """``torch.save`` to ``.NAME.tmp<pid>`` next to the target, fsync, ``os.replace``, fsync the folder.

    Raises:
        NonFiniteCheckpointError: The checkpoint's ``state_dict`` has non-finite weights; nothing is written.
        CheckpointWriteError: The write failed (full disk, read-only folder); its temporary file is removed.
    """

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Optional[Any] = None) -> None:
        bad = nonfinite_tensors(checkpoint.get("state_dict", {}))
        if bad:
            raise NonFiniteCheckpointError(
                f"refusing to write {path}: non-finite weights in {bad[:3]}{' ...' if len(bad) > 3 else ''} at "
                f"step {checkpoint.get('global_step', '?')}, epoch {checkpoint.get('epoch', '?')} (training diverged; "
                f"the checkpoints already written are untouched)")
        if _is_remote(path):  # Lightning's fsspec writer: an object store's upload is all or nothing
            super().save_checkpoint(checkpoint, path, storage_options)
            return
        if storage_options is not None:
            raise TypeError(f"{type(self).__name__} takes storage_options only for remote paths (s3://, ...)")
        path = Path(str(path).removeprefix("file://"))
        path.parent.mkdir(parents=True, exist_ok=True)
        for stale in path.parent.glob(f".{path.name}.tmp*"):  # left by a process killed while writing
            stale.unlink(missing_ok=True)
        tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
        try:
            with open(tmp, "wb") as f:
                torch.save(checkpoint, f)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except (OSError, RuntimeError) as err:  # torch's zip writer reports a failed write as a RuntimeError
            cause = _os_error(err)
            if cause is None:
                raise
            raise CheckpointWriteError(cause.errno, cause.strerror, str(path)) from err
        finally:
            tmp.unlink(missing_ok=True)  # a failed write leaves no temporary file
        _fsync_dir(path.parent)

    def remove_checkpoint(self, path: Any) -> None:
        if _is_remote(path):
            super().remove_checkpoint(path)
        else:
            Path(str(path).removeprefix("file://")).unlink(missing_ok=True)


def _os_error(err: BaseException) -> Optional[OSError]:
    """The ``OSError`` (with an errno) that ``err`` is or was raised while handling, if any."""
    while err is not None and not (isinstance(err, OSError) and err.errno is not None):
        err = err.__cause__ or err.__context__
    return err


def _is_remote(path: Any) -> bool:
    """A URL fsspec resolves to a non-local file system (``s3://``, ``gs://``, ``memory://``, ...)."""
    text = str(path)
    return "://" in text and not text.startswith("file://")


def _fsync_dir(folder: Path) -> None:
    """Make a rename in ``folder`` durable (POSIX; a no-op where folders cannot be opened)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


class LastCheckpoint(ModelCheckpoint):
    """Writes only ``last.ckpt``: every ``every_n_train_steps`` steps (or ``every_minutes``), after every
    validation and at the end of training.

    Args:
        dirpath: Folder; None = the run's ``checkpoints/`` (as ``ModelCheckpoint``).
        every_n_train_steps: Save every this many optimizer steps; wins over ``every_minutes``.
        every_minutes: Save when this much training time has passed since the last save.
    """

    def __init__(self, dirpath: Optional[str] = None, every_n_train_steps: Optional[int] = None,
                 every_minutes: Optional[float] = None) -> None:
        interval = None
        if not every_n_train_steps and every_minutes:
            interval = timedelta(minutes=every_minutes)
        super().__init__(dirpath=dirpath, monitor=None, save_top_k=0, save_last=True,
                         every_n_train_steps=every_n_train_steps or None, train_time_interval=interval,
                         enable_version_counter=False)

    @property
    def state_key(self) -> str:
        return "LastCheckpoint"

    def _save_last_now(self, trainer: L.Trainer) -> None:
        if not self._should_skip_saving_checkpoint(trainer):
            self._save_last_checkpoint(trainer, self._monitor_candidates(trainer))

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not self._should_save_on_train_epoch_end(trainer):
            self._save_last_now(trainer)

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self._should_save_on_train_epoch_end(trainer):
            self._save_last_now(trainer)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._save_last_now(trainer)


class ResumeState(Callback):
    """What a Lightning resume leaves out, put back before the first resumed batch.

    * The global random states, saved for every process (gathered under DDP) and restored at the first
      training batch - after sanity validation and loader start-up, which may draw from them.
    * The training loader's place in the epoch: Lightning restores it only when it builds the loader after
      loading the loop state, but ``ImageClassifier.configure_optimizers`` asks for
      ``estimated_stepping_batches``, which builds it before. Applied at ``on_fit_start``, before the first
      batch is fetched (the loader starts lazily); applying it twice is harmless.
    * The loggers' step: Lightning counts it apart from ``global_step`` and, resuming a ``max_steps`` run from a
      checkpoint written at an epoch's end, counts one batch too many (the resumed steps would be logged one step
      late, leaving a hole). Its offset to ``global_step`` is saved and put back at the first resumed batch; this
      callback must come before any that logs in ``on_train_batch_start`` (the CLI puts it first).
    * The learning rate of the first resumed step: the schedule is rebuilt for today's budget
      (``configure_optimizers``), but the restored optimizer holds the rate the old schedule gave; a ``LambdaLR``'s
      rate is recomputed at ``on_train_start`` (the same value when the budget is unchanged).
    """

    def __init__(self) -> None:
        self._rng: dict[str, Any] | None = None
        self._loaders: list[dict[str, Any]] = []
        self._log_offset: Optional[int] = None  # loaded: logger step - global_step, to put back
        self._offset_now = 0  # the same, measured at the start of the latest batch
        self._resumed = False

    @property
    def state_key(self) -> str:
        return "ResumeState"

    def state_dict(self) -> dict[str, Any]:
        state = _get_rng_state()
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            states: list[Any] = [None] * torch.distributed.get_world_size()
            torch.distributed.all_gather_object(states, state)
            return {"rng": states, "log_offset": self._offset_now}
        return {"rng": [state], "log_offset": self._offset_now}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        ranks = state_dict.get("rng") or []
        rank = torch.distributed.get_rank() if torch.distributed.is_initialized() else 0
        self._rng = ranks[rank] if rank < len(ranks) else None  # another world size: not restorable
        self._log_offset = state_dict.get("log_offset")  # None in checkpoints written before it was saved
        self._resumed = True

    def on_load_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule,
                           checkpoint: dict[str, Any]) -> None:
        fit_loop = checkpoint.get("loops", {}).get("fit_loop", {})
        self._loaders = list(fit_loop.get("state_dict", {}).get("combined_loader", []))

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # after configure_optimizers built the loader (if it did), before anything is fetched from it
        if self._loaders and trainer.fit_loop._combined_loader is not None:
            trainer.fit_loop._combined_loader._load_state_dicts(self._loaders)
        self._loaders = []

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not self._resumed:
            return
        for config in trainer.lr_scheduler_configs:  # the rebuilt schedule's rate at the resumed step
            scheduler = config.scheduler
            if isinstance(scheduler, torch.optim.lr_scheduler.LambdaLR):
                rates = [base * fn(scheduler.last_epoch) for fn, base in zip(scheduler.lr_lambdas, scheduler.base_lrs)]
                for group, lr in zip(scheduler.optimizer.param_groups, rates):
                    if isinstance(group["lr"], torch.Tensor):
                        group["lr"].fill_(lr)
                    else:
                        group["lr"] = lr
                scheduler._last_lr = [group["lr"] for group in scheduler.optimizer.param_groups]

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any,
                             batch_idx: int) -> None:
        loop = trainer.fit_loop.epoch_loop
        if self._log_offset is not None:  # the first resumed batch: logged at its own step
            loop._batches_that_stepped = trainer.global_step + self._log_offset
            self._log_offset = None
        self._offset_now = loop._batches_that_stepped - trainer.global_step
        if self._rng is not None:
            _set_rng_state(self._rng)
            self._rng = None


def _get_rng_state() -> dict[str, Any]:
    """Plain types and tensors only, so ``torch.load(weights_only=True)`` reads it back."""
    name, keys, pos, has_gauss, gauss = np.random.get_state()
    state = {"torch": torch.get_rng_state(), "python": random.getstate(),
             "numpy": {"name": name, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                       "has_gauss": int(has_gauss), "gauss": float(gauss)}}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    n = state["numpy"]
    np.random.set_state((n["name"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["gauss"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def budget_reached(ckpt_path: str, max_steps: Optional[int], max_epochs: Optional[int],
                   max_time: Any = None) -> Optional[str]:
    """Why a fit resumed from ``ckpt_path`` with these trainer limits would train nothing (one line), or None.

    Lightning would start, find its loop done and exit 0 in silence; the limits are read as it reads them
    (``max_epochs`` None means 1000, or no limit when ``max_steps`` or ``max_time`` is set).
    """
    if not ckpt_path or "://" in str(ckpt_path):
        return None
    ckpt = torch.load(ckpt_path, map_location="cpu", weights_only=True, mmap=True)
    fit = (ckpt.get("loops") or {}).get("fit_loop")
    if not fit:  # weights only: a new schedule of training, nothing to compare
        return None
    step = int(ckpt.get("global_step", 0))
    max_steps = -1 if max_steps is None else max_steps
    if max_epochs is None:
        max_epochs = 1000 if max_steps == -1 and max_time is None else -1
    epochs = fit.get("epoch_progress", {}).get("current", {})
    done = int(epochs.get("processed", 0))
    if int(epochs.get("started", 0)) > done and fit.get("epoch_loop.batch_progress", {}).get("is_last_batch"):
        done += 1  # written after the epoch's last batch, before Lightning counted the epoch
    where = f"{ckpt_path} is at step {step} after {done} epoch(s)"
    if max_steps != -1 and step >= max_steps:
        return f"{where}, and trainer.max_steps is {max_steps}: raise trainer.max_steps to train more"
    if max_epochs != -1 and done >= max_epochs:
        return f"{where}, and trainer.max_epochs is {max_epochs}: raise trainer.max_epochs to train more"
    if max_time is not None:
        from lightning.pytorch.callbacks import Timer

        limit = Timer(duration=max_time)._duration  # "DD:HH:MM:SS", a timedelta or a dict, as the Trainer takes
        elapsed = next((float(v["time_elapsed"].get("train", 0)) for k, v in (ckpt.get("callbacks") or {}).items()
                        if str(k).startswith("Timer") and isinstance(v, dict) and "time_elapsed" in v), 0.0)
        if limit is not None and elapsed >= limit:
            return (f"{where} and {elapsed:.0f} s of training, and trainer.max_time is {limit:.0f} s: raise "
                    f"trainer.max_time to train more")
    return None


def checkpoint_dir(callback: ModelCheckpoint, trainer: L.Trainer) -> str:
    """The folder ``callback`` will write into: its ``dirpath``, else Lightning's choice (the first logger's
    ``save_dir/name/version/checkpoints``, else ``default_root_dir/checkpoints``)."""
    if callback.dirpath is not None:
        return str(callback.dirpath)
    if trainer.loggers:
        logger = trainer.loggers[0]
        save_dir = logger.save_dir if logger.save_dir is not None else trainer.default_root_dir
        version = logger.version if isinstance(logger.version, str) else f"version_{logger.version}"
        return os.path.join(save_dir, str(logger.name), version, "checkpoints")
    return os.path.join(trainer.default_root_dir, "checkpoints")


def check_checkpoint_dirs(trainer: L.Trainer, ckpt_path: Optional[str]) -> None:
    """Raise ``ValueError`` (one line, naming the folder) when a checkpoint callback of this fit would write into a
    folder that already holds ``.ckpt`` files and the fit does not resume from a checkpoint in that folder: a new
    run would replace another run's ``last.ckpt`` or mix its best checkpoints with them."""
    resumed_in = Path(ckpt_path).resolve().parent if ckpt_path and "://" not in str(ckpt_path) else None
    for callback in trainer.checkpoint_callbacks:
        folder = checkpoint_dir(callback, trainer)
        if _is_remote(folder) or not os.path.isdir(folder) or Path(folder).resolve() == resumed_in:
            continue
        found = sorted(p.name for p in Path(folder).glob("*.ckpt"))
        if found:
            raise ValueError(
                f"checkpoint folder {folder} already holds checkpoints of another run ({found[0]}"
                f"{f' and {len(found) - 1} more' if len(found) > 1 else ''}) and this fit does not resume from it: "
                f"give an empty dirpath, or resume with --ckpt_path {os.path.join(folder, found[0])}")


class CheckpointMismatchError(ValueError):
    """A checkpoint's weights do not fit the model built from the config and the data."""


def check_checkpoint_fits(module: Any, state: dict[str, torch.Tensor], hparams: dict[str, Any]) -> None:
    """Raise :class:`CheckpointMismatchError` naming what differs (class count first) unless every tensor of
    ``state`` has the shape of the module's own."""
    bad = nonfinite_tensors(state)
    if bad:
        raise CheckpointMismatchError(f"the checkpoint has non-finite weights (NaN or inf) in {len(bad)} tensor(s), "
                                      f"e.g. {', '.join(bad[:3])}: refusing to load them")
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
    from vitlab.training.settings import upgrade_hparams
    arch = upgrade_hparams(hparams).get("arch") or {}
    differ = [f"arch.{k}={arch[k]!r} (model: {getattr(module.cfg, k)!r})" for k in ("img_size", "in_chans",
              "patch_size", "embed_dim", "depth", "tokenizer") if arch.get(k) is not None and arch[k] != getattr(module.cfg, k)]
    raise CheckpointMismatchError(
        f"the checkpoint does not fit the model{': it has ' + ', '.join(differ) if differ else ''}; "
        f"{len(shapes)} tensors differ in shape (checkpoint vs model), e.g. {shapes[0]}")


__all__ = ["AtomicCheckpointIO", "LastCheckpoint", "ResumeState", "NonFiniteCheckpointError", "CheckpointWriteError",
           "nonfinite_tensors", "CheckpointMismatchError", "check_checkpoint_fits", "budget_reached", "checkpoint_dir",
           "check_checkpoint_dirs"]
