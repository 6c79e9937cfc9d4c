"""The one conftest of the suite (a second one, in a subfolder, would also be the module "conftest" and shadow
this one for `from conftest import ...`): tiny-model and tiny-data CLI arguments, test-written CIFAR files and
image trees, offline torchvision.

The writers of real-format files live in tests/data/data_files.py (the data tests' helpers)."""
import os
import sys

import pytest

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "data"))  # data_files
# the tests' own callbacks, which `vitlab fit` subprocesses load from a config: allowed as a user's would be
os.environ.setdefault("VITLAB_ALLOWED_CLASSES", "reliability_helpers,streaming.probe")
from data_files import save_image  # noqa: E402

# Debian's dataset-fashion-mnist; elsewhere (a GPU box without the package) a folder with the same IDX files
FASHION_MNIST_DIR = os.environ.get("VITLAB_FASHION_MNIST_DIR", "/usr/share/datasets/fashion-mnist")

# A model small enough for a shared 2-core CPU: 2 blocks of width 32 on a 4x4 grid of 7x7 patches (28 px).
TINY_MODEL = ["--model.arch.embed_dim", "32", "--model.arch.depth", "2", "--model.arch.num_heads", "2",
              "--model.arch.mlp_ratio", "2", "--model.schedule.warmup_epochs", "0.5"]
CPU_TRAINER = ["--trainer.accelerator", "cpu", "--trainer.devices", "1", "--trainer.precision", "32-true",
               "--trainer.log_every_n_steps", "1", "--trainer.enable_model_summary", "false",
               "--seed_everything", "0"]


def fashion_mnist_data(batch_size: int = 32, train: int = 256, evaluate: int = 128) -> list[str]:
    """CLI arguments of a small Fashion-MNIST data module reading the Debian files."""
    return ["--data", "vitlab.data.FashionMNISTDataModule", "--data.data_dir", FASHION_MNIST_DIR,
            "--data.batch_size", str(batch_size), "--data.num_workers", "0", "--data.val_split", "1000",
            "--data.train_subset", str(train), "--data.eval_subset", str(evaluate)]


def latest_run_folder(run: "os.PathLike") -> "Path":
    """The folder of the newest command of a run (``runs/<name>``): a fit's version_N, or the validate/test/predict
    folder inside the version it evaluated (whichever wrote its config.yaml last)."""
    from pathlib import Path
    run = Path(run)
    configs = list(run.glob("version_*/config.yaml")) + list(run.glob("version_*/*/config.yaml"))
    assert configs, f"no run folder in {run}"
    return max(configs, key=lambda p: p.stat().st_mtime_ns).parent


@pytest.fixture(scope="session")
def fashion_mnist_available() -> None:
    if not os.path.isfile(os.path.join(FASHION_MNIST_DIR, "train-images-idx3-ubyte.gz")):
        pytest.skip(f"Fashion-MNIST not in {FASHION_MNIST_DIR} (apt-get install dataset-fashion-mnist)")


@pytest.fixture
def cifar_root(tmp_path, monkeypatch):
    """A small cifar-10-batches-py written in the real format; torchvision's md5 check only checks existence
    (test files cannot match the real md5 sums) and downloads fail, as offline."""
    import torchvision.datasets.cifar as tv_cifar
    from data_files import write_cifar

    original = tv_cifar.check_integrity
    monkeypatch.setattr(tv_cifar, "check_integrity", lambda fpath, md5=None: original(fpath, None))

    def fail(*args, **kwargs):
        raise OSError("network unreachable (test)")

    monkeypatch.setattr(tv_cifar, "download_and_extract_archive", fail)
    root = tmp_path / "cifar"
    root.mkdir()
    write_cifar(str(root), per_batch=16, n_test=24)
    return root


@pytest.fixture
def image_folder_root(tmp_path):
    """``train/`` and ``val/`` with three classes of small RGB/gray PNG and JPEG files."""

    root = tmp_path / "tree"
    for split, n in (("train", 8), ("val", 4)):
        for cls in ("cat", "dog", "fox"):
            (root / split / cls).mkdir(parents=True)
            for i in range(n):
                mode, ext = (("RGB", "png"), ("L", "png"), ("RGB", "jpg"))[i % 3]
                save_image(root / split / cls / f"{i}.{ext}", mode, size=(24 + i, 20))
    return root


def pytest_configure(config):
    # tests call vitlab.cli.main(args) while sys.argv holds pytest's own arguments
    config.addinivalue_line("filterwarnings", "ignore:LightningCLI's args parameter")


# ---- data tests: offline torchvision, test-written CIFAR files, an image tree
@pytest.fixture
def no_md5(monkeypatch):
    """Let torchvision accept test-written CIFAR files: its reader checks each file's md5 against the real
    data set's, which small test files cannot match. Only existence is checked under this fixture."""
    import torchvision.datasets.cifar as tv_cifar

    original = tv_cifar.check_integrity
    monkeypatch.setattr(tv_cifar, "check_integrity", lambda fpath, md5=None: original(fpath, None))


@pytest.fixture
def no_download(monkeypatch):
    """Make every torchvision download fail, as offline."""
    import torchvision.datasets.cifar
    import torchvision.datasets.mnist

    def fail(*args, **kwargs):
        raise OSError("network unreachable (test)")

    monkeypatch.setattr(torchvision.datasets.cifar, "download_and_extract_archive", fail)
    monkeypatch.setattr(torchvision.datasets.mnist, "download_and_extract_archive", fail)


@pytest.fixture
def image_tree(tmp_path):
    """``tmp_path/tree/{train,val}/{cat,dog}`` with images in many modes and formats."""
    root = tmp_path / "tree"
    files = {
        "a_rgb.png": "RGB", "b_gray.png": "L", "c_rgba.png": "RGBA", "d_pal.png": "P",
        "e_cmyk.jpg": "CMYK", "f_16bit.png": "I;16", "g_rgb.jpeg": "RGB",
    }
    for split in ("train", "val"):
        for cls in ("cat", "dog"):
            (root / split / cls).mkdir(parents=True)
            for name, mode in files.items():
                save_image(root / split / cls / name, mode)
    return root
