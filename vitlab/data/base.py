"""The shared base of vitlab's data modules: arguments, resolved properties, splits and dataloaders."""

import os
from collections.abc import Callable

import lightning as L
import torch
from lightning.pytorch.utilities import rank_zero_warn
from torch.utils.data import DataLoader, Dataset

from vitlab.data.predict import ImageFilesDataset, collate_skip_none
from vitlab.data.resumable import ResumableDataLoader, SeededSampler
from vitlab.data.stats import check_crop_pct, check_interpolation, check_stats, values_for_channels


def default_num_workers() -> int:
    """Loader workers per process: the CPUs this process may use minus one for the main process, at most 8.

    Eight workers keep a GPU fed with ImageNet-style decoding; more mostly costs memory. On a 1-2 CPU
    machine this gives 0-1 (loading in the main process), which is also the fastest choice there.
    """
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(0, min(8, cpus - 1))


class ImageDataModule(L.LightningDataModule):
    """Base class: subclasses set the class attributes, ``classes``, and implement ``_setup`` and
    ``predict_transform``.

    Batches are ``(images (B, C, H, W) float32, labels (B,) int64)``; normalisation happens in the
    transforms. ``num_classes`` and ``classes`` are known right after ``__init__`` (LightningCLI links
    ``data.num_classes -> model.arch.num_classes``).

    Args:
        data_dir: Where the data set lives (or is downloaded to).
        batch_size: Samples per batch, per process.
        num_workers: Loader worker processes; None chooses :func:`default_num_workers`.
        img_size: Side of the (square) output images; None keeps the data set's native size.
        in_chans: Output channels, 1 or 3; None keeps the native channels. Gray <-> RGB is converted.
        val_split: Validation held out of train where the data set has no validation split: a fraction in
            [0, 1) or a count. 0 validates on the test split instead.
        seed: Seed of the validation split and of the subsets.
        augment: Random augmentation of the training images; False uses the eval transform.
        train_subset: Use only N training samples (a seeded random subset), for quick runs and tests.
        eval_subset: Use only N validation and N test samples (seeded random subsets).
        predict_dir: Folder of image files for ``predict``.
        pin_memory: Pin host memory for faster copies; None pins when CUDA is available.
        mean: Normalisation mean, 1 or 3 values (converted to ``in_chans`` as :func:`values_for_channels`); None =
            the data set's own statistics. ``vitlab fit --model.pretrained W`` fills it from the weights.
        std: Normalisation std, as ``mean``.
        interpolation: How images are resized, by timm's names (``bilinear``, ``bicubic``, ``nearest``; image
            folders also ``box``, ``hamming``, ``lanczos``); None = the data set's default.
        crop_pct: Eval centre crop as timm's: resize to ``img_size / crop_pct``, crop ``img_size``; in (0, 1].
            None = the data set's default (1.0 for small images, 0.875 for image folders).
        repeated_aug: DeiT's repeated augmentation: each drawn training image is used this many times per epoch,
            each copy augmented apart, the copies dealt to different processes (timm's RepeatAugSampler order);
            the epoch keeps its length. 1 = off; DeiT uses 3 on 8+ GPUs.
    """

    native_size: int | None = None  # side of the stored images; None when they vary (image folders)
    native_chans: int = 3
    native_mean: tuple[float, ...] = ()
    native_std: tuple[float, ...] = ()
    default_img_size: int = 224  # used when img_size is None and native_size is None
    interpolations: tuple[str, ...] = ("nearest", "bilinear", "bicubic")  # what the transforms can do
    default_interpolation: str = "bilinear"
    default_crop_pct: float = 1.0
    eval_crop_from_weights: bool = True  # the CLI takes crop_pct from the weights (training crops at random scales)

    def __init__(
        self,
        data_dir: str = "data",
        batch_size: int = 128,
        num_workers: int | None = None,
        img_size: int | None = None,
        in_chans: int | None = None,
        val_split: int | float = 0.1,
        seed: int = 0,
        augment: bool = True,
        train_subset: int | None = None,
        eval_subset: int | None = None,
        predict_dir: str | None = None,
        pin_memory: bool | None = None,
        mean: tuple[float, ...] | None = None,
        std: tuple[float, ...] | None = None,
        interpolation: str | None = None,
        crop_pct: float | None = None,
        repeated_aug: int = 1,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        for name, value, low in [("batch_size", batch_size, 1), ("num_workers", num_workers, 0),
                                 ("img_size", img_size, 1), ("train_subset", train_subset, 1),
                                 ("eval_subset", eval_subset, 1), ("repeated_aug", repeated_aug, 1)]:
            if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < low):
                raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")
        if in_chans not in (None, 1, 3):
            raise ValueError(f"in_chans must be 1, 3 or None (native), got {in_chans!r}")
        if isinstance(val_split, bool) or not (
            (isinstance(val_split, int) and val_split >= 0) or (isinstance(val_split, float) and 0 <= val_split < 1)
        ):
            raise ValueError(f"val_split must be a fraction in [0, 1) or a count >= 0, got {val_split!r}")
        self.data_dir = data_dir
        self.batch_size = batch_size
        self.num_workers = default_num_workers() if num_workers is None else num_workers
        self.val_split = val_split
        self.seed = seed
        self.augment = augment
        self.train_subset = train_subset
        self.eval_subset = eval_subset
        self.predict_dir = predict_dir
        self.repeated_aug = repeated_aug
        self.pin_memory = torch.cuda.is_available() if pin_memory is None else pin_memory
        self._in_chans = self.native_chans if in_chans is None else in_chans
        self._img_size = img_size or self.native_size or self.default_img_size
        self._mean = values_for_channels(self.native_mean if mean is None else check_stats("mean", mean),
                                         self._in_chans)
        self._std = values_for_channels(self.native_std if std is None else check_stats("std", std, positive=True),
                                        self._in_chans)
        self._interpolation = check_interpolation(interpolation, self.interpolations) or self.default_interpolation
        self._crop_pct = check_crop_pct(crop_pct) if crop_pct is not None else self.default_crop_pct
        self.train_set: Dataset | None = None
        self.val_set: Dataset | None = None
        self.test_set: Dataset | None = None
        self.predict_set: ImageFilesDataset | None = None
        self.predict_files: list[str] = []
        if os.path.exists(data_dir) and not os.path.isdir(data_dir):
            raise ValueError(f"data_dir {data_dir!r} is a file, not a folder: give the folder that holds the data set")
        if os.path.exists(data_dir) and not os.access(data_dir, os.R_OK | os.X_OK):
            raise PermissionError(f"data_dir {data_dir!r} exists but is not readable by this user (permission denied)")
        self._check_source()

    # ---- what the model needs to know
    @property
    def classes(self) -> list[str]:
        """Class names, index = label."""
        raise NotImplementedError

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def in_chans(self) -> int:
        """Channels of the images in a batch (after conversion)."""
        return self._in_chans

    @property
    def img_size(self) -> int:
        """Side of the square images in a batch."""
        return self._img_size

    @property
    def mean(self) -> tuple[float, ...]:
        """Normalisation mean, one per channel of ``in_chans``."""
        return self._mean

    @property
    def std(self) -> tuple[float, ...]:
        """Normalisation std, one per channel of ``in_chans``."""
        return self._std

    @property
    def interpolation(self) -> str:
        """How images are resized (timm's name)."""
        return self._interpolation

    @property
    def crop_pct(self) -> float:
        """Fraction of the resized image the eval centre crop keeps."""
        return self._crop_pct

    @property
    def data_config(self) -> dict:
        """What the model is fed, in timm's keys: ``input_size`` [C, H, W], ``mean``, ``std``, ``interpolation``,
        ``crop_pct``. Checkpoints store it, so predict, export and attention normalise as training did."""
        return {"input_size": [self.in_chans, self.img_size, self.img_size], "mean": self.mean, "std": self.std,
                "interpolation": self.interpolation, "crop_pct": self.crop_pct}

    @property
    def predict_mode(self) -> str:
        """PIL mode loose image files are decoded to before :meth:`predict_transform`."""
        return "L" if self.native_chans == 1 else "RGB"

    # ---- subclass hooks
    def _check_source(self) -> None:
        """Cheap checks of ``data_dir`` at construction, so a bad path fails before training starts."""

    def _setup(self, stage: str | None) -> None:
        """Build ``train_set``/``val_set`` (fit, validate) and ``test_set`` (test)."""
        raise NotImplementedError

    def predict_transform(self) -> Callable:
        """The eval transform for a PIL image in :attr:`predict_mode`."""
        raise NotImplementedError

    # ---- splits
    def num_val(self, n_train: int) -> int:
        """Number of samples ``val_split`` holds out of a training split of ``n_train``."""
        n_val = round(self.val_split * n_train) if isinstance(self.val_split, float) else self.val_split
        if n_val >= n_train:
            raise ValueError(f"val_split={self.val_split!r} leaves no training samples out of {n_train}")
        return n_val

    def split_indices(self, n_train: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Seeded, deterministic ``(train_indices, val_indices)`` partition of ``range(n_train)``."""
        perm = torch.randperm(n_train, generator=torch.Generator().manual_seed(self.seed))
        n_val = self.num_val(n_train)
        return perm[n_val:].sort().values, perm[:n_val].sort().values

    def take_subset(self, indices: torch.Tensor, size: int | None) -> torch.Tensor:
        """A seeded random ``size`` of ``indices`` (sorted), or all of them when ``size`` is None."""
        if size is None or size >= len(indices):
            return indices
        g = torch.Generator().manual_seed(self.seed + 1)
        return indices[torch.randperm(len(indices), generator=g)[:size]].sort().values

    # ---- Lightning hooks
    def setup(self, stage: str | None = None) -> None:
        if stage == "predict" or (stage is None and self.predict_dir is not None):
            self._setup_predict()
        if stage != "predict":
            self._setup(stage)

    def _setup_predict(self) -> None:
        if self.predict_dir is None:
            raise ValueError("predict_dir is not set: pass the folder of images to predict (data.predict_dir)")
        self.predict_set = ImageFilesDataset(self.predict_dir, self.predict_transform(), mode=self.predict_mode)
        self.predict_files = self.predict_set.files
        if not self.predict_files:
            rank_zero_warn(f"predict_dir {self.predict_dir!r} holds no image files")

    def _loader(self, dataset: Dataset | None, name: str, train: bool = False, **kwargs) -> DataLoader:
        """A loader over ``dataset``; the training one is a :class:`ResumableDataLoader` (exact mid-epoch
        resume, augmentation seeded per sample). Every loader has its own generator, so creating one never
        draws from the global random state that dropout and mixup use."""
        if dataset is None:
            raise RuntimeError(f"no {name} set: call setup() with the matching stage first")
        common = dict(batch_size=self.batch_size, num_workers=self.num_workers, pin_memory=self.pin_memory,
                      persistent_workers=self.num_workers > 0,
                      generator=torch.Generator().manual_seed(self.seed), **kwargs)
        if not train:
            return DataLoader(dataset, shuffle=False, **common)
        if len(dataset) == 0:
            raise ValueError(f"the training set is empty (data_dir={self.data_dir!r})")
        if len(dataset) < self.batch_size:
            rank_zero_warn(f"batch_size={self.batch_size} exceeds the {len(dataset)} training samples: "
                           f"each epoch is one batch of {len(dataset)}")
        trainer = self.trainer
        world, rank = (trainer.world_size, trainer.global_rank) if trainer is not None else (1, 0)
        # the order's seed: the one given to seed_everything (torch's initial seed), saved in checkpoints
        sampler = SeededSampler(dataset, num_replicas=world, rank=rank, shuffle=True,
                                seed=torch.initial_seed() % 2**63, repeats=self.repeated_aug)
        drop_last = len(sampler) > self.batch_size  # no ragged last batch, but never an empty epoch
        return ResumableDataLoader(dataset, sampler=sampler, drop_last=drop_last, **common)

    def train_dataloader(self) -> DataLoader:
        return self._loader(self.train_set, "train", train=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.val_set, "validation")

    def test_dataloader(self) -> DataLoader:
        return self._loader(self.test_set, "test")

    def predict_dataloader(self) -> DataLoader:
        if self.predict_set is None:
            self._setup_predict()
        return self._loader(self.predict_set, "predict", collate_fn=collate_skip_none)
