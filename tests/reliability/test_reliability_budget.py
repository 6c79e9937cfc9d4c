"""Every way a fit ends resumes with a larger budget: a run ended by max_steps at an epoch's end, by max_epochs or by
max_time, resumed with `--ckpt_path last` and more of it, trains the extra steps into the same run folder, logs them
under their own step numbers and follows the schedule laid out for the new total (warmup not repeated). A resume whose
budget is already reached says "nothing to train" and touches nothing."""
import csv
import math
import re

import pytest
import torch
from reliability_helpers import CPU_TRAINER, TINY_MODEL, fashion_mnist_data

from vitlab import cli
from vitlab.training.optim import warmup_cosine

STEPS_PER_EPOCH = 4  # 128 images / 32
RUN = ["fit", *fashion_mnist_data(batch_size=32, train=128, evaluate=64), *TINY_MODEL, *CPU_TRAINER,
       "--model.arch.patch_size", "7", "--trainer.enable_progress_bar", "false", "--run_name", "r"]


def fit(runs, *args) -> None:
    assert cli.main([*RUN, "--runs_dir", str(runs), *args]) == 0


def rows(runs) -> list[dict]:
    with open(runs / "r/version_0/metrics.csv", newline="") as f:
        return list(csv.DictReader(f))


def logged_steps(runs, key: str) -> list[int]:
    return [int(float(r["step"])) for r in rows(runs) if r.get(key)]


def last(runs) -> dict:
    return torch.load(runs / "r/version_0/checkpoints/last.ckpt", weights_only=True)


def nothing_to_train(runs, capsys, *args) -> str:
    """Resume with a budget already reached: exit 0, one line saying so, the run folder untouched."""
    folder = runs / "r/version_0"
    before = {p.name: p.read_bytes() for p in [folder / "metrics.csv", *folder.glob("checkpoints/*.ckpt")]}
    capsys.readouterr()
    fit(runs, "--ckpt_path", "last", *args)
    err = capsys.readouterr().err
    assert {p.name: p.read_bytes() for p in [folder / "metrics.csv", *folder.glob("checkpoints/*.ckpt")]} == before
    assert not (runs / "r/version_1").exists()
    line = next(line for line in err.splitlines() if "nothing to train" in line)
    assert line.startswith("vitlab fit: nothing to train: ") and "last.ckpt" in line
    return line


def test_max_steps_at_an_epoch_end_resumes_with_a_larger_max_steps(tmp_path, fashion_mnist_available, capsys):
    runs = tmp_path / "runs"
    fit(runs, "--trainer.max_steps", "8")  # ends exactly at the end of epoch 2
    assert last(runs)["global_step"] == 8
    fit(runs, "--ckpt_path", "last", "--trainer.max_steps", "12")
    assert last(runs)["global_step"] == 12 and not (runs / "r/version_1").exists()
    # every step once, the resumed ones at their own numbers (Lightning alone logs them one step late: 9..12)
    assert logged_steps(runs, "train/loss_step") == list(range(12))
    assert logged_steps(runs, "val/acc1") == [3, 7, 11]
    # the schedule is laid out again over 12 steps; warmup (2 steps = 0.5 epoch) is not repeated
    lr = {int(float(r["step"])): float(r["lr-AdamW/decay"]) for r in rows(runs) if r.get("lr-AdamW/decay")}
    peak, min_ratio = lr[1], 1e-6 / lr[1]  # schedule.min_lr 1e-6
    for step in range(8, 12):
        assert math.isclose(lr[step], peak * warmup_cosine(step, 2, 12, min_ratio), rel_tol=1e-5), step
    line = nothing_to_train(runs, capsys, "--trainer.max_steps", "12")
    assert "step 12" in line and "trainer.max_steps is 12" in line


def test_max_epochs_resumes_with_a_larger_max_epochs(tmp_path, fashion_mnist_available, capsys):
    runs = tmp_path / "runs"
    fit(runs, "--trainer.max_epochs", "1")
    fit(runs, "--ckpt_path", "last", "--trainer.max_epochs", "2")
    assert last(runs)["global_step"] == 2 * STEPS_PER_EPOCH
    assert logged_steps(runs, "train/loss_step") == list(range(2 * STEPS_PER_EPOCH))
    assert logged_steps(runs, "val/acc1") == [3, 7]
    line = nothing_to_train(runs, capsys, "--trainer.max_epochs", "2")
    assert "after 2 epoch(s)" in line and "trainer.max_epochs is 2" in line


def test_max_time_resumes_with_more_time(tmp_path, fashion_mnist_available, capsys):
    runs = tmp_path / "runs"
    budget = ["--trainer.max_epochs", "1000"]  # never reached: the time ends these runs
    fit(runs, *budget, "--trainer.max_time", "00:00:00:02")
    first = last(runs)["global_step"]
    assert 0 < first < 1000 * STEPS_PER_EPOCH

    def elapsed() -> float:
        return next(v for k, v in last(runs)["callbacks"].items() if k.startswith("Timer"))["time_elapsed"]["train"]

    more = int(elapsed()) + 3  # 3 s more than the first run took (a loaded machine may take seconds per step)
    more_time = f"00:00:{more // 60:02d}:{more % 60:02d}"
    fit(runs, "--ckpt_path", "last", *budget, "--trainer.max_time", more_time)
    second = last(runs)["global_step"]
    assert second > first
    assert more <= elapsed() < more + 10  # the time before the resume counts against the new budget
    assert logged_steps(runs, "train/loss_step") == list(range(second))
    line = nothing_to_train(runs, capsys, *budget, "--trainer.max_time", more_time)
    assert re.search(rf"trainer\.max_time is {more} s", line)
