"""Bad inputs give one clear line naming the file or value, or are handled as documented. The cases tests/data
already covers are listed in docs_reliability.md (corrupt, truncated, zero-byte and non-image files; CMYK, palette,
16-bit, RGBA and gray images; empty class folders; missing folders; predict skipping a bad file); these are the
rest: images smaller than the crop, class counts that differ, a batch larger than the data set, an unreadable
data directory, and config values of the wrong type or out of range."""
import os
import shutil
import subprocess
import sys
import tempfile

import pytest
import torch
from data_files import save_image
from reliability_helpers import CPU_TRAINER, TINY_MODEL

from vitlab import cli
from vitlab.data import FashionMNISTDataModule, ImageFilesDataset, ImageFolderDataModule

FIT = ["--data", "FashionMNISTDataModule", "--data.data_dir", "/usr/share/datasets/fashion-mnist",
       "--trainer.fast_dev_run", "true"]


def one_line_error(capsys, args) -> str:
    with pytest.raises(SystemExit) as exc:
        cli.main(args)
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and err.strip().splitlines()[-1] == lines[0], err
    return lines[0]


@pytest.mark.parametrize("args, named", [
    (["--data.batch_size", "abc"], ["data.batch_size", "abc"]),
    (["--model.optim.base_lr", "fast"], ["model.optim.base_lr", "fast"]),
    (["--trainer.max_epochs", "1.5"], ["trainer.max_epochs", "1.5"]),
    (["--model.arch.embed_dim", "32.5"], ["model.arch.embed_dim", "32.5"]),
    (["--model.nonfinite", "maybe"], ["model.nonfinite", "maybe"]),
    (["--data.batch_size", "0"], ["batch_size", "0"]),
    (["--model.optim.base_lr", "-1"], ["optim.base_lr", "-1"]),
    (["--model.arch.drop_path_rate", "1.5"], ["drop_path_rate", "1.5"]),
    (["--data.val_split", "2.5"], ["val_split", "2.5"]),
    (["--last_every_n_steps", "0"], ["last_every_n_steps", "0"]),
    (["--model.arch.num_classes", "5"], ["model.arch.num_classes", "data.num_classes"]),  # linked: the data decides
])
def test_config_value_of_wrong_type_or_out_of_range_is_one_line(capsys, args, named):
    line = one_line_error(capsys, ["fit", *FIT, *args])
    assert all(n in line for n in named), line


def test_wrong_type_in_a_config_file_is_one_line(tmp_path, capsys):
    config = tmp_path / "bad.yaml"
    config.write_text("data:\n  init_args:\n    batch_size: many\n")
    line = one_line_error(capsys, ["fit", *FIT, "-c", str(config)])
    assert "data.batch_size" in line and "many" in line


@pytest.fixture
def tiny_images(tmp_path):
    """An image tree whose images are all smaller than the 32 px crop (down to 1x1)."""
    root = tmp_path / "tiny"
    sizes = [(1, 1), (2, 3), (5, 4), (7, 1)]
    for split in ("train", "val"):
        for cls in ("a", "b", "c"):
            (root / split / cls).mkdir(parents=True)
            for i, size in enumerate(sizes):
                save_image(root / split / cls / f"{i}.png", ("RGB", "L")[i % 2], size=size)
    return root


def test_images_smaller_than_the_crop_are_upscaled(tiny_images):
    """Documented: images smaller than img_size are resized up, in training, evaluation and prediction."""
    dm = ImageFolderDataModule(data_dir=str(tiny_images), img_size=32, batch_size=6, num_workers=0)
    dm.setup("fit")
    for loader in (dm.train_dataloader(), dm.val_dataloader()):
        x, y = next(iter(loader))
        assert x.shape == (6, 3, 32, 32) and torch.isfinite(x).all()
    predict = ImageFilesDataset(tiny_images / "val" / "a", FashionMNISTDataModule(num_workers=0).predict_transform(),
                                mode="L")
    assert all(predict[i][0].shape == (1, 28, 28) for i in range(len(predict)))


def test_batch_larger_than_the_data_set_and_class_count_differing_from_the_checkpoint(
        tmp_path, capsys, image_folder_root):
    """A fit with batch_size 64 on 24 training images: one (smaller) batch per epoch, with a warning. Then the
    data loses a class: testing the 3-class checkpoint on it is one line naming both counts."""
    runs = str(tmp_path / "runs")
    common = ["--data", "ImageFolderDataModule", "--data.data_dir", str(image_folder_root), "--data.img_size", "28",
              "--data.num_workers", "0", *TINY_MODEL, "--model.arch.patch_size", "7", *CPU_TRAINER,
              "--trainer.enable_progress_bar", "false", "--runs_dir", runs, "--run_name", "tree"]
    with pytest.warns(UserWarning, match="batch_size=64 exceeds the 24 training samples: each epoch is one batch"):
        cli.main(["fit", *common, "--data.batch_size", "64", "--trainer.max_epochs", "2"])
    last = torch.load(tmp_path / "runs/tree/version_0/checkpoints/last.ckpt", weights_only=True)
    assert last["global_step"] == 2
    for split in ("train", "val"):
        shutil.rmtree(image_folder_root / split / "fox")
    line = one_line_error(capsys, ["test", *common, "--ckpt_path", "last"])
    assert "the checkpoint was trained for 3 classes, but the data has 2" in line and "last.ckpt" in line
    assert "model.pretrained" in line  # how to fine-tune it on the new classes instead


def test_unreadable_data_dir_is_named(image_folder_root):
    """chmod 000 on the data folder. Root reads anything, so as root the check runs in a child process that
    drops to the user nobody after importing vitlab."""
    base = tempfile.mkdtemp()  # under /tmp, reachable by nobody (pytest's tmp_path is private to root)
    try:
        os.chmod(base, 0o755)
        data_dir = os.path.join(base, "tree")
        shutil.copytree(image_folder_root, data_dir)
        os.chmod(data_dir, 0o000)
        code = ("import os, sys\n"
                "from vitlab.data import ImageFolderDataModule\n"
                "if os.geteuid() == 0:\n"
                "    os.setgid(65534); os.setuid(65534)\n"
                "try:\n"
                "    ImageFolderDataModule(data_dir=sys.argv[1])\n"
                "except PermissionError as e:\n"
                "    print(e)\n")
        out = subprocess.run([sys.executable, "-c", code, data_dir], capture_output=True, text=True, timeout=120)
        assert out.stdout.strip() == f"data_dir {data_dir!r} exists but is not readable by this user " \
                                     f"(permission denied)", out.stderr[-2000:]
    finally:
        os.chmod(os.path.join(base, "tree"), 0o755)
        shutil.rmtree(base)
