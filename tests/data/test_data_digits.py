"""scikit-learn digits: real 8x8 scans, upscaled, with a fixed test split."""
import torch

from vitlab.data import DigitsDataModule


def test_digits_splits_and_shapes():
    dm = DigitsDataModule(batch_size=32, num_workers=0, img_size=28)
    dm.setup("fit")
    dm.setup("test")
    assert dm.num_classes == 10 and dm.in_chans == 1 and dm.img_size == 28
    assert len(dm.train_set) + len(dm.val_set) + len(dm.test_set) == 1797
    x, y = next(iter(dm.train_dataloader()))
    assert x.shape == (32, 1, 28, 28) and x.dtype == torch.float32 and y.max() <= 9
    train = set(dm.train_set.indices.tolist())
    assert not train & set(dm.val_set.indices.tolist())  # val held out of train


def test_digits_test_split_fixed_across_seeds():
    a, b = DigitsDataModule(seed=0, num_workers=0), DigitsDataModule(seed=1, num_workers=0)
    a.setup("test")
    b.setup("test")
    torch.testing.assert_close(a.test_set.labels[a.test_set.indices], b.test_set.labels[b.test_set.indices])
