"""Image-folder trees (``train/<class>/*.jpg``, ``val/<class>/...``, optional ``test/``), ImageNet included.

Trees are read by :func:`vitlab.data.scan.scan_class_folders`: symlinked files are read, symlinked folders followed
unless they loop or would make images be read twice (an error naming the link)."""

import copy
import functools
import os
from collections.abc import Callable

import torch
from timm.data import DEFAULT_CROP_PCT
from torch.utils.data import Subset
from torchvision.datasets import ImageFolder

from vitlab.data.base import ImageDataModule
from vitlab.data.image_io import IMG_EXTENSIONS, load_image
from vitlab.data.scan import has_images, scan_class_folders
from vitlab.data.stats import IMAGENET_MEAN, IMAGENET_STD
from vitlab.data.transforms import imagenet_transform

LAYOUT = "expected DATA_DIR/train/<class>/<image>, DATA_DIR/val/<class>/<image> and optionally DATA_DIR/test/..."


def is_image_file(path: str) -> bool:
    return path.lower().endswith(IMG_EXTENSIONS)


def class_folders(folder: str) -> list[str]:
    """Sorted names of the sub-folders of ``folder`` (as torchvision's ``find_classes``)."""
    return sorted(e.name for e in os.scandir(folder) if e.is_dir() and not e.name.startswith("."))


class _FixedClassesImageFolder(ImageFolder):
    """ImageFolder whose class list is given (train's), so val/test labels mean the same as train's."""

    def __init__(self, root: str, classes: list[str], **kwargs) -> None:
        self._given_classes = classes
        super().__init__(root, **kwargs)

    def find_classes(self, directory: str) -> tuple[list[str], dict[str, int]]:
        return self._given_classes, {c: i for i, c in enumerate(self._given_classes)}

    @staticmethod
    def make_dataset(directory: str, class_to_idx: dict[str, int], extensions: tuple[str, ...] | None = None,
                     is_valid_file: Callable[[str], bool] | None = None, **kwargs) -> list[tuple[str, int]]:
        """torchvision's scan (which follows symlink loops) replaced by vitlab's (see :mod:`vitlab.data.scan`)."""
        if is_valid_file is None and extensions:
            def is_valid_file(path: str) -> bool:
                return path.lower().endswith(tuple(extensions))
        return scan_class_folders(directory, class_to_idx, is_valid_file or is_image_file)


class ImageFolderDataModule(ImageDataModule):
    """Any tree of class folders; class names are the folder names under ``train/``, sorted.

    Without ``val/``, validation is ``val_split`` held out of train. Without ``test/``, test uses the
    validation set. Images of every PIL mode are decoded to RGB (``L`` when ``in_chans=1``); a file that
    cannot be decoded stops loading with an error naming it. Transforms are timm's ImageNet pipelines
    (RandAugment ``rand-m9-mstd0.5-inc1``, random erasing 0.25) with ImageNet mean/std, bilinear resizing
    and a 0.875 eval crop unless ``mean``/``std``/``interpolation``/``crop_pct`` say otherwise; ``img_size``
    defaults to 224. Arguments as :class:`ImageDataModule`.
    """

    native_chans = 3
    native_mean = IMAGENET_MEAN
    native_std = IMAGENET_STD
    default_img_size = 224
    interpolations = ("nearest", "bilinear", "bicubic", "box", "hamming", "lanczos")  # PIL's, as timm names them
    default_crop_pct = DEFAULT_CROP_PCT

    def _check_source(self) -> None:
        """Read the class folders of ``train/`` now: ``num_classes`` is needed before ``setup``."""
        train_dir = os.path.join(self.data_dir, "train")
        if not os.path.isdir(train_dir):
            missing = self.data_dir if not os.path.isdir(self.data_dir) else train_dir
            raise FileNotFoundError(f"{missing!r} does not exist; {LAYOUT}")
        self._classes = class_folders(train_dir)
        if not self._classes:
            raise ValueError(f"{train_dir!r} has no class folders; {LAYOUT}")

    @property
    def classes(self) -> list[str]:
        return list(self._classes)

    @property
    def predict_mode(self) -> str:
        return "L" if self.in_chans == 1 else "RGB"

    def _transform(self, train: bool) -> Callable:
        return imagenet_transform(img_size=self.img_size, mean=self.mean, std=self.std, train=train,
                                  interpolation=self.interpolation, crop_pct=self.crop_pct)

    def predict_transform(self) -> Callable:
        return self._transform(train=False)

    def _folder(self, split: str, train: bool) -> ImageFolder:
        """The ImageFolder of ``data_dir/split`` with train's classes; clear errors for bad trees."""
        root = os.path.join(self.data_dir, split)
        extra = sorted(set(class_folders(root)) - set(self._classes))
        if extra:
            raise ValueError(f"{root!r} has class folders that train/ lacks: {extra}")
        try:
            return _FixedClassesImageFolder(
                root, self._classes, transform=self._transform(train and self.augment),
                loader=functools.partial(load_image, mode=self.predict_mode), is_valid_file=is_image_file,
            )
        except FileNotFoundError as e:  # torchvision: some class has no image file
            empty = [os.path.join(root, c) for c in self._classes if not self._has_images(os.path.join(root, c))]
            raise ValueError(
                f"class folders missing or without image files ({', '.join(IMG_EXTENSIONS)}): {empty}"
            ) from e

    @staticmethod
    def _has_images(folder: str) -> bool:
        return has_images(folder, is_image_file)

    def _setup(self, stage: str | None) -> None:
        has_val = os.path.isdir(os.path.join(self.data_dir, "val"))
        has_test = os.path.isdir(os.path.join(self.data_dir, "test"))
        if stage in (None, "fit", "validate") and self.train_set is None:
            train = self._folder("train", train=True)
            train_idx = torch.arange(len(train))
            if has_val:
                val, val_idx = self._folder("val", train=False), None
            elif self.val_split == 0:
                if not has_test:
                    raise FileNotFoundError(f"no val/ or test/ in {self.data_dir!r} and val_split=0; {LAYOUT}")
                val, val_idx = self._folder("test", train=False), None
            else:  # hold out val_split of train, with the eval transform
                val = copy.copy(train)
                val.transform = self._transform(train=False)
                train_idx, val_idx = self.split_indices(len(train))
            val_idx = torch.arange(len(val)) if val_idx is None else val_idx
            self.train_set = Subset(train, self.take_subset(train_idx, self.train_subset).tolist())
            self.val_set = Subset(val, self.take_subset(val_idx, self.eval_subset).tolist())
        if stage in (None, "test") and self.test_set is None:
            if has_test or has_val:
                test = self._folder("test" if has_test else "val", train=False)
                self.test_set = Subset(test, self.take_subset(torch.arange(len(test)), self.eval_subset).tolist())
            else:  # test falls back to the validation set
                self._setup("validate")
                self.test_set = self.val_set


class ImageNetDataModule(ImageFolderDataModule):
    """ImageNet-1k as an image-folder tree (``train/n01440764/*.JPEG``; ``val/`` sorted into the same wnid
    folders, e.g. with the usual ``valprep.sh``). 224 px, timm's ImageNet augmentation and mean/std.

    ``classes`` are the wnid folder names; :attr:`class_descriptions` gives readable names.
    """

    @property
    def class_descriptions(self) -> list[str]:
        """Readable names (``"tench, Tinca tinca"``) from timm's ImageNet info; the wnid where unknown."""
        from timm.data import ImageNetInfo

        info = ImageNetInfo()

        def describe(wnid: str) -> str:
            try:
                return info.label_name_to_description(wnid)
            except KeyError:
                return wnid

        return [describe(c) for c in self._classes]
