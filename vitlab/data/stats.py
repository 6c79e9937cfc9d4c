"""Per-data-set constants: class names, native image size/channels and normalisation statistics.

The one place these numbers live. Means/stds are per channel over the training split, in [0, 1] units.
"""

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


def stats_for_channels(
    mean: tuple[float, ...], std: tuple[float, ...], in_chans: int
) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Adapt per-channel statistics to the channel count the images are converted to.

    Gray -> RGB repeats the single value. RGB -> gray takes the luma-weighted mean of the channel means and
    stds; for the std that is an approximation (it ignores the correlation between channels), close enough
    for normalisation.

    Args:
        mean: Native per-channel means (length 1 or 3).
        std: Native per-channel stds, same length as ``mean``.
        in_chans: Target channel count, 1 or 3.

    Returns:
        ``(mean, std)``, each of length ``in_chans``.
    """
    if len(mean) == in_chans:
        return tuple(mean), tuple(std)
    if len(mean) == 1 and in_chans == 3:
        return tuple(mean) * 3, tuple(std) * 3
    if len(mean) == 3 and in_chans == 1:
        luma = lambda v: (round(sum(w * x for w, x in zip(LUMA_WEIGHTS, v)), 4),)  # noqa: E731
        return luma(mean), luma(std)
    raise ValueError(f"cannot adapt {len(mean)}-channel statistics to in_chans={in_chans}")
