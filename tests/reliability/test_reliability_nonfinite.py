"""A NaN loss stops training with a message naming the step, or is skipped when configured; a good best
checkpoint is never replaced by a broken one, and no checkpoint with non-finite weights is ever written."""
import csv
from pathlib import Path

import pytest
import torch
from reliability_helpers import CPU_TRAINER, TINY_MODEL, fashion_mnist_data

from vitlab import cli
from vitlab.training.checkpointing import AtomicCheckpointIO, NonFiniteCheckpointError
from vitlab.training.module import ImageClassifier

# 64 images / 16 = 4 steps an epoch; the best checkpoint of epoch 0 exists when step 6 (epoch 1) goes wrong
RUN = ["fit", *fashion_mnist_data(batch_size=16, train=64, evaluate=32), *TINY_MODEL, *CPU_TRAINER,
       "--model.arch.patch_size", "7", "--trainer.max_epochs", "2", "--trainer.enable_progress_bar", "false",
       "--trainer.num_sanity_val_steps", "0", "--run_name", "nan"]
BAD_STEP = 6


@pytest.fixture
def inf_images_at_bad_step(monkeypatch):
    """Feed images full of inf at step BAD_STEP (a real NaN loss); record the checkpoints then and after."""
    seen = {}
    original = ImageClassifier.training_step

    def training_step(self, batch, batch_idx):
        step = self.trainer.global_step
        if step in (BAD_STEP, BAD_STEP + 1):
            seen[step] = {k: v.clone() for k, v in self.model.state_dict().items()}
        if step == BAD_STEP and "best" not in seen:
            folder = self.trainer.checkpoint_callback.dirpath
            seen["best"] = {p.name: p.read_bytes() for p in sorted(Path(folder).glob("epoch*"))}
            x, y = batch
            batch = (torch.full_like(x, float("inf")), y)
        return original(self, batch, batch_idx)

    monkeypatch.setattr(ImageClassifier, "training_step", training_step)
    return seen


def checkpoints(runs):
    return sorted((runs / "nan" / "version_0" / "checkpoints").glob("*.ckpt"))


def test_nan_loss_stops_naming_the_step_and_keeps_the_best_checkpoint(tmp_path, capsys, inf_images_at_bad_step,
                                                                      fashion_mnist_available):
    runs = tmp_path / "runs"
    with pytest.raises(SystemExit) as exc:
        cli.main([*RUN, "--runs_dir", str(runs)])
    assert exc.value.code == 1
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("vitlab fit: error: step 6 (epoch 1, batch 2): training loss is nan"), err
    assert "model.nonfinite: skip" in err and "Traceback" not in err
    best_before = inf_images_at_bad_step["best"]
    assert len(best_before) == 1
    for path in checkpoints(runs):
        if path.name in best_before:
            assert path.read_bytes() == best_before[path.name], f"{path.name} was rewritten"
        state = torch.load(path, weights_only=True)["state_dict"]
        assert all(torch.isfinite(v).all() for v in state.values() if v.is_floating_point()), path.name


def test_nan_loss_skipped_when_configured(tmp_path, inf_images_at_bad_step, fashion_mnist_available):
    runs = tmp_path / "runs"
    with pytest.warns(UserWarning, match=r"step 6 \(epoch 1, batch 2\): training loss is nan; step skipped"):
        cli.main([*RUN, "--runs_dir", str(runs), "--model.nonfinite", "skip"])
    seen = inf_images_at_bad_step
    for key, value in seen[BAD_STEP].items():  # the skipped step changed no weight
        assert torch.equal(seen[BAD_STEP + 1][key], value), key
    last = torch.load(runs / "nan/version_0/checkpoints/last.ckpt", weights_only=True)
    assert last["global_step"] == 8 and last["skipped_steps"] == 1
    for path in checkpoints(runs):
        state = torch.load(path, weights_only=True)["state_dict"]
        assert all(torch.isfinite(v).all() for v in state.values() if v.is_floating_point()), path.name
    with open(runs / "nan/version_0/metrics.csv", newline="") as f:
        logged = [row["train/skipped_steps"] for row in csv.DictReader(f) if row.get("train/skipped_steps")]
    assert logged and {float(v) for v in logged} == {1.0}  # the running count, logged from the skipped step on


def test_skip_gives_up_when_every_step_is_nan(tmp_path, capsys, monkeypatch, fashion_mnist_available):
    monkeypatch.setattr("vitlab.training.module.MAX_CONSECUTIVE_SKIPS", 3)
    monkeypatch.setattr(torch.nn.CrossEntropyLoss, "forward", lambda self, logits, target: logits.sum() * float("nan"))
    with pytest.raises(SystemExit):
        cli.main([*RUN, "--runs_dir", str(tmp_path), "--model.nonfinite", "skip"])
    err = capsys.readouterr().err
    assert "step 2 (epoch 0, batch 2): training loss is nan; 3 steps in a row were non-finite" in err


def test_checkpoint_with_nonfinite_weights_is_never_written(tmp_path):
    io, path = AtomicCheckpointIO(), tmp_path / "best.ckpt"
    io.save_checkpoint({"state_dict": {"model.w": torch.ones(4)}, "global_step": 3}, path)
    before = path.read_bytes()
    broken = {"state_dict": {"model.w": torch.tensor([1.0, float("inf"), 0.0, 0.0])}, "global_step": 9, "epoch": 2}
    with pytest.raises(NonFiniteCheckpointError, match=r"refusing to write .*best.ckpt: non-finite weights in "
                                                       r"\['model.w'\] at step 9, epoch 2"):
        io.save_checkpoint(broken, path)
    assert path.read_bytes() == before
