"""Checks of the trainer values, the runs folder and ``ckpt_path``, made before anything is built or written.

Lightning takes some out-of-range trainer values without a word and then divides by them mid-run
(``accumulate_grad_batches 0``, ``check_val_every_n_epoch 0``), turns others into a silent no-op (a negative
``gradient_clip_val``), and an endless run (``max_epochs -1`` alone) only fails when the learning-rate schedule is
built, after the run folder exists. Checked here, in one place, each gives one line naming the key and the value.
A read-only runs folder, or a weights file given as ``ckpt_path``, is refused here too, before the run folder is made.
"""
from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

# key -> (smallest value allowed, what the values mean); None is always allowed (Lightning's default)
_AT_LEAST: dict[str, tuple[int, str]] = {
    "accumulate_grad_batches": (1, "an integer >= 1"),
    "max_epochs": (-1, "an integer >= 0, or -1 for no epoch limit"),
    "max_steps": (-1, "an integer >= 0, or -1 for no step limit"),
    "min_epochs": (0, "an integer >= 0"),
    "min_steps": (0, "an integer >= 0"),
    "check_val_every_n_epoch": (1, "an integer >= 1, or null to validate by val_check_interval only"),
    "log_every_n_steps": (0, "an integer >= 0 (0 logs no training steps)"),
    "num_sanity_val_steps": (-1, "an integer >= 0, or -1 for the whole validation set"),
    "gradient_clip_val": (0, "a number >= 0 (0 = no clipping)"),
}


def check_trainer_values(trainer: Any, subcommand: str | None) -> None:
    """Raise ``ValueError`` (one line, naming the key and the value) for a trainer value out of range.

    Args:
        trainer: The ``trainer`` section of the parsed config (a Namespace or a dict).
        subcommand: ``fit`` also needs a finite run: the warmup + cosine schedule is laid out over its length.
    """
    for key, (low, meaning) in _AT_LEAST.items():
        value = trainer.get(key)
        if _number(value) and value < low:
            raise ValueError(f"trainer.{key} must be {meaning}, got {value!r}")
    for key in ("limit_train_batches", "limit_val_batches", "limit_test_batches", "limit_predict_batches"):
        value = trainer.get(key)
        if _number(value) and (value < 0 or (isinstance(value, float) and value > 1)):
            raise ValueError(f"trainer.{key} must be a fraction in [0, 1] or a number of batches >= 0, got {value!r}")
    interval = trainer.get("val_check_interval")
    if _number(interval) and (interval <= 0 or (isinstance(interval, float) and interval > 1)):
        raise ValueError(f"trainer.val_check_interval must be > 0 (a fraction of an epoch in (0, 1] or a number of "
                         f"batches), got {interval!r}")
    for low_key, high_key in (("min_epochs", "max_epochs"), ("min_steps", "max_steps")):
        low, high = trainer.get(low_key), trainer.get(high_key)
        if low is not None and high is not None and high >= 0 and low > high:
            raise ValueError(f"trainer.{low_key} ({low}) is more than trainer.{high_key} ({high})")
    if subcommand == "fit" and trainer.get("max_epochs") == -1 and trainer.get("max_steps") in (None, -1):
        raise ValueError("trainer.max_epochs -1 (no epoch limit) needs trainer.max_steps: the learning-rate schedule "
                         "(warmup, then cosine to min_lr) is laid out over a finite number of steps, and max_time "
                         "does not give one; set max_steps, or a max_epochs >= 1")


def _number(value: Any) -> bool:
    """An int or a float (not a bool, not a time string or a timedelta, which Lightning checks itself)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def check_run_folders(runs_dir: str | os.PathLike, written: Sequence[str | os.PathLike]) -> None:
    """Raise ``ValueError`` (one line, naming the path and the reason) unless a run can write where it will.

    ``runs_dir`` must not be a file; each folder of ``written`` (the runs_dir of a new run, the version folder and
    ``checkpoints/`` of a resumed one) must be a writable folder, or not exist yet under a writable folder. Checked
    before the run folder is made, so a refused run leaves nothing behind.
    """
    if Path(runs_dir).exists() and not Path(runs_dir).is_dir():
        raise ValueError(f"runs_dir {os.fspath(runs_dir)!r} is a file, not a folder: choose a folder for the runs")
    for folder in map(Path, written):
        existing = folder
        while not existing.exists() and existing.parent != existing:  # the nearest folder that exists
            existing = existing.parent
        if not existing.is_dir():
            raise ValueError(f"cannot make {os.fspath(folder)!r}: {os.fspath(existing)!r} is a file")
        effective = os.access in os.supports_effective_ids
        if not os.access(existing, os.W_OK | os.X_OK, effective_ids=effective):
            raise ValueError(f"{os.fspath(existing)!r} is not writable by this user (permission denied or a read-only "
                             f"file system), so the run cannot write there: choose another runs_dir or fix its "
                             f"permissions")


def check_ckpt_path(path: str | os.PathLike) -> None:
    """Raise ``ValueError`` (one line) when ``ckpt_path`` is a folder or a weights file instead of a Lightning
    checkpoint: both are easy to confuse with ``model.pretrained``, which takes them."""
    if "://" in str(path):
        return
    if os.path.isdir(path):
        raise ValueError(f"ckpt_path {os.fspath(path)!r} is a folder: give a checkpoint file (.ckpt) or last/best; "
                         f"to start from the weights of a hub folder use model.pretrained")
    if _is_safetensors(path):
        raise ValueError(f"ckpt_path {os.fspath(path)!r} is a safetensors weights file: ckpt_path takes a Lightning "
                         f"checkpoint (.ckpt) to resume or evaluate; to start from weights use "
                         f"--model.pretrained {os.fspath(path)}")


def _is_safetensors(path: str | os.PathLike) -> bool:
    """A safetensors file: an 8-byte little-endian header length, then the JSON header."""
    try:
        with open(path, "rb") as f:
            head = f.read(9)
    except OSError:
        return False
    return len(head) == 9 and head[8:9] == b"{" and int.from_bytes(head[:8], "little") < 100_000_000


__all__ = ["check_trainer_values", "check_run_folders", "check_ckpt_path"]
