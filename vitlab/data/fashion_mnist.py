"""Fashion-MNIST (Xiao et al. 2017): 70k 28x28 grayscale images of 10 kinds of clothing, read from the
original IDX files."""

import gzip
import os

import numpy as np
import torch

from vitlab.data.in_memory import InMemoryDataModule
from vitlab.data.stats import FASHION_MNIST_CLASSES, FASHION_MNIST_MEAN, FASHION_MNIST_STD

DEBIAN_DIR = "/usr/share/datasets/fashion-mnist"  # Debian's `dataset-fashion-mnist` package
FILES = {  # split -> (images, labels) file names, each also found with a ".gz" suffix
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}


def read_idx(path: str, ndim: int) -> np.ndarray:
    """Read an IDX file of unsigned bytes (plain or gzip) with ``ndim`` dimensions.

    Raises:
        ValueError: Bad magic number, wrong number of dimensions or a size that does not match the header;
            the message names the file.
    """
    opener = gzip.open if path.endswith(".gz") else open
    try:
        with opener(path, "rb") as f:
            data = f.read()
    except PermissionError as e:
        raise PermissionError(f"cannot read IDX file {path!r}: permission denied") from e
    except (OSError, EOFError) as e:  # gzip.BadGzipFile is an OSError; EOFError: truncated gzip
        raise ValueError(f"corrupt IDX file {path!r}: {e}") from e
    # header: 2 zero bytes, type code 0x08 (unsigned byte), number of dims, then one big-endian uint32 per dim
    if data[:3] != b"\x00\x00\x08" or len(data) < 4 or data[3] != ndim:
        raise ValueError(f"corrupt IDX file {path!r}: expected the magic number of a {ndim}-d unsigned-byte "
                         f"array (0000080{ndim}), got {data[:4].hex() or 'an empty file'}")
    offset = 4 + 4 * ndim
    if len(data) < offset:
        raise ValueError(f"corrupt IDX file {path!r}: truncated header")
    shape = tuple(np.frombuffer(data, ">u4", count=ndim, offset=4).tolist())
    if len(data) - offset != int(np.prod(shape)):
        raise ValueError(f"corrupt IDX file {path!r}: header shape {shape} needs {int(np.prod(shape))} bytes "
                         f"of data, found {len(data) - offset}")
    return np.frombuffer(data, np.uint8, offset=offset).reshape(shape)


def find_file(folder: str, name: str) -> str | None:
    """``folder/name`` or ``folder/name.gz``, whichever exists first, else None."""
    for candidate in (os.path.join(folder, name), os.path.join(folder, name + ".gz")):
        if os.path.isfile(candidate):
            return candidate
    return None


class FashionMNISTDataModule(InMemoryDataModule):
    """Fashion-MNIST: 60k training (minus ``val_split``) and 10k test images, 10 classes, 28x28x1.

    The IDX files are looked for in ``data_dir``, then ``data_dir/FashionMNIST/raw`` (torchvision's layout),
    then ``/usr/share/datasets/fashion-mnist`` (Debian's ``dataset-fashion-mnist``); if none has them they are
    downloaded with torchvision into ``data_dir``. Arguments as :class:`ImageDataModule`.
    """

    native_size = 28
    native_chans = 1
    native_mean = FASHION_MNIST_MEAN
    native_std = FASHION_MNIST_STD
    crop_padding = 2

    @property
    def classes(self) -> list[str]:
        return list(FASHION_MNIST_CLASSES)

    def search_dirs(self) -> list[str]:
        """Folders searched for the IDX files, in order."""
        return [self.data_dir, os.path.join(self.data_dir, "FashionMNIST", "raw"), DEBIAN_DIR]

    def find_dir(self) -> str | None:
        """The first search folder holding all four IDX files, else None."""
        names = [n for pair in FILES.values() for n in pair]
        return next((d for d in self.search_dirs() if all(find_file(d, n) for n in names)), None)

    def prepare_data(self) -> None:
        """Download into ``data_dir`` with torchvision when no search folder has the files."""
        if self.find_dir() is not None:
            return
        import torchvision

        try:
            torchvision.datasets.FashionMNIST(root=self.data_dir, download=True)
        except Exception as e:  # no network, proxy, disk: report together with where we looked
            looked = "\n  ".join(self.search_dirs())
            raise FileNotFoundError(
                f"Fashion-MNIST IDX files (train-images-idx3-ubyte[.gz] ...) not found in:\n  {looked}\n"
                f"and downloading into {self.data_dir!r} failed ({type(e).__name__}: {e}).\n"
                "Get them with `apt-get install dataset-fashion-mnist`, or run once with network access."
            ) from e

    def load_split(self, train: bool) -> tuple[torch.Tensor, torch.Tensor]:
        folder = self.find_dir()
        if folder is None:
            self.prepare_data()
            folder = self.find_dir()
        image_name, label_name = FILES["train" if train else "test"]
        image_path, label_path = find_file(folder, image_name), find_file(folder, label_name)
        images, labels = read_idx(image_path, ndim=3), read_idx(label_path, ndim=1)  # (N, 28, 28), (N,)
        if len(images) != len(labels):
            raise ValueError(f"{image_path!r} has {len(images)} images but {label_path!r} has {len(labels)} labels")
        if images.shape[1:] != (28, 28) or labels.max(initial=0) >= len(FASHION_MNIST_CLASSES):
            raise ValueError(f"{image_path!r} / {label_path!r} do not hold 28x28 images with labels 0-9")
        images = torch.from_numpy(images.copy()).unsqueeze(1)  # (N, 1, 28, 28) uint8
        return images, torch.from_numpy(labels.astype(np.int64))
