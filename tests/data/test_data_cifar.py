import numpy as np
import pytest
import torch
from data_files import write_cifar

from vitlab.data import CIFAR10DataModule, CIFAR100DataModule


def small(cls, tmp_path, **kwargs):
    return cls(data_dir=str(tmp_path), num_workers=0, batch_size=8, **kwargs)


@pytest.mark.parametrize("cls, hundred", [(CIFAR10DataModule, False), (CIFAR100DataModule, True)])
def test_reads_folder_offline(tmp_path, no_md5, no_download, cls, hundred):
    write_cifar(tmp_path, hundred=hundred, per_batch=6, n_test=10)
    dm = small(cls, tmp_path, val_split=0.2)
    assert dm.num_classes == (100 if hundred else 10) == len(dm.classes)
    assert dm.classes[0] == ("apple" if hundred else "airplane")
    assert (dm.in_chans, dm.img_size, len(dm.mean), len(dm.std)) == (3, 32, 3, 3)
    dm.setup(None)
    assert (len(dm.train_set), len(dm.val_set), len(dm.test_set)) == (24, 6, 10)
    assert not set(dm.train_set.indices.tolist()) & set(dm.val_set.indices.tolist())
    for loader in (dm.train_dataloader(), dm.val_dataloader(), dm.test_dataloader()):
        x, y = next(iter(loader))
        assert x.shape == (min(8, len(loader.dataset)), 3, 32, 32) and x.dtype == torch.float32  # (B, C, H, W)
        assert y.dtype == torch.int64 and y.max() < dm.num_classes


def test_images_keep_torchvision_pixel_layout(tmp_path, no_md5):
    import torchvision

    write_cifar(tmp_path)
    dm = small(CIFAR10DataModule, tmp_path, augment=False)
    images, labels = dm.load_split(train=False)
    ref = torchvision.datasets.CIFAR10(str(tmp_path), train=False)
    img, label = ref[3]
    assert torch.equal(images[3], torch.from_numpy(np.array(img)).permute(2, 0, 1))
    assert labels[3] == label


def test_missing_folder_offline_names_folder_and_url(tmp_path, no_download):
    dm = small(CIFAR10DataModule, tmp_path)
    with pytest.raises(FileNotFoundError) as err:
        dm.setup("fit")
    assert "cifar-10-batches-py" in str(err.value) and "https://www.cs.toronto.edu" in str(err.value)


def test_corrupt_folder_fails_md5_and_is_named(tmp_path, no_download):
    # Without the no_md5 fixture torchvision verifies md5s: the test-written files do not match the real ones.
    folder = write_cifar(tmp_path, hundred=True)
    with pytest.raises(RuntimeError, match="corrupted") as err:
        small(CIFAR100DataModule, tmp_path).setup("test")
    assert folder in str(err.value)


def test_rgb_to_gray(tmp_path, no_md5):
    write_cifar(tmp_path)
    dm = small(CIFAR10DataModule, tmp_path, in_chans=1, img_size=16, train_subset=8)
    assert len(dm.mean) == len(dm.std) == 1
    dm.setup("fit")
    x, _ = next(iter(dm.train_dataloader()))
    assert x.shape == (8, 1, 16, 16)
