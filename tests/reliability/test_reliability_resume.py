"""Kill -9 in the middle of an epoch, `vitlab fit --ckpt_path last`, and end bit-for-bit where an uninterrupted
run ends: same weights, optimizer state and data order. A kill while a checkpoint is written never leaves a
truncated one."""
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from reliability_helpers import CPU_TRAINER, TINY_MODEL, fashion_mnist_data

from vitlab.training.checkpointing import AtomicCheckpointIO

HERE = Path(__file__).parent
# 256 images / 32 = 8 steps an epoch, 2 epochs; dropout-like drop path, mixup (numpy) and augmentation (torch)
# all draw random numbers, so a resume that lost any random state would differ
RUN = ["fit", *fashion_mnist_data(batch_size=32, train=256, evaluate=64), *TINY_MODEL, *CPU_TRAINER,
       "--data.augment", "true", "--model.arch.patch_size", "7", "--model.arch.drop_path_rate", "0.1",
       "--model.regularization.mixup", "0.5", "--trainer.max_epochs", "2", "--trainer.deterministic", "true",
       "--trainer.enable_progress_bar", "false", "--last_every_n_steps", "3", "--run_name", "r"]


def vitlab(runs: Path, *args: str, on_device: bool = False, record: Path | None = None,
           stall: tuple[int, Path] | None = None,
           wait: bool = True) -> subprocess.Popen:
    callbacks = []
    if record is not None:
        callbacks += ["--trainer.callbacks+", "reliability_helpers.RecordBatches",
                      "--trainer.callbacks.path", str(record)]
    if stall is not None:
        callbacks += ["--trainer.callbacks+", "reliability_helpers.StallAt",
                      "--trainer.callbacks.step", str(stall[0]), "--trainer.callbacks.marker", str(stall[1])]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(HERE), os.environ.get("PYTHONPATH", "")]),
           "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "vitlab.cli", *RUN, "--runs_dir", str(runs), *args, *callbacks,
                             "--data.on_device", str(on_device).lower()],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    if wait:
        out, _ = proc.communicate(timeout=300)
        assert proc.returncode == 0, out[-3000:]
    return proc


def steps(record: Path) -> dict[int, str]:
    lines = [line.split() for line in record.read_text().splitlines()]
    return {int(step): digest for step, digest in lines}  # a redone step keeps its last record


@pytest.mark.parametrize("on_device", [False, True], ids=["per-sample-loader", "on-device-loader"])
def test_kill_mid_epoch_then_resume_last_is_bitwise_equal(tmp_path, fashion_mnist_available, on_device):
    # 1. uninterrupted reference
    ref_record = tmp_path / "ref.txt"
    vitlab(tmp_path / "ref", record=ref_record, on_device=on_device)
    reference = torch.load(tmp_path / "ref/r/version_0/checkpoints/last.ckpt", weights_only=True)
    assert reference["global_step"] == 16

    # 2. the same run, killed at step 11 (epoch 1, batch 3); last.ckpt was written at step 9 (every 3 steps)
    runs, record, marker = tmp_path / "runs", tmp_path / "run.txt", tmp_path / "stalled"
    proc = vitlab(runs, record=record, stall=(11, marker), wait=False, on_device=on_device)
    deadline = time.monotonic() + 240
    while not marker.exists():
        assert proc.poll() is None, proc.stdout.read()[-3000:]
        assert time.monotonic() < deadline, "the run never reached step 11"
        time.sleep(0.1)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    last = runs / "r/version_0/checkpoints/last.ckpt"
    interrupted = torch.load(last, weights_only=True)
    assert interrupted["global_step"] == 9 and interrupted["epoch"] == 1  # mid-epoch
    assert interrupted["loops"]["fit_loop"]["state_dict"]["combined_loader"] == [
        {"epoch": 1, "batches": 1, "seed": 0}]

    # 3. resume in a new process: into the same run folder, to the same end
    vitlab(runs, "--ckpt_path", "last", record=record, on_device=on_device)
    assert not (runs / "r/version_1").exists(), "the resumed run should continue in version_0"
    resumed = torch.load(last, weights_only=True)
    assert resumed["global_step"] == 16
    assert resumed["state_dict"].keys() == reference["state_dict"].keys()
    for key, value in reference["state_dict"].items():
        assert torch.equal(resumed["state_dict"][key], value), key
    for key, state in reference["optimizer_states"][0]["state"].items():
        for name, value in state.items():
            assert torch.equal(resumed["optimizer_states"][0]["state"][key][name], value), (key, name)
    assert steps(record) == steps(ref_record)  # the same batches at the same steps, resumed ones included
    best = list((runs / "r/version_0/checkpoints").glob("epoch*-val_acc1*.ckpt"))
    assert len(best) == 1, best  # the best checkpoint of before and after the kill: still one file


WRITER = """
import io, sys, time, torch
from vitlab.training.checkpointing import AtomicCheckpointIO
save, stall_at = torch.save, int(sys.argv[2])

def stalling_save(obj, f):  # write half the bytes, say so, and wait to be killed
    buf = io.BytesIO()
    save(obj, buf)
    data = buf.getvalue()
    f.write(data[: len(data) // 2])
    f.flush()
    print("mid-write", flush=True)
    time.sleep(600)

for i in range(3):
    if i == stall_at:
        torch.save = stalling_save
    AtomicCheckpointIO().save_checkpoint({"state_dict": {"w": torch.full((1_000_000,), float(i))}, "i": i}, sys.argv[1])
"""


@pytest.mark.parametrize("stall_at", [0, 2])
def test_kill_while_writing_never_leaves_a_truncated_checkpoint(tmp_path, stall_at):
    """kill -9 a process half-way through writing a checkpoint (its first, or over an older one): last.ckpt is
    absent or the previous whole checkpoint, never half of the new one; the next save clears the leftovers."""
    target = tmp_path / "ckpts" / "last.ckpt"
    proc = subprocess.Popen([sys.executable, "-c", WRITER, str(target), str(stall_at)], stdout=subprocess.PIPE,
                            text=True)
    assert proc.stdout.readline().strip() == "mid-write"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert len(list(target.parent.glob(".last.ckpt.tmp*"))) == 1  # the half-written file, under another name
    if stall_at == 0:
        assert not target.exists()
    else:
        ckpt = torch.load(target, weights_only=True)  # whole: a truncated zip would raise here
        assert ckpt["i"] == stall_at - 1 and (ckpt["state_dict"]["w"] == ckpt["i"]).all()
    AtomicCheckpointIO().save_checkpoint({"state_dict": {}}, target)
    assert [p.name for p in target.parent.iterdir()] == ["last.ckpt"]


def test_interrupted_write_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    """In process: torch.save dies half-way; the old file is untouched and no temporary file remains."""
    io, target = AtomicCheckpointIO(), tmp_path / "best.ckpt"
    io.save_checkpoint({"state_dict": {"w": torch.ones(3)}}, target)
    before = target.read_bytes()

    def dies_half_way(obj, f):
        f.write(b"PK\x03\x04 half a zip")
        raise KeyboardInterrupt

    monkeypatch.setattr(torch, "save", dies_half_way)
    with pytest.raises(KeyboardInterrupt):
        io.save_checkpoint({"state_dict": {"w": torch.zeros(3)}}, target)
    assert target.read_bytes() == before and os.listdir(tmp_path) == ["best.ckpt"]
