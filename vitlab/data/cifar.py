"""CIFAR-10 and CIFAR-100 (Krizhevsky 2009): 50k training and 10k test 32x32 RGB images, through
torchvision's readers (which verify the files' md5 sums)."""

import os

import torch
import torchvision

from vitlab.data.in_memory import InMemoryDataModule
from vitlab.data.stats import CIFAR10_CLASSES, CIFAR10_MEAN, CIFAR10_STD, CIFAR100_CLASSES, CIFAR100_MEAN, CIFAR100_STD


class CIFAR10DataModule(InMemoryDataModule):
    """CIFAR-10: 10 classes. Reads ``data_dir/cifar-10-batches-py``, downloading it only when the folder is
    missing. Arguments as :class:`ImageDataModule`."""

    dataset_cls: type[torchvision.datasets.CIFAR10] = torchvision.datasets.CIFAR10
    native_size = 32
    native_chans = 3
    native_mean = CIFAR10_MEAN
    native_std = CIFAR10_STD
    crop_padding = 4

    @property
    def classes(self) -> list[str]:
        return list(CIFAR10_CLASSES)

    @property
    def folder(self) -> str:
        """The extracted data set folder torchvision reads."""
        return os.path.join(self.data_dir, self.dataset_cls.base_folder)

    def prepare_data(self) -> None:
        """Download and extract into ``data_dir`` when :attr:`folder` is missing."""
        if os.path.isdir(self.folder):
            return
        try:
            self.dataset_cls(root=self.data_dir, train=True, download=True)
        except Exception as e:  # no network, proxy, disk
            raise FileNotFoundError(
                f"{self.folder!r} not found and downloading {self.dataset_cls.url} failed "
                f"({type(e).__name__}: {e}).\nRun once with network access, or download that archive and "
                f"extract it in {self.data_dir!r}."
            ) from e

    def load_split(self, train: bool) -> tuple[torch.Tensor, torch.Tensor]:
        self.prepare_data()
        try:
            ds = self.dataset_cls(root=self.data_dir, train=train, download=False)
        except RuntimeError as e:  # torchvision: a file is missing or fails its md5 check
            raise RuntimeError(
                f"{self.folder!r} is incomplete or corrupted ({e}); delete it to download it again"
            ) from e
        if ds.classes != self.classes:
            raise ValueError(f"class names in {self.folder!r} are {ds.classes}, expected {self.classes}")
        images = torch.from_numpy(ds.data).permute(0, 3, 1, 2).contiguous()  # (N, 32, 32, 3) -> (N, 3, 32, 32)
        return images, torch.tensor(ds.targets, dtype=torch.int64)


class CIFAR100DataModule(CIFAR10DataModule):
    """CIFAR-100: 100 ("fine") classes. Reads ``data_dir/cifar-100-python``, downloading it only when the
    folder is missing. Arguments as :class:`ImageDataModule`."""

    dataset_cls = torchvision.datasets.CIFAR100
    native_mean = CIFAR100_MEAN
    native_std = CIFAR100_STD

    @property
    def classes(self) -> list[str]:
        return list(CIFAR100_CLASSES)
