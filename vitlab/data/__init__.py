"""LightningDataModules for Fashion-MNIST, CIFAR-10/100, image-folder trees (ImageNet) and litdata shards
(``vitlab prepare``), plus a data set of loose image files for prediction.

Names load on first use (PEP 562), so ``vitlab.data.stats`` (data-set constants the model presets also read)
imports without Lightning; ``from vitlab.data import *`` loads every data module.
"""
from importlib import import_module
from typing import Any

_WHERE = {
    "ImageDataModule": "base",
    "FashionMNISTDataModule": "fashion_mnist",
    "CIFAR10DataModule": "cifar",
    "CIFAR100DataModule": "cifar",
    "DigitsDataModule": "digits",
    "ImageFolderDataModule": "image_folder",
    "ImageNetDataModule": "image_folder",
    "StreamingDataModule": "streaming",
    "ImageFilesDataset": "predict",
    "collate_skip_none": "predict",
    "ImageDecodeError": "image_io",
    "load_image": "image_io",
}
__all__ = list(_WHERE)


def __getattr__(name: str) -> Any:
    if name not in _WHERE:
        raise AttributeError(f"module 'vitlab.data' has no attribute {name!r}")
    value = getattr(import_module(f"vitlab.data.{_WHERE[name]}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
