"""Honest stops, as real processes: SIGTERM (pre-emption), SIGINT (Ctrl-C) and SIGUSR1 end `vitlab fit` at the end of
a batch with last.ckpt written and exit status 128 + the signal (never 0), and `--ckpt_path last` finishes the run."""
import signal
import subprocess
import sys
import time

import pytest
import torch

from conftest import FASHION_MNIST_DIR

STEPS_PER_EPOCH = 4096 // 128


def _fit(runs, *extra) -> list[str]:
    return [sys.executable, "-m", "vitlab.cli", "fit", "-c", "configs/quickstart.yaml",
            "--data.init_args.data_dir", FASHION_MNIST_DIR, "--data.init_args.train_subset", "4096",
            "--data.init_args.eval_subset", "256", "--data.init_args.num_workers", "0", "--trainer.max_epochs", "2",
            "--trainer.enable_progress_bar", "false", "--trainer.log_every_n_steps", "2", "--last_every_n_steps", "2", "--runs_dir", str(runs), "--run_name", "sig", *extra]


# SIGTERM (what schedulers and `kill` send) in the default run; SIGINT and SIGUSR1 take the same path (slow tier)
@pytest.mark.parametrize("sig", [signal.SIGTERM, pytest.param(signal.SIGINT, marks=pytest.mark.slow),
                                 pytest.param(signal.SIGUSR1, marks=pytest.mark.slow)])
def test_a_signal_writes_last_ckpt_exits_non_zero_and_the_run_resumes(tmp_path, fashion_mnist_available, sig):
    runs = tmp_path / "runs"
    proc = subprocess.Popen(_fit(runs), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    last = runs / "sig" / "version_0" / "checkpoints" / "last.ckpt"  # first written at step 2: training is on
    deadline = time.time() + 120
    while not last.exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.02)
    proc.send_signal(sig)
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 128 + int(sig), out[-2000:]
    assert f"stopped by {sig.name}" in out
    step = torch.load(last, weights_only=True)["global_step"]
    assert 0 < step < 2 * STEPS_PER_EPOCH
    done = subprocess.run(_fit(runs, "--ckpt_path", "last"), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert torch.load(last, weights_only=True)["global_step"] == 2 * STEPS_PER_EPOCH
    assert not (runs / "sig" / "version_1").exists()  # resumed into its own folder
    # the metrics history survives the resume, in order, each step once
    import csv
    rows = list(csv.DictReader(open(runs / "sig" / "version_0" / "metrics.csv")))
    steps = [int(float(r["step"])) for r in rows if r.get("train/loss_step")]
    assert steps == sorted(set(steps)) and steps[0] == 1 and len(steps) == STEPS_PER_EPOCH  # every 2nd of 64
