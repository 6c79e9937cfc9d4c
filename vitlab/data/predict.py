"""A data set over loose image files for prediction, which skips files it cannot decode."""

import logging
import os
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from torch.utils.data import default_collate

from vitlab.data.image_io import IMG_EXTENSIONS, ImageDecodeError, load_image

log = logging.getLogger(__name__)


def list_image_files(folder: str | os.PathLike) -> list[str]:
    """Sorted paths of the image files directly in ``folder`` (by extension, case-insensitive)."""
    if not os.path.isdir(folder):
        raise FileNotFoundError(f"predict folder {os.fspath(folder)!r} does not exist or is not a directory")
    return sorted(
        e.path for e in os.scandir(folder) if e.is_file() and e.name.lower().endswith(IMG_EXTENSIONS)
    )


def check_predict_dir(folder: str | os.PathLike | None) -> None:
    """Raise ``ValueError`` (one line, naming it) unless ``folder`` is an existing folder: ``vitlab predict`` checks
    it before the run folder is made, so a wrong path leaves nothing behind."""
    if folder is None:
        raise ValueError("predict needs data.predict_dir: the folder of images to predict")
    if not os.path.exists(folder):
        raise ValueError(f"data.predict_dir {os.fspath(folder)!r} does not exist")
    if not os.path.isdir(folder):
        raise ValueError(f"data.predict_dir {os.fspath(folder)!r} is a file, not a folder: give the folder that "
                         f"holds the images")


class ImageFilesDataset(torch.utils.data.Dataset):
    """Images from a folder (or an explicit list of files), returned as ``(image_tensor, index)``.

    A file that cannot be decoded gives ``None`` and a one-line warning naming it, instead of stopping the
    whole prediction; use :func:`collate_skip_none` as the loader's ``collate_fn``. The index maps back to
    ``dataset.files[index]``.

    Args:
        folder_or_files: A folder (its image files, sorted) or a sequence of file paths (kept in order).
        transform: Maps the PIL image to a tensor.
        mode: PIL mode the images are converted to before ``transform`` ("RGB" or "L").
    """

    def __init__(
        self,
        folder_or_files: str | os.PathLike | Sequence[str | os.PathLike],
        transform: Callable,
        mode: str = "RGB",
    ) -> None:
        if isinstance(folder_or_files, (str, Path)):
            self.files = list_image_files(folder_or_files)
        else:
            self.files = [os.fspath(f) for f in folder_or_files]
        self.transform = transform
        self.mode = mode

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int] | None:
        try:
            img = load_image(self.files[index], self.mode)
        except ImageDecodeError as e:
            log.warning("skipping %s", e)
            return None
        return self.transform(img), index


def collate_skip_none(batch: list) -> tuple[torch.Tensor, torch.Tensor] | None:
    """Collate ``(image, index)`` pairs, dropping the ``None`` of undecodable files.

    Returns:
        ``(images (B, C, H, W), indices (B,) int64)``, or ``None`` when every file of the batch failed.
    """
    batch = [item for item in batch if item is not None]
    return default_collate(batch) if batch else None
