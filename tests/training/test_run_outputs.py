"""What a run logs and writes through Lightning's own machinery: throughput (img/s, FLOP/s) during training,
FLOPs in the model summary, predictions written batch by batch (also by two DDP processes)."""
import csv
import os
import subprocess
import sys

import numpy as np
import pytest
from conftest import CPU_TRAINER, FASHION_MNIST_DIR, TINY_MODEL, fashion_mnist_data, latest_run_folder
from lightning.pytorch.utilities.model_summary import ModelSummary
from PIL import Image

from vitlab import cli
from vitlab.models.flops import forward_macs
from vitlab.training import ImageClassifier


# the model of TINY_MODEL with 7x7 patches on Fashion-MNIST (the shapes the CLI links from the data)
TINY_ARCH = dict(embed_dim=32, depth=2, num_heads=2, mlp_ratio=2.0, patch_size=7, img_size=28, in_chans=1,
                 num_classes=10)


def newest(folder):
    return latest_run_folder(folder)


def test_throughput_logged_during_training(tmp_path, fashion_mnist_available):
    runs = tmp_path / "runs"
    assert cli.main(["fit", *fashion_mnist_data(batch_size=16, train=128, evaluate=32), *TINY_MODEL, *CPU_TRAINER,
                     "--model.arch.patch_size", "7", "--trainer.max_epochs", "1", "--runs_dir", str(runs),
                     "--run_name", "tp", "--trainer.enable_progress_bar", "false"]) == 0
    with open(newest(runs / "tp") / "metrics.csv", newline="") as f:
        rows = [r for r in csv.DictReader(f) if r.get("train/device/samples_per_sec")]
    assert len(rows) >= 5  # every logging step after the first (log_every_n_steps 1, 8 steps)
    ips = float(rows[-1]["train/device/samples_per_sec"])
    flops = float(rows[-1]["train/device/flops_per_sec"])
    module = ImageClassifier(arch=TINY_ARCH)
    assert ips > 0 and flops == pytest.approx(ips * 6 * forward_macs(module.cfg), rel=1e-6)


def test_model_summary_counts_flops():
    module = ImageClassifier(arch=TINY_ARCH)
    measured = ModelSummary(module, max_depth=1).total_flops  # Lightning's FLOP counter on example_input_array
    analytic = 2 * forward_macs(module.cfg)
    assert 0.8 * analytic < measured < 1.5 * analytic, (measured, analytic)


def test_two_ddp_processes_write_predictions_in_file_order(tmp_path, fashion_mnist_available):
    runs = tmp_path / "runs"
    common = [*fashion_mnist_data(batch_size=4, train=64, evaluate=16), *TINY_MODEL, *CPU_TRAINER,
              "--model.arch.patch_size", "7", "--runs_dir", str(runs), "--run_name", "pred",
              "--trainer.enable_progress_bar", "false"]
    assert cli.main(["fit", *common, "--trainer.max_epochs", "1"]) == 0
    ckpt = newest(runs / "pred") / "checkpoints" / "last.ckpt"
    from vitlab.data.fashion_mnist import read_idx
    images = read_idx(os.path.join(FASHION_MNIST_DIR, "t10k-images-idx3-ubyte.gz"), ndim=3)[:11]
    (tmp_path / "imgs").mkdir()
    for i, img in enumerate(images):  # 11 images over 2 processes x batches of 4: padding and a ragged batch
        Image.fromarray(np.asarray(img)).save(tmp_path / "imgs" / f"img{i:02d}.png")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    proc = subprocess.run([sys.executable, "-m", "vitlab.cli", "predict", *common, "--ckpt_path", str(ckpt),
                           "--data.predict_dir", str(tmp_path / "imgs"), "--trainer.strategy", "ddp",
                           "--trainer.devices", "2"], env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    folder = newest(runs / "pred")
    with open(folder / "predictions.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [os.path.basename(r["file"]) for r in rows] == [f"img{i:02d}.png" for i in range(11)]
    assert not list(folder.glob("predictions.csv.*")), "part files left behind"
    # the same rows as one process writes
    assert cli.main(["predict", *common, "--ckpt_path", str(ckpt), "--data.predict_dir", str(tmp_path / "imgs")]) == 0
    with open(newest(runs / "pred") / "predictions.csv", newline="") as f:
        single = list(csv.DictReader(f))
    assert [(r["file"], r["class1"]) for r in single] == [(r["file"], r["class1"]) for r in rows]
    assert [float(r["prob1"]) for r in single] == pytest.approx([float(r["prob1"]) for r in rows], abs=2e-4)


def test_checkpoints_to_a_remote_url_and_resume_from_it(tmp_path, fashion_mnist_available):
    """Checkpoints to an fsspec URL (memory://, as s3:// would) go through Lightning's checkpoint IO, still
    refused when not finite; a fit resumes from the URL. Local ones stay atomic (tests/reliability)."""
    import fsspec
    import torch

    from vitlab.training.checkpointing import AtomicCheckpointIO, NonFiniteCheckpointError

    fs = fsspec.filesystem("memory")
    runs = tmp_path / "runs"
    common = [*fashion_mnist_data(batch_size=16, train=64, evaluate=32), *TINY_MODEL, *CPU_TRAINER,
              "--model.arch.patch_size", "7", "--runs_dir", str(runs), "--run_name", "remote",
              "--trainer.enable_progress_bar", "false", "--checkpoint.dirpath", "memory://vitlab-test/ckpts"]
    assert cli.main(["fit", *common, "--trainer.max_epochs", "1"]) == 0
    files = fs.ls("/vitlab-test/ckpts", detail=False)
    assert any(f.endswith("last.ckpt") for f in files) and any("val_acc1" in f for f in files), files
    assert cli.main(["fit", *common, "--trainer.max_epochs", "2",
                     "--ckpt_path", "memory://vitlab-test/ckpts/last.ckpt"]) == 0
    with fs.open("/vitlab-test/ckpts/last.ckpt", "rb") as f:
        assert torch.load(f, weights_only=True, map_location="cpu")["epoch"] == 1  # the resumed second epoch
    with pytest.raises(NonFiniteCheckpointError, match="refusing to write memory://"):
        AtomicCheckpointIO().save_checkpoint({"state_dict": {"w": torch.tensor([float("nan")])}},
                                             "memory://vitlab-test/bad.ckpt")
    assert not fs.exists("/vitlab-test/bad.ckpt")
    fs.rm("/vitlab-test", recursive=True)
