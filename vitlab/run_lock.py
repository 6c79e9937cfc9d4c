"""One ``vitlab fit`` per run folder: an OS advisory lock (``fcntl.flock``) on ``version_N/.lock``.

Two processes writing one run folder (two ``--ckpt_path last`` resumes of the same run_name started at once) would
interleave their checkpoints and rewrite each other's metrics.csv. The first process to lock the folder keeps the
lock for its whole life; a second one is refused with one line naming the folder and the holder's PID. The kernel
drops a flock when its process ends, however it ends (``kill -9`` included), so a crash never leaves a stale lock.

A new run picks its ``version_N`` under a short lock on the folder above the run_name folder (``runs_dir``), so two
new runs started at once never pick the same number. Only the launching process locks: under DDP the other ranks (started by it, by torchrun or
by SLURM) write into the folder rank 0 holds.
"""
from __future__ import annotations

import fcntl
import os
import re
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, Optional

LOCK_FILE = ".lock"
_held: dict[Path, int] = {}  # folder -> open descriptor holding its lock, for the life of the process
_created: dict[Path, bool] = {}  # version folders this process made -> whether it made their run_name folder too


def launching_process() -> bool:
    """Whether this is global rank 0 (the process that launches, or the first of a torchrun/SLURM job), read from
    the environment because the lock is taken before the trainer (and its process group) exists."""
    return all(os.environ.get(key, "0") == "0"
               for key in ("RANK", "LOCAL_RANK", "NODE_RANK", "GROUP_RANK", "SLURM_PROCID", "JSM_NAMESPACE_RANK"))


def lock_folder(folder: Path) -> None:
    """Hold an exclusive lock on ``folder`` (created if missing) until this process ends.

    Raises:
        ValueError: Another process holds it; the one-line message names the folder and that process's PID.
    """
    folder = Path(folder).resolve()
    if folder in _held:
        return
    folder.mkdir(parents=True, exist_ok=True)
    fd = os.open(folder / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)  # not inherited by exec'd children
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        pid = _holder(fd)
        os.close(fd)
        raise ValueError(f"run folder {folder} is in use by another vitlab process (PID {pid}): wait for it to "
                         f"end, or use another --run_name") from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    _held[folder] = fd


def release_all() -> None:
    """Let go of every lock this process holds: the command is over (a process that ends releases them anyway;
    this is for ``vitlab.cli.main`` called in a process that goes on, such as a test)."""
    for folder, fd in list(_held.items()):
        os.close(fd)
        del _held[folder]
    _created.clear()


def _holder(fd: int) -> str:
    """The PID the holder wrote into the lock file (it writes right after locking: wait a moment for it)."""
    deadline = time.monotonic() + 1.0
    while True:
        text = os.pread(fd, 32, 0).decode(errors="replace").strip()
        if text or time.monotonic() > deadline:
            return text or "unknown"
        time.sleep(0.02)


@contextmanager
def _briefly_locked(folder: Path) -> Iterator[None]:
    """An exclusive lock on ``folder`` for the ``with`` block, waiting for it if another process holds it."""
    folder.mkdir(parents=True, exist_ok=True)
    fd = os.open(folder / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # releases the lock


def next_version(run_root: Path) -> int:
    """One more than the largest ``version_N`` in ``run_root`` (0 when there is none), as TensorBoardLogger counts."""
    found = [int(p.name[len("version_"):]) for p in run_root.glob("version_*")
             if p.is_dir() and re.fullmatch(r"version_\d+", p.name)]
    return max(found, default=-1) + 1


def claim_run_folder(run_root: Path, version: Optional[int]) -> int:
    """Lock ``run_root/version_<version>`` (a resume) or a new ``version_N`` (``version`` None) for this process;
    returns N.

    Raises:
        ValueError: The folder is locked by another process (see :func:`lock_folder`).
    """
    run_root = Path(run_root)
    with _briefly_locked(run_root.parent):  # no two new runs take the same number
        if version is None:
            version = next_version(run_root)
        folder = run_root / f"version_{version}"
        new, new_root = not folder.exists(), not run_root.exists()
        lock_folder(folder)
        if new:
            _created[folder.resolve()] = new_root
    return version


def created_here(folder: str | Path) -> bool:
    """Whether :func:`claim_run_folder` made ``folder`` in this process (it exists, but holds nothing of a run)."""
    return Path(folder).resolve() in _created


def abandon_new_folders() -> None:
    """Remove the version folders this process made that still hold nothing but the lock file: a fit refused
    after its folder was claimed leaves no empty ``version_N`` behind."""
    for folder, new_root in list(_created.items()):
        with _briefly_locked(folder.parent.parent):  # not while another process picks a version there
            if folder.is_dir() and {p.name for p in folder.iterdir()} <= {LOCK_FILE}:
                (folder / LOCK_FILE).unlink(missing_ok=True)
                folder.rmdir()
                if new_root and not any(folder.parent.iterdir()):
                    folder.parent.rmdir()
        del _created[folder]


__all__ = ["launching_process", "lock_folder", "next_version", "claim_run_folder", "created_here",
           "abandon_new_folders", "release_all", "LOCK_FILE"]
