"""A full disk or a read-only folder while `vitlab fit` writes: one line naming the path and the errno, no traceback,
and the checkpoint already written stays whole.

The full disk is a real `vitlab fit` process whose file-size limit (RLIMIT_FSIZE, SIGXFSZ ignored) drops below a
checkpoint's size at step 2, after the first last.ckpt: the next write fails with EFBIG, as writes to a full disk
fail with ENOSPC; this needs no privileges or mounts, so it runs on any CI machine. Read-only folders are made with
chmod; as root (who writes anywhere) the command runs with the effective user nobody."""
import errno
import hashlib
import os
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import pytest
import torch
from lightning.pytorch.callbacks import Callback
from reliability_helpers import CPU_TRAINER, TINY_MODEL, fashion_mnist_data

from vitlab import cli
from vitlab.training.checkpointing import AtomicCheckpointIO, CheckpointWriteError

HERE = Path(__file__).parent
LIMIT = 64 * 1024  # bytes: above config.yaml, metrics and events, below a checkpoint (~300 kB)
RUN = ["fit", *fashion_mnist_data(batch_size=16, train=64, evaluate=16), *TINY_MODEL, "--model.arch.patch_size", "7",
       *CPU_TRAINER, "--trainer.enable_progress_bar", "false", "--trainer.max_steps", "4", "--last_every_n_steps",
       "2", "--run_name", "r"]


class FileSizeLimitAt(Callback):
    """At training step ``step``, lower this process's file-size limit to ``limit`` bytes with SIGXFSZ ignored, so
    a write past it fails with EFBIG, like a write to a full disk."""

    def __init__(self, step: int, limit: int) -> None:
        self.step, self.limit = step, limit

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if trainer.global_step == self.step:
            signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
            resource.setrlimit(resource.RLIMIT_FSIZE, (self.limit, self.limit))


@pytest.fixture(scope="module")
def disk_full_run(tmp_path_factory, fashion_mnist_available) -> tuple[subprocess.CompletedProcess, Path]:
    """A `vitlab fit` process that writes last.ckpt at step 2, then meets a "full disk" at step 4. Returns the
    finished process and its runs_dir."""
    runs = tmp_path_factory.mktemp("disk") / "runs"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(HERE), os.environ.get("PYTHONPATH", "")]),
           "OMP_NUM_THREADS": "1", "VITLAB_ALLOWED_CLASSES": "test_reliability_disk"}
    proc = subprocess.run([sys.executable, "-m", "vitlab.cli", *RUN, "--runs_dir", str(runs),
                           "--trainer.callbacks+", "test_reliability_disk.FileSizeLimitAt",
                           "--trainer.callbacks.step", "2", "--trainer.callbacks.limit", str(LIMIT)],
                          env=env, capture_output=True, text=True, timeout=300)
    return proc, runs


def test_full_disk_while_writing_a_checkpoint_is_one_line_and_keeps_the_last_one(disk_full_run):
    proc, runs = disk_full_run
    checkpoints = runs / "r/version_0/checkpoints"
    assert proc.returncode == 1, proc.stderr[-3000:]  # the machine's limit, not a usage error
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    assert proc.stderr.strip().splitlines()[-1] == (
        f"vitlab fit: error: cannot write checkpoint {checkpoints / 'last.ckpt'}: File too large (EFBIG); a "
        f"checkpoint already at that path is untouched")
    last = torch.load(checkpoints / "last.ckpt", weights_only=True)  # whole, and the one of step 2
    assert last["global_step"] == 2
    assert [p.name for p in checkpoints.iterdir()] == ["last.ckpt"]  # no temporary file left


@contextmanager
def as_nobody() -> Iterator[None]:
    """Run the block with the effective user nobody when this is root (root writes into read-only folders)."""
    if os.geteuid() != 0:
        yield
        return
    os.setegid(65534)
    os.seteuid(65534)
    try:
        yield
    finally:
        os.seteuid(0)
        os.setegid(0)


@pytest.fixture
def open_tmp() -> Iterator[Path]:
    """A temporary folder that the user nobody can enter (pytest's tmp_path is private to its owner)."""
    base = Path(tempfile.mkdtemp())
    os.chmod(base, 0o755)
    yield base
    for folder, dirs, _ in os.walk(base):
        for d in dirs:
            os.chmod(os.path.join(folder, d), 0o755)
    shutil.rmtree(base)


def tree_digest(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def test_read_only_runs_dir_or_run_folder_is_one_line_before_anything_is_written(disk_full_run, open_tmp, capsys):
    _, runs = disk_full_run
    shutil.copytree(runs, open_tmp / "runs")
    runs = open_tmp / "runs"
    for folder in (runs, runs / "r", runs / "r/version_0", runs / "r/version_0/checkpoints"):
        os.chmod(folder, 0o555)
    before = tree_digest(runs)
    cases = [  # (runs_dir, resume?, the folder the error names)
        (runs, True, runs / "r/version_0"),  # resume into a read-only run folder
        (runs, False, runs),  # a new run in a read-only runs_dir
        (runs / "new", False, runs),  # a runs_dir to be made inside a read-only folder
    ]
    for runs_dir, resume, named in cases:
        with as_nobody(), pytest.raises(SystemExit) as exc:
            cli.main([*RUN, "--runs_dir", str(runs_dir), *(["--ckpt_path", "last"] if resume else [])])
        err = capsys.readouterr().err
        assert exc.value.code == 2 and "Traceback" not in err, err[-3000:]
        assert err.strip().splitlines()[-1] == (
            f"error: {str(named)!r} is not writable by this user (permission denied or a read-only file system), so "
            f"the run cannot write there: choose another runs_dir or fix its permissions")
    assert tree_digest(runs) == before and not (runs / "new").exists()


def test_failed_checkpoint_write_leaves_the_old_file_and_no_temporary(open_tmp):
    """AtomicCheckpointIO into a folder that turned read-only: CheckpointWriteError naming the checkpoint (EACCES),
    the file there before untouched, nothing else written."""
    folder = open_tmp / "checkpoints"
    folder.mkdir()
    AtomicCheckpointIO().save_checkpoint({"state_dict": {"w": torch.zeros(4)}, "global_step": 1}, folder / "last.ckpt")
    os.chmod(folder, 0o555)
    with as_nobody(), pytest.raises(CheckpointWriteError) as exc:
        AtomicCheckpointIO().save_checkpoint({"state_dict": {"w": torch.ones(4)}, "global_step": 2},
                                             folder / "last.ckpt")
    assert exc.value.errno == errno.EACCES and exc.value.filename == str(folder / "last.ckpt")
    assert torch.load(folder / "last.ckpt", weights_only=True)["global_step"] == 1
    assert [p.name for p in folder.iterdir()] == ["last.ckpt"]
