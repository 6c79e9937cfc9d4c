"""Train from shards written by ``vitlab prepare``, streamed by litdata (Lightning's streaming engine).

``data_dir`` is the prepare output: a local folder or an object-store URL (``s3://bucket/prefix``, chunks cached
under ``cache_dir``). litdata's ``StreamingDataset`` deals the chunks out to the processes of every node and to
their loader workers, shuffles per epoch, and its ``StreamingDataLoader`` has ``state_dict``/``load_state_dict``,
which Lightning stores in checkpoints, so ``fit --ckpt_path last`` resumes mid-epoch at the next unseen sample.
Augmentation is seeded per (seed, epoch, sample) as in the file loaders, so a resumed epoch is augmented the same.

The transforms are those of the file loaders: small images (Fashion-MNIST, CIFAR shards) get the small-image
pipeline (crop + flip + ``auto_augment``), larger ones timm's ImageNet pipeline, as ``ImageFolderDataModule``.
"""
from __future__ import annotations

import dataclasses
import math
import os
import random
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from litdata import StreamingDataLoader, StreamingDataset
from litdata.streaming.sampler import ChunkedIndex
from timm.data import DEFAULT_CROP_PCT
from torch.utils.data import get_worker_info

from vitlab.data import shards
from vitlab.data.base import ImageDataModule
from vitlab.data.resumable import sample_seed
from vitlab.data.stats import IMAGENET_MEAN, IMAGENET_STD
from vitlab.data.transforms import (auto_augment_transform, imagenet_transform, small_image_predict_transform,
                                    small_image_transform)

SMALL = 64  # shards of images at most this side use the small-image pipeline


def _native_stats(source: str) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Mean/std of the data set a shard source names (``fashion_mnist:PATH``, ``cifar10:...``), else ImageNet's."""
    from vitlab.data import CIFAR10DataModule, CIFAR100DataModule, FashionMNISTDataModule

    kind = str(source).split(":", 1)[0]
    known = {"fashion_mnist": FashionMNISTDataModule, "cifar10": CIFAR10DataModule, "cifar100": CIFAR100DataModule}
    cls = known.get(kind)
    return (cls.native_mean, cls.native_std) if cls else (IMAGENET_MEAN, IMAGENET_STD)


class RepeatedShuffle:
    """litdata's shuffler with DeiT's repeated augmentation: of the shuffled indexes a worker reads from a chunk, the
    first ceil(n / R) are kept, each R times in a row, so a chunk still yields n samples and litdata's counting (epoch
    end, resume) is unchanged. Copy c of index i travels as ``i + c * total`` and gets its own augmentation seed.
    Unlike timm's RepeatAugSampler, the copies stay in one process (next to each other in its batches)."""

    def __init__(self, inner: Any, repeats: int, total: int) -> None:
        self.inner, self.repeats, self.total = inner, repeats, total

    def __call__(self, indexes: Any, *args: Any) -> list[int]:
        order = [int(i) for i in self.inner(indexes, *args)]
        keep = order[:math.ceil(len(order) / self.repeats)]
        return [i + c * self.total for i in keep for c in range(self.repeats)][:len(order)]

    def __getattr__(self, name: str) -> Any:  # the rest of litdata's shuffler (only called for missing names)
        if name in ("inner", "repeats", "total") or name.startswith("__"):
            raise AttributeError(name)
        return getattr(self.inner, name)


class ShardDataset(StreamingDataset):
    """``(image (C, H, W) float32, label)`` from a ``vitlab prepare`` split: litdata's dataset, decoded and
    transformed; the transform runs with torch/numpy/``random`` seeded by (seed, epoch, sample index[, copy]).
    ``repeats`` > 1: repeated augmentation (:class:`RepeatedShuffle`)."""

    def __init__(self, input_dir: str, transform: Callable, mode: str, small: bool, *, seed: int, shuffle: bool,
                 drop_last: bool, cache_dir: str | None, storage_options: dict | None, max_cache_size: str,
                 repeats: int = 1, total: int = 0) -> None:
        if shards.is_remote(input_dir):
            shards.allow_http_endpoint(storage_options)
        source: Any = input_dir
        if cache_dir is not None and shards.is_remote(input_dir):
            from litdata.streaming.resolver import Dir
            source = Dir(path=cache_dir, url=input_dir)
        super().__init__(source, shuffle=shuffle, drop_last=drop_last, seed=seed, max_cache_size=max_cache_size,
                         storage_options=storage_options or {})
        self.image_transform, self.mode, self.small, self.aug_seed = transform, mode, small, seed
        self.repeats, self.total = repeats, total  # total: samples in the split (copies are index + c * total)

    def _create_shuffler(self, cache: Any) -> Any:
        shuffler = super()._create_shuffler(cache)
        return RepeatedShuffle(shuffler, self.repeats, self.total) if self.repeats > 1 and self.shuffle else shuffler

    def __getitem__(self, index: ChunkedIndex | int) -> tuple[torch.Tensor, int]:
        copy = 0
        if isinstance(index, ChunkedIndex) and self.repeats > 1 and index.index >= self.total:  # a repeated copy
            copy, real = divmod(index.index, self.total)
            index = dataclasses.replace(index, index=real)
        item = super().__getitem__(index)
        i = index.index if isinstance(index, ChunkedIndex) else int(index)
        img = shards.decode_image(item["image"], self.mode, i)
        x = torch.from_numpy(np.array(img)).reshape(img.height, img.width, -1).permute(2, 0, 1) if self.small \
            else img  # (C, H, W) uint8 for the small-image pipeline, PIL for timm's
        s = sample_seed(self.aug_seed, int(self.current_epoch), i if copy == 0 else -1 - (i * 1024 + copy))
        in_main = get_worker_info() is None
        states = (random.getstate(), np.random.get_state(), torch.get_rng_state()) if in_main else None
        try:
            torch.default_generator.manual_seed(s)
            random.seed(s)
            np.random.seed(s % 2**32)
            return self.image_transform(x), int(item["label"])
        finally:
            if states is not None:
                random.setstate(states[0])
                np.random.set_state(states[1])
                torch.set_rng_state(states[2])


class ShardLoader(StreamingDataLoader):
    """litdata's loader, with a resume that lasts exactly one epoch.

    litdata replays a loaded state while its ``restore`` flag is set, and clears the flag only when an epoch's
    iterator runs to its end; Lightning ends an epoch by counting batches instead (and may create the iterator before
    the state is loaded). Here the choice is made when the epoch's first batch is asked for: the epoch right after
    ``load_state_dict`` resumes, every later one starts afresh.
    """

    _resume_pending = False

    def load_state_dict(self, obj: dict[str, Any]) -> None:
        super().load_state_dict(obj)
        self._resume_pending = True

    def __iter__(self) -> Any:
        def epoch() -> Any:
            if not self._resume_pending:
                self.restore = False
            self._resume_pending = False
            yield from StreamingDataLoader.__iter__(self)
        return epoch()


class StreamingDataModule(ImageDataModule):
    """Shards of ``vitlab prepare`` (``data_dir/train``, ``val``, ``test``), streamed with litdata.

    Validation uses the ``val`` split (else ``test``); test uses ``test`` (else ``val``). Class names, channels and
    the native size come from the shards' ``vitlab_meta.json``; mean/std from the data set they were made from
    (ImageNet's for image folders) unless given.

    Args:
        data_dir: The ``vitlab prepare --out`` folder or URL.
        cache_dir: Where chunks of a remote ``data_dir`` are cached, one folder per split (default: litdata's cache
            folder).
        storage_options: Object-store client options, e.g. ``{"endpoint_url": "http://minio:9000"}``.
        max_cache_size: Most disk the chunk cache may use.
        auto_augment: timm's augmentation string for small-image shards (larger images always get timm's
            ImageNet pipeline with ``rand-m9-mstd0.5-inc1``).
        random_erasing: Random-erasing probability for small-image shards.
        **kwargs: As :class:`~vitlab.data.base.ImageDataModule` (``repeated_aug``: :class:`RepeatedShuffle`);
            ``val_split``, ``train_subset`` and ``eval_subset`` are not supported on shards (``vitlab prepare --limit
            N`` makes small shards).
    """

    default_img_size = 224
    interpolations = ("nearest", "bilinear", "bicubic", "box", "hamming", "lanczos")

    def __init__(self, data_dir: str = "shards", cache_dir: str | None = None, storage_options: dict | None = None,
                 max_cache_size: str = "50GB", auto_augment: str | None = None, random_erasing: float = 0.0,
                 **kwargs: Any) -> None:
        for name in ("train_subset", "eval_subset"):
            if kwargs.get(name) is not None:
                raise ValueError(f"{name} is not supported on shards: make small shards with "
                                 f"`vitlab prepare ... --limit N` instead")
        self.storage_options = storage_options
        self.cache_dir, self.max_cache_size = cache_dir, max_cache_size
        self.splits = self._read_splits(data_dir)
        meta = self.splits["train"]
        self._classes = [str(c) for c in meta["classes"]]
        self.native_chans = int(meta.get("in_chans") or 3)
        self.native_size = meta.get("native_size")
        self.small = self.native_size is not None and self.native_size <= SMALL
        self.native_mean, self.native_std = _native_stats(meta.get("source", ""))
        self.default_crop_pct = 1.0 if self.small else DEFAULT_CROP_PCT
        self.eval_crop_from_weights = not self.small
        self.auto_augment = auto_augment or None
        self.random_erasing = float(random_erasing)
        super().__init__(data_dir=data_dir, **kwargs)
        if self.auto_augment:
            auto_augment_transform(self.auto_augment, self.native_size or self.img_size, self.native_mean)

    def _read_splits(self, data_dir: str) -> dict[str, dict]:
        """The metas of the splits present; train is required."""
        found = {}
        for split in shards.SPLITS:
            try:
                found[split] = shards.read_meta(shards.join(data_dir, split), self.storage_options)
            except ValueError:
                if split == "train":
                    raise
        for split, meta in found.items():
            if meta["classes"] != found["train"]["classes"]:
                raise ValueError(f"{shards.join(data_dir, split)} has other classes than train/: "
                                 f"shards of different data sets")
        return found

    def _check_source(self) -> None:
        pass  # checked in __init__ (the metas are read before the base class needs the channels)

    @property
    def classes(self) -> list[str]:
        return list(self._classes)

    @property
    def predict_mode(self) -> str:
        return "L" if self.native_chans == 1 else "RGB"

    def _transform(self, train: bool) -> Callable:
        train = train and self.augment
        if self.small:
            return small_image_transform(
                native_size=self.native_size, native_chans=self.native_chans, img_size=self.img_size,
                in_chans=self.in_chans, mean=self.mean, std=self.std, train=train, interpolation=self.interpolation,
                crop_pct=self.crop_pct, random_erasing=self.random_erasing, auto_augment=self.auto_augment,
                native_mean=self.native_mean)
        return imagenet_transform(img_size=self.img_size, mean=self.mean, std=self.std, train=train,
                                  interpolation=self.interpolation, crop_pct=self.crop_pct)

    def predict_transform(self) -> Callable:
        if self.small:
            return small_image_predict_transform(native_chans=self.native_chans, img_size=self.img_size,
                                                 in_chans=self.in_chans, mean=self.mean, std=self.std,
                                                 interpolation=self.interpolation, crop_pct=self.crop_pct)
        return self._transform(train=False)

    def _dataset(self, split: str, train: bool) -> ShardDataset:
        mode = "L" if self.native_chans == 1 else "RGB"
        return ShardDataset(shards.join(self.data_dir, split), self._transform(train), mode, self.small,
                            seed=torch.initial_seed() % 2**31 if train else self.seed, shuffle=train,
                            repeats=self.repeated_aug if train else 1, total=int(self.splits[split]["num_samples"]),
                            drop_last=train, storage_options=self.storage_options,
                            cache_dir=None if self.cache_dir is None else os.path.join(self.cache_dir, split),
                            max_cache_size=self.max_cache_size)

    def _setup(self, stage: str | None) -> None:
        val = "val" if "val" in self.splits else "test" if "test" in self.splits else None
        test = "test" if "test" in self.splits else val
        if stage in (None, "fit", "validate") and self.train_set is None:
            self.train_set = self._dataset("train", train=True)
            if val is None:
                raise ValueError(f"{self.data_dir} has no val/ or test/ split to validate on")
            self.val_set = self._dataset(val, train=False)
        if stage in (None, "test") and self.test_set is None:
            if test is None:
                raise ValueError(f"{self.data_dir} has no test/ or val/ split to test on")
            self.test_set = self._dataset(test, train=False)

    def _loader(self, dataset: Any, name: str, train: bool = False, **kwargs: Any) -> Any:
        if not isinstance(dataset, ShardDataset):  # predict: loose image files, the base class's loader
            return super()._loader(dataset, name, train=train, **kwargs)
        return ShardLoader(dataset, batch_size=self.batch_size, num_workers=self.num_workers,
                                   pin_memory=self.pin_memory, drop_last=train, **kwargs)


__all__ = ["StreamingDataModule", "ShardDataset", "ShardLoader", "RepeatedShuffle"]
