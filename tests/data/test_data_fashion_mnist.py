import gzip
import os

import pytest
import torch
from data_files import write_fashion_mnist

from vitlab.data import FashionMNISTDataModule
from vitlab.data import fashion_mnist as fm

DEBIAN = "/usr/share/datasets/fashion-mnist"
needs_debian = pytest.mark.skipif(not os.path.isdir(DEBIAN), reason="apt-get install dataset-fashion-mnist")


def small(**kwargs) -> FashionMNISTDataModule:
    kwargs = {"num_workers": 0, "batch_size": 16, **kwargs}
    return FashionMNISTDataModule(**kwargs)


@needs_debian
def test_debian_files_give_batches_of_the_right_kind(tmp_path):
    dm = small(data_dir=str(tmp_path), train_subset=64, eval_subset=32)
    assert dm.num_classes == 10 and dm.classes[0] == "T-shirt/top" and dm.classes[9] == "Ankle boot"
    assert (dm.in_chans, dm.img_size, dm.mean, dm.std) == (1, 28, (0.2860,), (0.3530,))
    dm.setup("fit")
    dm.setup("test")
    assert (len(dm.train_set), len(dm.val_set), len(dm.test_set)) == (64, 32, 32)
    for loader in (dm.train_dataloader(), dm.val_dataloader(), dm.test_dataloader()):
        x, y = next(iter(loader))
        assert x.shape == (16, 1, 28, 28) and x.dtype == torch.float32  # (B, C, H, W)
        assert y.shape == (16,) and y.dtype == torch.int64
        assert 0 <= y.min() and y.max() < 10


@needs_debian
def test_val_split_is_disjoint_and_deterministic(tmp_path):
    a, b, c = small(data_dir=str(tmp_path)), small(data_dir=str(tmp_path)), small(data_dir=str(tmp_path), seed=1)
    for dm in (a, b, c):
        dm.setup("fit")
    train, val = set(a.train_set.indices.tolist()), set(a.val_set.indices.tolist())
    assert not train & val and len(train | val) == 60000 and len(val) == 6000
    assert torch.equal(a.val_set.indices, b.val_set.indices)
    assert not torch.equal(a.val_set.indices, c.val_set.indices)


@pytest.mark.parametrize("gz", [True, False])
def test_reads_idx_files_in_data_dir(tmp_path, gz):
    write_fashion_mnist(tmp_path, n_train=40, n_test=12, gz=gz)
    dm = small(data_dir=str(tmp_path), val_split=10)
    dm.setup(None)
    assert (len(dm.train_set), len(dm.val_set), len(dm.test_set)) == (30, 10, 12)
    assert dm.test_set.labels.tolist() == [i % 10 for i in range(12)]


def test_torchvision_layout_is_found(tmp_path):
    write_fashion_mnist(tmp_path / "FashionMNIST" / "raw")
    assert small(data_dir=str(tmp_path)).find_dir() == str(tmp_path / "FashionMNIST" / "raw")


@pytest.mark.parametrize(
    "damage, message",
    [
        (lambda b: b"\x00\x00\x08\x01" + b[4:], "magic number"),  # labels header on an image file
        (lambda b: b[:-5], "needs"),  # truncated data
        (lambda b: b"", "empty file"),
    ],
)
def test_corrupt_idx_file_is_named(tmp_path, damage, message):
    write_fashion_mnist(tmp_path, gz=False)
    path = tmp_path / "train-images-idx3-ubyte"
    path.write_bytes(damage(path.read_bytes()))
    dm = small(data_dir=str(tmp_path))
    with pytest.raises(ValueError, match=message) as err:
        dm.setup("fit")
    assert str(path) in str(err.value)


def test_broken_gzip_is_named(tmp_path):
    write_fashion_mnist(tmp_path, gz=True)
    path = tmp_path / "t10k-labels-idx1-ubyte.gz"
    path.write_bytes(gzip.compress(b"\x00\x00\x08\x01\x00\x00\x00\x0c")[:-6])  # truncated gzip stream
    with pytest.raises(ValueError, match="corrupt IDX") as err:
        small(data_dir=str(tmp_path)).setup("test")
    assert str(path) in str(err.value)


def test_missing_everywhere_lists_the_places(tmp_path, monkeypatch, no_download):
    monkeypatch.setattr(fm, "DEBIAN_DIR", str(tmp_path / "nowhere"))
    dm = small(data_dir=str(tmp_path / "data"))
    with pytest.raises(FileNotFoundError) as err:
        dm.setup("fit")
    for place in dm.search_dirs():
        assert place in str(err.value)
    assert "apt-get install dataset-fashion-mnist" in str(err.value)


def test_gray_to_rgb_and_resize(tmp_path):
    write_fashion_mnist(tmp_path)
    dm = small(data_dir=str(tmp_path), in_chans=3, img_size=32)
    assert dm.mean == (0.2860,) * 3
    dm.setup("fit")
    x, _ = next(iter(dm.train_dataloader()))
    assert x.shape == (16, 3, 32, 32)
    assert torch.equal(x[:, 0], x[:, 1]) and torch.equal(x[:, 1], x[:, 2])  # repeated channel
