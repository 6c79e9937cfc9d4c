"""Per-data-set constants: class names, native image size/channels and normalisation statistics, and the checks of
user-given statistics, interpolation and crop.

The one place these numbers live. Means/stds are per channel over the training split, in [0, 1] units.
"""

import math

from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD

# ITU-R 601-2 luma weights, the ones PIL and torchvision use to turn RGB into grayscale.
LUMA_WEIGHTS = (0.299, 0.587, 0.114)

FASHION_MNIST_MEAN = (0.2860,)
FASHION_MNIST_STD = (0.3530,)
FASHION_MNIST_CLASSES = [
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
]

CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2470, 0.2435, 0.2616)
CIFAR10_CLASSES = [
    "airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck",
]

CIFAR100_MEAN = (0.5071, 0.4865, 0.4409)
CIFAR100_STD = (0.2673, 0.2564, 0.2762)
CIFAR100_CLASSES = [  # the "fine" labels, in the order of cifar-100-python/meta
    "apple", "aquarium_fish", "baby", "bear", "beaver", "bed", "bee", "beetle", "bicycle", "bottle",
    "bowl", "boy", "bridge", "bus", "butterfly", "camel", "can", "castle", "caterpillar", "cattle",
    "chair", "chimpanzee", "clock", "cloud", "cockroach", "couch", "crab", "crocodile", "cup", "dinosaur",
    "dolphin", "elephant", "flatfish", "forest", "fox", "girl", "hamster", "house", "kangaroo", "keyboard",
    "lamp", "lawn_mower", "leopard", "lion", "lizard", "lobster", "man", "maple_tree", "motorcycle", "mountain",
    "mouse", "mushroom", "oak_tree", "orange", "orchid", "otter", "palm_tree", "pear", "pickup_truck", "pine_tree",
    "plain", "plate", "poppy", "porcupine", "possum", "rabbit", "raccoon", "ray", "road", "rocket",
    "rose", "sea", "seal", "shark", "shrew", "skunk", "skyscraper", "snail", "snake", "spider",
    "squirrel", "streetcar", "sunflower", "sweet_pepper", "table",
    "tank", "telephone", "television", "tiger", "tractor",
    "train", "trout", "tulip", "turtle", "wardrobe", "whale", "willow_tree", "wolf", "woman", "worm",
]

IMAGENET_MEAN = tuple(IMAGENET_DEFAULT_MEAN)
IMAGENET_STD = tuple(IMAGENET_DEFAULT_STD)


def values_for_channels(values: tuple[float, ...], in_chans: int) -> tuple[float, ...]:
    """Per-channel values (a mean or a std) for ``in_chans`` channels: gray -> RGB repeats the one value, RGB ->
    gray takes the luma-weighted mean (for a std an approximation that ignores the correlation between channels,
    close enough for normalisation)."""
    if len(values) == in_chans:
        return tuple(values)
    if len(values) == 1 and in_chans == 3:
        return tuple(values) * 3
    if len(values) == 3 and in_chans == 1:
        return (round(sum(w * x for w, x in zip(LUMA_WEIGHTS, values)), 4),)
    raise ValueError(f"cannot adapt {len(values)}-channel statistics to in_chans={in_chans}")


def stats_for_channels(
    mean: tuple[float, ...], std: tuple[float, ...], in_chans: int
) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Adapt per-channel statistics to the channel count the images are converted to (see
    :func:`values_for_channels`).

    Args:
        mean: Native per-channel means (length 1 or 3).
        std: Native per-channel stds, same length as ``mean``.
        in_chans: Target channel count, 1 or 3.

    Returns:
        ``(mean, std)``, each of length ``in_chans``.
    """
    return values_for_channels(mean, in_chans), values_for_channels(std, in_chans)


def check_stats(name: str, values, positive: bool = False) -> tuple[float, ...]:
    """``values`` as a tuple of 1 or 3 finite numbers (> 0 when ``positive``); ValueError naming ``name`` else."""
    ok = isinstance(values, (list, tuple)) and len(values) in (1, 3) and all(
        isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and (v > 0 or not positive)
        for v in values)
    if not ok:
        what = "positive finite numbers" if positive else "finite numbers"
        raise ValueError(f"{name} must be 1 or 3 {what} (one per channel; gray <-> RGB is converted), "
                         f"got {values!r}")
    return tuple(float(v) for v in values)


def check_interpolation(name: str | None, allowed: tuple[str, ...]) -> str | None:
    """``name`` if it is one of ``allowed`` (timm's interpolation names) or None; ValueError naming it else."""
    if name is not None and name not in allowed:
        raise ValueError(f"interpolation must be one of {list(allowed)}, got {name!r}")
    return name


def check_crop_pct(value) -> float:
    """``value`` as a float in (0, 1]; ValueError naming crop_pct else."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value <= 1:
        raise ValueError(f"crop_pct must be a number in (0, 1], got {value!r}")
    return float(value)
