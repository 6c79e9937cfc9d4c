"""Data modules for small data sets held in memory as one uint8 tensor (Fashion-MNIST, CIFAR)."""

from collections.abc import Callable

import torch
from torch.utils.data import Dataset

from vitlab.data.base import ImageDataModule
from vitlab.data.transforms import small_image_predict_transform, small_image_transform


class TensorImageDataset(Dataset):
    """``(transform(images[i]), labels[i])`` for the selected ``indices`` of in-memory uint8 images.

    Args:
        images: ``(N, C, H, W)`` uint8, shared (not copied) between the splits.
        labels: ``(N,)`` int64.
        indices: Which samples this split uses.
        transform: Maps one ``(C, H, W)`` uint8 tensor to a float tensor.
    """

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, indices: torch.Tensor, transform: Callable):
        self.images, self.labels, self.indices, self.transform = images, labels, indices, transform

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        j = self.indices[i]
        return self.transform(self.images[j]), self.labels[j]  # (C, H, W) float32, () int64


class InMemoryDataModule(ImageDataModule):
    """Base for data sets with an official train/test split and no validation split: validation is held
    out of train (``val_split``). Subclasses implement :meth:`load_split`."""

    crop_padding: int = 4  # zero padding of the training random crop

    def load_split(self, train: bool) -> tuple[torch.Tensor, torch.Tensor]:
        """Read the official train or test split: ``(images (N, C, H, W) uint8, labels (N,) int64)``."""
        raise NotImplementedError

    def _transform(self, train: bool) -> Callable:
        return small_image_transform(
            native_size=self.native_size, native_chans=self.native_chans, img_size=self.img_size,
            in_chans=self.in_chans, mean=self.mean, std=self.std, train=train and self.augment,
            crop_padding=self.crop_padding,
        )

    def predict_transform(self) -> Callable:
        return small_image_predict_transform(
            native_chans=self.native_chans, img_size=self.img_size, in_chans=self.in_chans,
            mean=self.mean, std=self.std,
        )

    def _test_set(self) -> TensorImageDataset:
        images, labels = self.load_split(train=False)
        indices = self.take_subset(torch.arange(len(labels)), self.eval_subset)
        return TensorImageDataset(images, labels, indices, self._transform(train=False))

    def _setup(self, stage: str | None) -> None:
        if stage in (None, "fit", "validate") and self.train_set is None:
            images, labels = self.load_split(train=True)
            train_idx, val_idx = self.split_indices(len(labels))
            train_idx = self.take_subset(train_idx, self.train_subset)
            self.train_set = TensorImageDataset(images, labels, train_idx, self._transform(train=True))
            if len(val_idx):
                val_idx = self.take_subset(val_idx, self.eval_subset)
                self.val_set = TensorImageDataset(images, labels, val_idx, self._transform(train=False))
            else:  # val_split=0: validate on the official test split
                self.val_set = self.test_set = self.test_set or self._test_set()
        if stage in (None, "test") and self.test_set is None:
            self.test_set = self._test_set()
