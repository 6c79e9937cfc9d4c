"""LightningDataModules for Fashion-MNIST, CIFAR-10/100 and image-folder trees (ImageNet), plus a data set of
loose image files for prediction."""

from vitlab.data.base import ImageDataModule
from vitlab.data.cifar import CIFAR10DataModule, CIFAR100DataModule
from vitlab.data.digits import DigitsDataModule
from vitlab.data.fashion_mnist import FashionMNISTDataModule
from vitlab.data.image_folder import ImageFolderDataModule, ImageNetDataModule
from vitlab.data.image_io import ImageDecodeError, load_image
from vitlab.data.predict import ImageFilesDataset, collate_skip_none

__all__ = [
    "ImageDataModule",
    "FashionMNISTDataModule",
    "CIFAR10DataModule",
    "CIFAR100DataModule",
    "DigitsDataModule",
    "ImageFolderDataModule",
    "ImageNetDataModule",
    "ImageFilesDataset",
    "collate_skip_none",
    "ImageDecodeError",
    "load_image",
]
