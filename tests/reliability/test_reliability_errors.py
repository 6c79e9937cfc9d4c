"""Every user error is one line on stderr and exit code 2, naming the bad value or file, with no traceback: out-of-range
trainer values, a weights file or a folder as --ckpt_path, a missing or wrong predict_dir, val_split 0 without a val
split, a runs_dir or data_dir that is a file, an empty config file, a corrupt image met while training, and
`vitlab export` without its ONNX packages. Refused before the run folder is made, so no `version_N` is left behind."""
import hashlib
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from data_files import save_image
from reliability_helpers import CPU_TRAINER, TINY_MODEL, fashion_mnist_data
from safetensors.torch import save_file

from vitlab import cli

FIT = [*fashion_mnist_data(batch_size=16, train=32, evaluate=16), *TINY_MODEL, "--model.arch.patch_size", "7",
       *CPU_TRAINER, "--trainer.enable_progress_bar", "false"]


def one_line_error(capsys, args: list[str], code: int = 2) -> str:
    """Run ``vitlab ARGS``: exit ``code``, no traceback, and the last stderr line is the one error line."""
    with pytest.raises(SystemExit) as exc:
        cli.main(args)
    assert exc.value.code == code
    err = capsys.readouterr().err
    assert "Traceback" not in err, err[-3000:]
    lines = [line for line in err.splitlines() if "error: " in line]
    assert len(lines) == 1 and err.strip().splitlines()[-1] == lines[0], err[-3000:]
    return lines[0]


def version_folders(runs: Path) -> list[Path]:
    return list(runs.rglob("version_*")) if runs.exists() else []


@pytest.mark.parametrize("args, named", [
    (["--trainer.accumulate_grad_batches", "0"], ["trainer.accumulate_grad_batches", "got 0"]),
    (["--trainer.max_epochs", "-1"], ["trainer.max_epochs -1", "max_steps", "learning-rate schedule"]),
    (["--trainer.max_epochs", "-1", "--trainer.max_time", "00:00:01:00"], ["max_time does not give one"]),
    (["--trainer.max_epochs", "-2"], ["trainer.max_epochs", "got -2"]),
    (["--trainer.max_steps", "-5"], ["trainer.max_steps", "got -5"]),
    (["--trainer.check_val_every_n_epoch", "0"], ["trainer.check_val_every_n_epoch", "got 0"]),
    (["--trainer.val_check_interval", "0"], ["trainer.val_check_interval", "got 0"]),
    (["--trainer.log_every_n_steps", "-1"], ["trainer.log_every_n_steps", "got -1"]),
    (["--trainer.num_sanity_val_steps", "-3"], ["trainer.num_sanity_val_steps", "got -3"]),
    (["--trainer.gradient_clip_val", "-1"], ["trainer.gradient_clip_val", "got -1"]),
    (["--trainer.min_epochs", "5", "--trainer.max_epochs", "2"], ["trainer.min_epochs (5)", "max_epochs (2)"]),
    (["--trainer.limit_train_batches", "-1"], ["trainer.limit_train_batches", "got -1"]),
    (["--trainer.limit_val_batches", "1.5"], ["trainer.limit_val_batches", "got 1.5"]),
])
def test_out_of_range_trainer_values_are_one_line_before_any_folder(tmp_path, capsys, fashion_mnist_available,
                                                                     args, named):
    runs = tmp_path / "runs"
    line = one_line_error(capsys, ["fit", *FIT, "--runs_dir", str(runs), *args])
    assert all(n in line for n in named), line
    assert not runs.exists()


def test_a_value_only_lightning_checks_is_one_line_too(tmp_path, capsys, fashion_mnist_available):
    runs = tmp_path / "runs"
    line = one_line_error(capsys, ["fit", *FIT, "--runs_dir", str(runs), "--trainer.devices", "0"])
    assert "devices" in line and "'0'" in line, line
    assert version_folders(runs) == []


def test_max_epochs_minus_one_with_max_steps_trains(tmp_path, fashion_mnist_available):
    """No epoch limit is fine when max_steps gives the schedule its length."""
    cli.main(["fit", *FIT, "--runs_dir", str(tmp_path), "--run_name", "r", "--trainer.max_epochs", "-1",
              "--trainer.max_steps", "2", "--trainer.limit_val_batches", "1"])
    assert torch.load(tmp_path / "r/version_0/checkpoints/last.ckpt", weights_only=True)["global_step"] == 2


def test_weights_file_or_folder_as_ckpt_path_points_to_model_pretrained(tmp_path, capsys, fashion_mnist_available):
    weights = tmp_path / "model.safetensors"
    save_file({"head.weight": torch.zeros(10, 32)}, str(weights))
    runs = tmp_path / "runs"
    for command in ("fit", "test"):
        line = one_line_error(capsys, [command, *FIT, "--runs_dir", str(runs), "--ckpt_path", str(weights)])
        assert "safetensors weights file" in line and "Lightning checkpoint" in line
        assert f"--model.pretrained {weights}" in line
    line = one_line_error(capsys, ["test", *FIT, "--runs_dir", str(runs), "--ckpt_path", str(tmp_path)])
    assert f"ckpt_path {str(tmp_path)!r} is a folder" in line and "model.pretrained" in line
    assert not runs.exists()


@pytest.mark.parametrize("predict_dir, named", [
    (None, "predict needs data.predict_dir"),
    ("missing", "does not exist"),
    ("a_file.png", "is a file, not a folder"),
])
def test_predict_dir_missing_or_a_file_is_one_line_and_leaves_no_folder(tmp_path, capsys, fashion_mnist_available,
                                                                         predict_dir, named):
    (tmp_path / "a_file.png").write_bytes(b"x")
    runs = tmp_path / "runs"
    given = [] if predict_dir is None else ["--data.predict_dir", str(tmp_path / predict_dir)]
    line = one_line_error(capsys, ["predict", *FIT, "--runs_dir", str(runs), *given])
    assert named in line and (predict_dir is None or str(tmp_path / predict_dir) in line), line
    assert not runs.exists()


@pytest.fixture
def train_only_tree(tmp_path) -> Path:
    """An ImageFolder tree with train/ only (no val/, no test/): 2 classes of 4 PNGs; batches of 3 over 6 training
    images (val_split 2) read every image each epoch."""
    root = tmp_path / "tree"
    for cls in ("a", "b"):
        (root / "train" / cls).mkdir(parents=True)
        for i in range(4):
            save_image(root / "train" / cls / f"{i}.png", "RGB", size=(20, 20))
    return root


def image_folder(root: Path, runs: Path, workers: int = 0) -> list[str]:
    return ["--data", "ImageFolderDataModule", "--data.data_dir", str(root), "--data.img_size", "28",
            "--data.batch_size", "3", "--data.num_workers", str(workers), *TINY_MODEL, "--model.arch.patch_size", "7",
            *CPU_TRAINER, "--trainer.enable_progress_bar", "false", "--runs_dir", str(runs), "--run_name", "tree"]


def test_val_split_zero_without_val_folder_is_one_line_and_leaves_no_version(tmp_path, capsys, train_only_tree):
    runs = tmp_path / "runs"
    line = one_line_error(capsys, ["fit", *image_folder(train_only_tree, runs), "--data.val_split", "0"])
    assert line.startswith("vitlab fit: error: no val/ or test/") and "val_split=0" in line
    assert version_folders(runs) == []


def test_corrupt_training_image_is_one_line_naming_it_and_keeps_last_ckpt(tmp_path, capsys, train_only_tree):
    """A resumed run meets a corrupt image (read in a loader worker): one line naming the file; the run's
    last.ckpt is the one it had."""
    runs = tmp_path / "runs"
    cli.main(["fit", *image_folder(train_only_tree, runs), "--data.val_split", "2", "--trainer.max_epochs", "1"])
    last = runs / "tree/version_0/checkpoints/last.ckpt"
    before = hashlib.sha256(last.read_bytes()).hexdigest()
    bad = train_only_tree / "train" / "b" / "1.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n but not really")
    line = one_line_error(capsys, ["fit", *image_folder(train_only_tree, runs, workers=1), "--data.val_split", "2",
                                   "--trainer.max_epochs", "3", "--ckpt_path", "last"])
    assert line.startswith(f"vitlab fit: error: cannot decode image file {str(bad)!r}"), line
    assert hashlib.sha256(last.read_bytes()).hexdigest() == before


@pytest.mark.parametrize("case", ["runs_dir_is_a_file", "data_dir_is_a_file", "empty_config", "config_is_a_folder"])
def test_careless_paths_are_one_line(tmp_path, capsys, fashion_mnist_available, case):
    a_file, empty = tmp_path / "notes.txt", tmp_path / "empty.yaml"
    a_file.write_text("x")
    empty.write_text("")
    runs = tmp_path / "runs"
    args, named = {
        "runs_dir_is_a_file": (["--runs_dir", str(a_file)], f"runs_dir {str(a_file)!r} is a file, not a folder"),
        "data_dir_is_a_file": (["--runs_dir", str(runs), "--data.data_dir", str(a_file)],
                               f"data_dir {str(a_file)!r} is a file, not a folder"),
        "empty_config": (["--runs_dir", str(runs), "-c", str(empty)], "config file (-c) is empty"),
        "config_is_a_folder": (["--runs_dir", str(runs), "-c", str(tmp_path)], "not a file"),
    }[case]
    line = one_line_error(capsys, ["fit", *FIT, *args])
    assert named in line, line
    assert version_folders(runs) == []


def test_export_without_onnxscript_names_the_package_and_the_pip_command(tmp_path):
    """A real `vitlab export` process in which onnxscript cannot be imported (None in sys.modules)."""
    code = ("import sys\n"
            "sys.modules['onnxscript'] = None\n"
            "from vitlab.cli import main\n"
            "sys.exit(main(sys.argv[1:]))\n")
    out = tmp_path / "model.onnx"
    proc = subprocess.run([sys.executable, "-c", code, "export", "--model", "vit_micro_patch4_28", "--out", str(out)],
                          capture_output=True, text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines() == [
        "vitlab export: error: ONNX export needs the package 'onnxscript', not installed: "
        "pip install onnx onnxscript onnxruntime (or pip install -e \".[onnx]\" in a vitlab checkout)"]
    assert not out.exists()
