"""Writers of small data sets in their real on-disk formats, for the data tests."""

import gzip
import os
import pickle
import struct

import numpy as np
from PIL import Image

from vitlab.data.stats import CIFAR10_CLASSES, CIFAR100_CLASSES


def write_idx(path, array: np.ndarray) -> None:
    """An IDX file of unsigned bytes (gzip when ``path`` ends in .gz)."""
    header = bytes([0, 0, 0x08, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    opener = gzip.open if str(path).endswith(".gz") else open
    with opener(path, "wb") as f:
        f.write(header + array.astype(np.uint8).tobytes())


def write_fashion_mnist(folder, n_train: int = 40, n_test: int = 12, gz: bool = True) -> None:
    """The four Fashion-MNIST IDX files with random images; labels cycle 0..9."""
    rng = np.random.default_rng(0)
    os.makedirs(folder, exist_ok=True)
    suffix = ".gz" if gz else ""
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        write_idx(os.path.join(folder, f"{prefix}-images-idx3-ubyte{suffix}"), rng.integers(0, 256, (n, 28, 28)))
        write_idx(os.path.join(folder, f"{prefix}-labels-idx1-ubyte{suffix}"), np.arange(n) % 10)


def _pickle(path, obj) -> None:
    # The real files are Python 2 pickles with str keys, which torchvision reads with encoding="latin1".
    with open(path, "wb") as f:
        pickle.dump(obj, f, protocol=2)


def write_cifar(root, hundred: bool = False, per_batch: int = 6, n_test: int = 10) -> str:
    """A small ``cifar-10-batches-py`` (5 train batches + test) or ``cifar-100-python`` folder in ``root``."""
    rng = np.random.default_rng(0)
    n_classes = 100 if hundred else 10

    def batch(n: int, start: int = 0) -> dict:
        labels = [(start + i) % n_classes for i in range(n)]
        key = "fine_labels" if hundred else "labels"
        return {"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8), key: labels, "coarse_labels": labels}

    if hundred:
        folder = os.path.join(root, "cifar-100-python")
        os.makedirs(folder)
        _pickle(os.path.join(folder, "train"), batch(5 * per_batch))
        _pickle(os.path.join(folder, "meta"), {"fine_label_names": CIFAR100_CLASSES, "coarse_label_names": []})
    else:
        folder = os.path.join(root, "cifar-10-batches-py")
        os.makedirs(folder)
        for i in range(1, 6):
            _pickle(os.path.join(folder, f"data_batch_{i}"), batch(per_batch, start=i))
        _pickle(os.path.join(folder, "batches.meta"), {"label_names": CIFAR10_CLASSES})
    _pickle(os.path.join(folder, "test" if hundred else "test_batch"), batch(n_test))
    return folder


def save_image(path, mode: str, size=(20, 24), **kwargs) -> None:
    """A real image file of PIL ``mode`` (format from the extension)."""
    rng = np.random.default_rng(len(str(path)))
    w, h = size
    if mode == "I;16":
        img = Image.fromarray(np.full((h, w), 128 * 257, dtype=np.uint16))  # mid-gray in 16 bits
    elif mode == "P":
        img = Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).convert("P")
        kwargs.setdefault("transparency", 0)
    else:
        img = Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).convert(mode)
    img.save(path, **kwargs)
