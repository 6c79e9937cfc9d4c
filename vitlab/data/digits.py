"""scikit-learn's digits (UCI ML hand-written digits): 1,797 real 8x8 grayscale scans, 10 classes.

Ships inside scikit-learn, so it works offline; vitlab uses it as the small target set for fine-tuning.
There is no official split: a seeded 20 % is the test set, and ``val_split`` is held out of the rest.
"""

import numpy as np
import torch

from vitlab.data.in_memory import InMemoryDataModule

DIGITS_MEAN = (0.3053,)
DIGITS_STD = (0.3760,)


class DigitsDataModule(InMemoryDataModule):
    """scikit-learn digits, upscaled to ``img_size`` (default 32). Arguments as :class:`ImageDataModule`."""

    native_size = 8
    native_chans = 1
    native_mean = DIGITS_MEAN
    native_std = DIGITS_STD
    default_img_size = 32
    crop_padding = 1
    test_fraction = 0.2

    def __init__(self, *args, img_size: int | None = 32, **kwargs) -> None:
        super().__init__(*args, img_size=img_size, **kwargs)

    @property
    def classes(self) -> list[str]:
        return [str(i) for i in range(10)]

    def load_split(self, train: bool) -> tuple[torch.Tensor, torch.Tensor]:
        from sklearn.datasets import load_digits

        digits = load_digits()
        images = np.round(digits.images * (255 / 16)).astype(np.uint8)  # (1797, 8, 8), 0-16 -> 0-255
        perm = torch.randperm(len(images), generator=torch.Generator().manual_seed(12345))  # fixed test split
        n_test = round(self.test_fraction * len(images))
        idx = (perm[n_test:] if train else perm[:n_test]).sort().values
        x = torch.from_numpy(images)[idx].unsqueeze(1)  # (N, 1, 8, 8) uint8
        y = torch.from_numpy(digits.target.astype(np.int64))[idx]  # (N,)
        return x, y
