"""Data modules for small data sets held in memory as one uint8 tensor (Fashion-MNIST, CIFAR)."""

from collections.abc import Callable

import torch
from lightning.pytorch.utilities import rank_zero_warn
from torch.utils.data import DataLoader, Dataset

from vitlab.data.base import ImageDataModule
from vitlab.data.device_cache import DeviceCachedLoader
from vitlab.data.transforms import auto_augment_transform, small_image_predict_transform, small_image_transform


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
    out of train (``val_split``). Subclasses implement :meth:`load_split`.

    Args:
        on_device: Keep the whole set (uint8) on the training device and make the train/val/test batches
            there with batched tensor ops (:class:`~vitlab.data.device_cache.DeviceCachedLoader`: the same
            random crop, flip, RandAugment (``rand-...`` strings of ``auto_augment``), conversion and normalisation as
            the per-sample transforms, seeded and resumable
            the same way), so no loader worker or host-to-device copy limits the step rate. Also pays on a
            CPU, where it replaces per-image transforms by a few batched ops. ``num_workers`` and
            ``pin_memory`` are then unused; ``predict`` still reads image files.
        random_erasing: Probability that a training image gets timm's random erasing (a rectangle of 2-33 %
            of the area filled with noise, after normalisation; Zhong et al. 2020); 0 = off. Needs ``augment``.
        auto_augment: timm's augmentation string for the training images, e.g. ``rand-m9-mstd0.5-inc1``
            (RandAugment, as CCT and DeiT train) or ``rand-n1-m10-mstd101`` (TrivialAugment); None = off. Needs
            ``augment``.
        *args, **kwargs: As :class:`~vitlab.data.base.ImageDataModule`.
    """

    crop_padding: int = 4  # zero padding of the training random crop
    eval_crop_from_weights = False  # training sees whole images, so eval does too (crop_pct 1) unless asked

    def __init__(self, *args, on_device: bool = False, random_erasing: float = 0.0, auto_augment: str | None = None,
                 **kwargs) -> None:
        if not isinstance(on_device, bool):
            raise ValueError(f"on_device must be true or false, got {on_device!r}")
        if isinstance(random_erasing, bool) or not isinstance(random_erasing, (int, float)) \
                or not 0 <= random_erasing <= 1:
            raise ValueError(f"random_erasing must be a probability in [0, 1], got {random_erasing!r}")
        self.on_device = on_device
        self.random_erasing = float(random_erasing)
        self.auto_augment = auto_augment or None
        super().__init__(*args, **kwargs)
        if self.auto_augment:
            auto_augment_transform(self.auto_augment, self.native_size, self.native_mean)  # a bad string fails here
        if on_device and self.repeated_aug > 1:
            raise ValueError(f"repeated_aug={self.repeated_aug} is for the per-image loader; with on_device: true "
                             "set repeated_aug 1")

    def load_split(self, train: bool) -> tuple[torch.Tensor, torch.Tensor]:
        """Read the official train or test split: ``(images (N, C, H, W) uint8, labels (N,) int64)``."""
        raise NotImplementedError

    def _transform(self, train: bool) -> Callable:
        return small_image_transform(
            native_size=self.native_size, native_chans=self.native_chans, img_size=self.img_size,
            in_chans=self.in_chans, mean=self.mean, std=self.std, train=train and self.augment,
            interpolation=self.interpolation, crop_pct=self.crop_pct, crop_padding=self.crop_padding,
            random_erasing=self.random_erasing, auto_augment=self.auto_augment, native_mean=self.native_mean,
        )

    def predict_transform(self) -> Callable:
        return small_image_predict_transform(
            native_chans=self.native_chans, img_size=self.img_size, in_chans=self.in_chans,
            mean=self.mean, std=self.std, interpolation=self.interpolation, crop_pct=self.crop_pct,
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

    def _device_loader(self, dataset: TensorImageDataset | None, name: str, train: bool) -> DeviceCachedLoader:
        if dataset is None:
            raise RuntimeError(f"no {name} set: call setup() with the matching stage first")
        trainer = self.trainer
        if trainer is not None:
            device, rank, world = trainer.strategy.root_device, trainer.global_rank, trainer.world_size
        else:
            device, rank, world = None, 0, 1
        resizing = dict(img_size=self.img_size, in_chans=self.in_chans, interpolation=self.interpolation)
        if not train:  # every rank evaluates its own shard of the set, as Lightning's DistributedSampler
            return DeviceCachedLoader.from_dataset(dataset, self.batch_size, self.mean, self.std, train=False,
                                                   device=device, crop_pct=self.crop_pct, rank=rank,
                                                   world_size=world, **resizing)
        if len(dataset) < self.batch_size * world:
            rank_zero_warn(f"batch_size={self.batch_size} exceeds the {len(dataset)} training samples: "
                           f"each epoch is one batch")
        return DeviceCachedLoader.from_dataset(
            dataset, self.batch_size, self.mean, self.std, train=True, pad=self.crop_padding if self.augment else 0,
            flip=self.augment, erase=self.random_erasing if self.augment else 0.0,
            auto_augment=self.auto_augment if self.augment else None, native_mean=self.native_mean or None,
            device=device, seed=torch.initial_seed() % 2**63, rank=rank, world_size=world, **resizing)

    def train_dataloader(self) -> DataLoader | DeviceCachedLoader:
        if not self.on_device:
            return super().train_dataloader()
        return self._device_loader(self.train_set, "train", train=True)

    def val_dataloader(self) -> DataLoader | DeviceCachedLoader:
        if not self.on_device:
            return super().val_dataloader()
        return self._device_loader(self.val_set, "validation", train=False)

    def test_dataloader(self) -> DataLoader | DeviceCachedLoader:
        if not self.on_device:
            return super().test_dataloader()
        return self._device_loader(self.test_set, "test", train=False)
