"""Checkpoints a kill cannot break, and resumes that continue exactly where the run stopped.

* :class:`AtomicCheckpointIO` (Lightning's ``TorchCheckpointIO``) writes a local checkpoint to a temporary file in
  the same folder, fsyncs it and renames it over the target: a reader sees the old file or the new one, never half
  of one. Remote URLs (``s3://``, ``memory://``, any fsspec file system) go through Lightning's own writer. It
  refuses to write weights that are not finite, so a diverged run cannot replace a good checkpoint.
* :class:`LastCheckpoint` keeps ``last.ckpt`` fresh: every N training steps (or minutes) and after every
  validation, so a kill mid-epoch loses at most N steps.
* :class:`ResumeState` saves the global torch/CUDA/numpy/``random`` states (dropout, drop path, mixup draw from
  them) and puts them back right before the first resumed training step, and makes sure the training loader
  continues from its place in the epoch.

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


def nonfinite_tensors(state_dict: dict[str, Any]) -> list[str]:
    """Names of the floating-point tensors of ``state_dict`` with a NaN or an infinity."""
    return [k for k, v in state_dict.items()
            if isinstance(v, torch.Tensor) and v.is_floating_point() and not torch.isfinite(v).all()]


class AtomicCheckpointIO(TorchCheckpointIO):
    """``torch.save`` to ``.NAME.tmp<pid>`` next to the target, fsync, ``os.replace``, fsync the folder.

    Raises:
        NonFiniteCheckpointError: The checkpoint's ``state_dict`` has non-finite weights; nothing is written.
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
        finally:
            tmp.unlink(missing_ok=True)
        _fsync_dir(path.parent)

    def remove_checkpoint(self, path: Any) -> None:
        if _is_remote(path):
            super().remove_checkpoint(path)
        else:
            Path(str(path).removeprefix("file://")).unlink(missing_ok=True)


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
    """

    def __init__(self) -> None:
        self._rng: dict[str, Any] | None = None
        self._loaders: list[dict[str, Any]] = []

    @property
    def state_key(self) -> str:
        return "ResumeState"

    def state_dict(self) -> dict[str, Any]:
        state = _get_rng_state()
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            states: list[Any] = [None] * torch.distributed.get_world_size()
            torch.distributed.all_gather_object(states, state)
            return {"rng": states}
        return {"rng": [state]}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        ranks = state_dict.get("rng") or []
        rank = torch.distributed.get_rank() if torch.distributed.is_initialized() else 0
        self._rng = ranks[rank] if rank < len(ranks) else None  # another world size: not restorable

    def on_load_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule,
                           checkpoint: dict[str, Any]) -> None:
        fit_loop = checkpoint.get("loops", {}).get("fit_loop", {})
        self._loaders = list(fit_loop.get("state_dict", {}).get("combined_loader", []))

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # after configure_optimizers built the loader (if it did), before anything is fetched from it
        if self._loaders and trainer.fit_loop._combined_loader is not None:
            trainer.fit_loop._combined_loader._load_state_dicts(self._loaders)
        self._loaders = []

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any,
                             batch_idx: int) -> None:
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


__all__ = ["AtomicCheckpointIO", "LastCheckpoint", "ResumeState", "NonFiniteCheckpointError", "nonfinite_tensors",
           "CheckpointMismatchError", "check_checkpoint_fits"]
