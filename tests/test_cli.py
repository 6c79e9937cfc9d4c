"""The `vitlab` command end to end: fit -> validate -> test -> predict through ``vitlab.cli.main`` on real
(small) data, what a run leaves on disk, clear errors, and DDP with two CPU processes."""
import csv
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import CPU_TRAINER, FASHION_MNIST_DIR, TINY_MODEL, fashion_mnist_data, latest_run_folder
from PIL import Image

from vitlab import cli
from vitlab.training.callbacks import read_epoch_metrics


def run_folder(runs: Path, name: str) -> Path:
    return latest_run_folder(runs / name)


def last_value(folder: Path, key: str) -> float:
    values = read_epoch_metrics(str(folder / "metrics.csv"))[key]
    return values[max(values)]


def check_fit_run(folder: Path, num_epochs: int) -> Path:
    """What a fit leaves in its run folder; returns the best checkpoint."""
    for name in ("config.yaml", "metrics.csv", "hparams.yaml", "learning_curves.png", "confusion_matrix.png",
                 "checkpoints/last.ckpt"):
        assert (folder / name).is_file(), f"{name} missing in {folder}: {sorted(os.listdir(folder))}"
    assert list(folder.glob("events.out.tfevents.*")), "no TensorBoard events"
    best = [p for p in (folder / "checkpoints").glob("epoch*-val_acc1*.ckpt")]
    assert len(best) == 1, best
    metrics = read_epoch_metrics(str(folder / "metrics.csv"))
    for key in ("train/loss", "train/acc1", "val/loss", "val/acc1"):
        assert sorted(metrics[key]) == list(range(num_epochs)), key
    assert all(0.0 <= v <= 1.0 for v in metrics["val/acc1"].values())
    with open(folder / "metrics.csv") as f:
        header = next(csv.reader(f))
    assert "train/loss_step" in header
    assert {"lr-AdamW/decay", "lr-AdamW/no_decay"} <= set(header), "LearningRateMonitor did not log"
    return best[0]


def write_predict_folder(folder: Path, images: list[np.ndarray], mode: str) -> None:
    folder.mkdir()
    for i, img in enumerate(images):
        Image.fromarray(img).convert(mode).save(folder / f"img{i}.png")
    (folder / "broken.png").write_bytes(b"this is not a png")  # dropped with a warning


def read_predictions(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_fashion_mnist_fit_validate_test_predict(tmp_path, fashion_mnist_available, capsys):
    runs = tmp_path / "runs"
    common = [*fashion_mnist_data(), *TINY_MODEL, *CPU_TRAINER, "--runs_dir", str(runs), "--run_name", "fm"]
    assert cli.main(["fit", *common, "--model.arch.patch_size", "7", "--trainer.max_epochs", "2"]) == 0
    fit_dir = run_folder(runs, "fm")
    best = check_fit_run(fit_dir, num_epochs=2)
    config = fit_dir / "config.yaml"
    text = config.read_text()
    assert "patch_size: 7" in text and "class_path: vitlab.data.FashionMNISTDataModule" in text
    hparams = torch.load(fit_dir / "checkpoints" / "last.ckpt", weights_only=True)["hyper_parameters"]
    arch = hparams["arch"]
    assert (arch["num_classes"], arch["in_chans"], arch["img_size"]) == (10, 1, 28)  # linked from data
    val_acc = last_value(fit_dir, "val/acc1")

    # validate the last checkpoint from the saved config: the same val/acc1 as logged at the end of fit
    last = fit_dir / "checkpoints" / "last.ckpt"
    assert cli.main(["validate", "-c", str(config), "--ckpt_path", str(last)]) == 0
    val_dir = run_folder(runs, "fm")
    assert val_dir == fit_dir / "validate"  # next to the run it evaluates
    assert last_value(val_dir, "val/acc1") == pytest.approx(val_acc, abs=1e-6)

    assert cli.main(["test", "-c", str(config), "--ckpt_path", "best"]) == 0  # the newest run's best checkpoint
    test_dir = run_folder(runs, "fm")
    assert test_dir == fit_dir / "test"
    metrics = read_epoch_metrics(str(test_dir / "metrics.csv"))
    assert 0.0 <= last_value(test_dir, "test/acc1") <= last_value(test_dir, "test/acc5") <= 1.0
    assert "test/loss" in metrics
    # an evaluation setting on the command line wins over the checkpoint's hyperparameters (Lightning's CLI
    # would otherwise restore tta="none" from the checkpoint)
    assert cli.main(["test", "-c", str(config), "--ckpt_path", "best", "--model.evaluation.tta", "flip"]) == 0
    flip_dir = run_folder(runs, "fm")
    assert flip_dir == fit_dir / "test_1"  # a second test of the run: a new folder, the first one kept
    assert "tta: flip" in (flip_dir / "config.yaml").read_text()
    assert last_value(flip_dir, "test/loss") != pytest.approx(last_value(test_dir, "test/loss"), abs=1e-6)

    # predict a folder of PNGs (one broken) with class names
    from vitlab.data.fashion_mnist import read_idx
    images = read_idx(os.path.join(FASHION_MNIST_DIR, "t10k-images-idx3-ubyte.gz"), ndim=3)[:5]
    write_predict_folder(tmp_path / "pred", list(images), "L")
    capsys.readouterr()
    assert cli.main(["predict", "-c", str(config), "--ckpt_path", str(best),
                     "--data.predict_dir", str(tmp_path / "pred")]) == 0
    out = capsys.readouterr().out
    assert run_folder(runs, "fm") == fit_dir / "predict"
    rows = read_predictions(fit_dir / "predict" / "predictions.csv")
    assert [os.path.basename(r["file"]) for r in rows] == [f"img{i}.png" for i in range(5)]
    from vitlab.data.stats import FASHION_MNIST_CLASSES
    for row in rows:
        assert row["class1"] in FASHION_MNIST_CLASSES
        assert FASHION_MNIST_CLASSES[int(row["class_id1"])] == row["class1"]
        probs = [float(row[f"prob{k}"]) for k in range(1, 6)]
        assert probs == sorted(probs, reverse=True) and 0 < sum(probs) <= 1.0001
    assert "img0.png" in out and "prob1" in out  # the printed table


def test_cifar10_files_cycle(tmp_path, cifar_root):
    runs = tmp_path / "runs"
    data = ["--data", "CIFAR10DataModule", "--data.data_dir", str(cifar_root), "--data.batch_size", "16",
            "--data.num_workers", "0", "--data.val_split", "16"]
    common = [*data, *TINY_MODEL, *CPU_TRAINER, "--runs_dir", str(runs), "--run_name", "c10"]
    assert cli.main(["fit", *common, "--model.arch.patch_size", "8", "--model.arch.tokenizer", "conv",
                     "--trainer.max_epochs", "1"]) == 0
    fit_dir = run_folder(runs, "c10")
    best = check_fit_run(fit_dir, num_epochs=1)
    assert "tokenizer: conv" in (fit_dir / "config.yaml").read_text()
    config = str(fit_dir / "config.yaml")
    assert cli.main(["test", "-c", config, "--ckpt_path", str(best)]) == 0
    assert 0.0 <= last_value(run_folder(runs, "c10"), "test/acc1") <= 1.0
    rng = np.random.default_rng(0)
    write_predict_folder(tmp_path / "pred", [rng.integers(0, 256, (32, 32, 3), dtype=np.uint8) for _ in range(3)],
                         "RGB")
    assert cli.main(["predict", "-c", config, "--ckpt_path", str(best),
                     "--data.predict_dir", str(tmp_path / "pred")]) == 0
    rows = read_predictions(run_folder(runs, "c10") / "predictions.csv")
    assert len(rows) == 3 and rows[0]["class1"] in ("airplane", "automobile", "bird", "cat", "deer", "dog",
                                                     "frog", "horse", "ship", "truck")


def test_image_folder_cycle(tmp_path, image_folder_root):
    runs = tmp_path / "runs"
    data = ["--data", "ImageFolderDataModule", "--data.data_dir", str(image_folder_root), "--data.img_size", "32",
            "--data.batch_size", "8", "--data.num_workers", "0"]
    common = [*data, *TINY_MODEL, *CPU_TRAINER, "--runs_dir", str(runs), "--run_name", "tree"]
    assert cli.main(["fit", *common, "--model.arch.tokenizer", "cct", "--model.arch.pool", "seq",
                     "--model.arch.tokenizer_options", "{layers: 2}",
                     "--trainer.max_epochs", "1"]) == 0
    fit_dir = run_folder(runs, "tree")
    best = check_fit_run(fit_dir, num_epochs=1)
    metrics = read_epoch_metrics(str(fit_dir / "metrics.csv"))
    assert "val/acc5" not in metrics  # 3 classes: top-5 would always be 1
    assert cli.main(["predict", "-c", str(fit_dir / "config.yaml"), "--ckpt_path", str(best),
                     "--data.predict_dir", str(image_folder_root / "val" / "fox")]) == 0
    rows = read_predictions(run_folder(runs, "tree") / "predictions.csv")
    assert len(rows) == 4 and {r["class1"] for r in rows} <= {"cat", "dog", "fox"}
    assert "prob3" in rows[0] and "prob4" not in rows[0]  # top-k capped at the number of classes


def one_line_error(capsys, args: list[str]) -> str:
    with pytest.raises(SystemExit) as exc:
        cli.main(args)
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return err


def test_unknown_key_is_a_one_line_error(capsys):
    err = one_line_error(capsys, ["fit", "--data", "FashionMNISTDataModule", "--model.bogus_key", "1"])
    assert "bogus_key" in err


def test_unknown_key_in_config_file(tmp_path, capsys):
    config = tmp_path / "bad.yaml"
    config.write_text("model:\n  preset: vit_micro_patch4_28\n  wieght_decay: 0.1\n")
    err = one_line_error(capsys, ["fit", "--data", "FashionMNISTDataModule", "-c", str(config)])
    assert "wieght_decay" in err


@pytest.mark.parametrize("key, value, named", [
    ("model.arch.tokenizer", "bogus", "unknown tokenizer 'bogus'; choose one of ['patch', 'conv', 'cct'"),  # registered
    ("model.preset", "vit_huge", "model.preset"), ("model.arch.pool", "max", "model.arch.pool")])
def test_bad_choice_names_the_value(capsys, key, value, named):
    err = one_line_error(capsys, ["fit", "--data", "FashionMNISTDataModule", f"--{key}", value])
    assert value in err and named in err


def test_print_config_shows_linked_and_defaults(capsys):
    with pytest.raises(SystemExit) as exc:
        cli.main(["fit", "--data", "FashionMNISTDataModule", "--model.preset", "vit_micro_conv4_28", "--print_config"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    assert "preset: vit_micro_conv4_28" in out and "monitor: val/acc1" in out and "runs_dir: runs" in out


def test_best_or_last_without_a_run_names_where_it_looked(tmp_path, capsys):
    err = one_line_error(capsys, ["test", "--data", "FashionMNISTDataModule", "--runs_dir", str(tmp_path),
                                  "--run_name", "none", "--ckpt_path", "best"])
    assert "no best checkpoint under" in err and str(tmp_path) in err


def test_tool_subcommands_are_dispatched_before_lightning(monkeypatch):
    calls = []
    monkeypatch.setitem(cli.TOOLS, "hello", lambda argv: calls.append(argv) or 3)
    assert cli.main(["hello", "--x", "1"]) == 3
    assert calls == [["--x", "1"]]


@pytest.mark.parametrize("on_device", [False, True], ids=["per-sample-loader", "on-device-loader"])
def test_ddp_two_cpu_processes_log_metrics_over_both(tmp_path, fashion_mnist_available, on_device):
    """Two gloo processes: val/acc1 logged by DDP equals a one-process evaluation of the saved weights on the
    same 96 validation images (each process saw 48), and the lr is scaled by the global batch of 2 x 16. With
    data.on_device each process builds its own shard of the cached set."""
    runs = tmp_path / "runs"
    common = [*fashion_mnist_data(batch_size=16, train=128, evaluate=96), *TINY_MODEL, *CPU_TRAINER,
              "--data.on_device", str(on_device).lower(),
              "--model.arch.patch_size", "7", "--model.optim.base_lr", "0.01", "--model.schedule.warmup_epochs", "0",
              "--model.schedule.min_lr", "0", "--runs_dir", str(runs), "--run_name", "ddp"]
    ddp = ["--trainer.strategy", "ddp", "--trainer.devices", "2", "--trainer.max_epochs", "1",
           "--trainer.enable_progress_bar", "false"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    proc = subprocess.run([sys.executable, "-m", "vitlab.cli", "fit", *common, *ddp], env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    fit_dir = run_folder(runs, "ddp")
    check_fit_run(fit_dir, num_epochs=1)
    with open(fit_dir / "metrics.csv") as f:
        first_lr = next(float(r["lr-AdamW/decay"]) for r in csv.DictReader(f) if r.get("lr-AdamW/decay"))
    assert first_lr == pytest.approx(0.01 * 32 / 512)
    assert (fit_dir / "config.yaml").is_file() and len(list(runs.joinpath("ddp").iterdir())) == 1

    # the same checkpoint, evaluated by one process over the whole validation set
    ddp_acc = last_value(fit_dir, "val/acc1")
    ddp_loss = last_value(fit_dir, "val/loss")
    assert cli.main(["validate", *common, "--ckpt_path", str(fit_dir / "checkpoints" / "last.ckpt")]) == 0
    one_dir = run_folder(runs, "ddp")
    assert last_value(one_dir, "val/acc1") == pytest.approx(ddp_acc, abs=1e-6)
    assert last_value(one_dir, "val/loss") == pytest.approx(ddp_loss, rel=1e-4)
    # the halves each process validated (DistributedSampler: every other sample) give other accuracies, so
    # the equality above needs both processes' data
    from vitlab.data import FashionMNISTDataModule
    from vitlab.training import ImageClassifier
    model = ImageClassifier.load_from_checkpoint(fit_dir / "checkpoints" / "last.ckpt").eval()
    dm = FashionMNISTDataModule(data_dir=FASHION_MNIST_DIR, batch_size=96, num_workers=0, val_split=1000,
                                train_subset=128, eval_subset=96)
    dm.setup("validate")
    x, y = next(iter(dm.val_dataloader()))
    with torch.no_grad():
        correct = (model(x).argmax(-1) == y).float()
    assert correct.mean().item() == pytest.approx(ddp_acc, abs=1e-6)
    halves = [correct[0::2].mean().item(), correct[1::2].mean().item()]
    if halves[0] != halves[1]:
        assert all(h != pytest.approx(ddp_acc, abs=1e-6) for h in halves)


def test_bf16_on_a_cpu_without_bf16_units_warns_and_trains_in_fp32(tmp_path, fashion_mnist_available, monkeypatch):
    from vitlab import runtime as machine
    monkeypatch.setattr(machine, "cpu_has_bf16", lambda: False)
    runs = tmp_path / "runs"
    args = ["fit", *fashion_mnist_data(batch_size=8, train=16, evaluate=8), *TINY_MODEL, *CPU_TRAINER,
            "--model.arch.patch_size", "7", "--trainer.precision", "bf16-mixed", "--trainer.max_epochs", "1",
            "--runs_dir", str(runs), "--run_name", "p"]
    with pytest.warns(UserWarning, match=r"trainer.precision=bf16-mixed asked on the CPU, but this CPU \(.*\) has "
                                         r"no bf16 units: training in fp32 \(32-true\) instead"):
        assert cli.main(args) == 0
    assert "precision: 32-true" in (run_folder(runs, "p") / "config.yaml").read_text()


def test_trainer_precision_keeps_what_the_machine_runs_well(monkeypatch):
    from vitlab import runtime as machine
    monkeypatch.setattr(machine, "cpu_has_bf16", lambda: True)
    monkeypatch.setattr(machine, "cpu_bf16_is_fast", lambda: False)
    precision, note = machine.trainer_precision("bf16-true", "cpu")
    assert precision == "32-true" and "slower than fp32 (emulated)" in note
    monkeypatch.setattr(machine, "cpu_bf16_is_fast", lambda: True)
    assert machine.trainer_precision("bf16-mixed", "cpu") == ("bf16-mixed", None)  # real bf16 units: as asked
    assert machine.trainer_precision("32-true", "cpu") == ("32-true", None)
    assert machine.trainer_precision("bf16-mixed", "gpu") == ("bf16-mixed", None)


def test_checkpointing_off_trains_and_writes_no_checkpoint(tmp_path, fashion_mnist_available):
    """`trainer.enable_checkpointing: false` (Lightning's switch) turns vitlab's checkpoint callbacks off too,
    instead of Lightning refusing the ModelCheckpoint that vitlab adds."""
    runs = tmp_path / "runs"
    args = ["fit", *fashion_mnist_data(batch_size=8, train=16, evaluate=8), *TINY_MODEL, *CPU_TRAINER,
            "--model.arch.patch_size", "7", "--trainer.max_epochs", "1", "--trainer.enable_checkpointing", "false",
            "--runs_dir", str(runs), "--run_name", "nockpt"]
    assert cli.main(args) == 0
    folder = run_folder(runs, "nockpt")
    assert (folder / "metrics.csv").is_file()
    assert not list(folder.rglob("*.ckpt")), sorted(str(p) for p in folder.rglob("*"))
