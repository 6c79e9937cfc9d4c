"""Fixtures of the data tests: offline torchvision, test-written CIFAR files, an image tree."""

import pytest
from data_files import save_image


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
