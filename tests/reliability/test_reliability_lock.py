"""One `vitlab fit` per run folder: of two `--ckpt_path last` resumes of one run started at once, one is refused in one
line naming the folder and the holder's PID (exit 2) and the other goes on undisturbed; a killed holder leaves
no stale lock; two new runs started at once get different version folders."""
import csv
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import torch
from lightning.pytorch.callbacks import Callback
from reliability_helpers import CPU_TRAINER, TINY_MODEL, fashion_mnist_data

from vitlab import cli, run_lock

HERE = Path(__file__).parent
ENV = {**os.environ, "PYTHONPATH": os.pathsep.join([str(HERE), os.environ.get("PYTHONPATH", "")]),
       "OMP_NUM_THREADS": "1", "VITLAB_ALLOWED_CLASSES": "test_reliability_lock"}  # HoldAt, named in a config
RUN = ["fit", *fashion_mnist_data(batch_size=32, train=128, evaluate=32), *TINY_MODEL, *CPU_TRAINER,
       "--model.arch.patch_size", "7", "--trainer.enable_progress_bar", "false", "--last_every_n_steps", "2",
       "--run_name", "r"]


class HoldAt(Callback):
    """At ``step``, touch ``marker`` and wait (at most two minutes) until ``release`` exists: a run holding its folder."""

    def __init__(self, step: int, marker: str, release: str) -> None:
        self.step, self.marker, self.release = step, marker, release

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if trainer.global_step == self.step:
            Path(self.marker).touch()
            deadline = time.monotonic() + 120
            while not Path(self.release).exists() and time.monotonic() < deadline:
                time.sleep(0.05)


def vitlab(runs: Path, *args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "vitlab.cli", *RUN, "--runs_dir", str(runs), *args], env=ENV,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def wait_for(path: Path, proc: subprocess.Popen) -> None:
    deadline = time.monotonic() + 120
    while not path.exists():
        assert proc.poll() is None, proc.communicate()[1][-3000:]
        assert time.monotonic() < deadline, f"{path} never appeared"
        time.sleep(0.05)


def test_two_resumes_at_once_one_is_refused_and_the_other_is_undisturbed(tmp_path, fashion_mnist_available):
    runs, marker, release = tmp_path / "runs", tmp_path / "holding", tmp_path / "release"
    assert cli.main([*RUN, "--runs_dir", str(runs), "--trainer.max_steps", "4"]) == 0
    # the same resume twice at once; whichever locks the folder first waits at step 6 until released
    hold_at = ["--trainer.callbacks+", "test_reliability_lock.HoldAt", "--trainer.callbacks.step", "6",
               "--trainer.callbacks.marker", str(marker), "--trainer.callbacks.release", str(release)]
    procs = [vitlab(runs, "--trainer.max_steps", "8", "--ckpt_path", "last", *hold_at) for _ in range(2)]
    deadline = time.monotonic() + 240
    while all(p.poll() is None for p in procs):
        assert time.monotonic() < deadline, "neither resume was refused"
        time.sleep(0.05)
    second = next(p for p in procs if p.poll() is not None)
    first = next(p for p in procs if p is not second)
    _, err = second.communicate()
    folder = (runs / "r" / "version_0").resolve()
    assert second.returncode == 2, err[-3000:]
    assert err.strip().splitlines()[-1] == (
        f"error: run folder {folder} is in use by another vitlab process (PID {first.pid}): wait for it to end, "
        f"or use another --run_name")
    wait_for(marker, first)
    release.touch()
    _, err = first.communicate(timeout=300)
    assert first.returncode == 0, err[-3000:]
    assert torch.load(folder / "checkpoints/last.ckpt", weights_only=True)["global_step"] == 8
    with open(folder / "metrics.csv", newline="") as f:
        steps = [int(float(r["step"])) for r in csv.DictReader(f) if r.get("train/loss_step")]
    assert steps == list(range(8))  # the whole history, each step once
    assert not (runs / "r" / "version_1").exists()


HOLD = """
import importlib.util, sys, time
from pathlib import Path
spec = importlib.util.spec_from_file_location("run_lock", sys.argv[4])  # alone: no torch to import
run_lock = importlib.util.module_from_spec(spec)
spec.loader.exec_module(run_lock)
print(run_lock.claim_run_folder(Path(sys.argv[1]), None if sys.argv[2] == "new" else int(sys.argv[2])), flush=True)
time.sleep(float(sys.argv[3]))
"""


def hold(root: Path, version: str, seconds: float) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", HOLD, str(root), version, str(seconds), run_lock.__file__], env=ENV,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_a_killed_holder_leaves_no_stale_lock(tmp_path):
    root = tmp_path / "runs" / "r"
    holder = hold(root, "new", 600)
    assert holder.stdout.readline().strip() == "0"
    refused = hold(root, "0", 0)
    assert refused.wait(timeout=60) == 1 and f"(PID {holder.pid})" in refused.stderr.read()
    os.kill(holder.pid, signal.SIGKILL)  # no clean-up runs: the kernel drops the lock with the process
    holder.wait()
    assert (root / "version_0" / ".lock").read_text().strip() == str(holder.pid)  # the file stays, the lock not
    again = hold(root, "0", 0)
    assert again.wait(timeout=60) == 0 and again.stdout.read().strip() == "0"


def test_new_runs_started_at_once_get_different_versions(tmp_path):
    root = tmp_path / "runs" / "r"
    procs = [hold(root, "new", 2) for _ in range(4)]
    versions = sorted(int(p.stdout.readline()) for p in procs)
    for p in procs:
        p.wait(timeout=60)
    assert versions == [0, 1, 2, 3]
