"""Transforms shared by the data modules: uint8 tensor pipelines for small in-memory images and timm's
ImageNet pipelines for image files."""

import math

import timm.data
import torch
from PIL import Image
from timm.data import auto_augment
from torchvision.transforms import v2


def _posterize(img: Image.Image, bits_to_keep: int, **__) -> Image.Image:
    """timm's RandAugment posterize, safe at 0 bits. At magnitude 10 (reached with ``mstd``) timm asks for 0 bits;
    Pillow < 13 gave a black image, Pillow >= 13 raises "bits must be between or equal to 1 and 8" mid-epoch."""
    if bits_to_keep >= 8:
        return img
    if bits_to_keep <= 0:
        return img.point(lambda _: 0)  # every bit dropped: black, as before Pillow 13
    return auto_augment.ImageOps.posterize(img, bits_to_keep)


for _name in ("Posterize", "PosterizeIncreasing", "PosterizeOriginal"):  # AugmentOp looks them up when built
    auto_augment.NAME_TO_OP[_name] = _posterize


def auto_augment_transform(config: str, img_size: int, mean: tuple[float, ...]):
    """timm's automatic augmentation from its config string on PIL images, as ``timm.data.create_transform`` builds
    it: ``rand-m9-mstd0.5-inc1`` (RandAugment), ``rand-n1-m10-mstd101`` (TrivialAugment: one op, uniform magnitude),
    ``augmix-m5-w3``, or an AutoAugment policy (``original``, ``v0``, ``3a``). Fill colour: ``mean``; translations
    up to 45 % of ``img_size``. A string timm cannot read is a ``ValueError`` naming it."""
    hparams = {"translate_const": int(img_size * 0.45), "img_mean": tuple(round(255 * m) for m in mean)}
    try:
        if config.startswith("rand"):
            return auto_augment.rand_augment_transform(config, hparams)
        if config.startswith("augmix"):
            return auto_augment.augment_and_mix_transform(config, hparams)
        return auto_augment.auto_augment_transform(config, hparams)
    except (AssertionError, KeyError, ValueError, IndexError) as err:
        raise ValueError(f"auto_augment={config!r} is not a timm augmentation string (e.g. 'rand-m9-mstd0.5-inc1', "
                         f"'rand-n1-m10-mstd101', 'augmix-m5-w3', 'original'): {err}") from None


def resize(size: int | tuple[int, int], interpolation: str) -> v2.Resize:
    """Resize with timm's interpolation name; ``size`` an int resizes the short side."""
    return v2.Resize(size, interpolation=v2.InterpolationMode(interpolation), antialias=True)


def scale_size(img_size: int, crop_pct: float) -> int:
    """Side the eval resize goes to before the centre crop of ``img_size``, as timm's eval transform."""
    return math.floor(img_size / crop_pct)


def channel_transform(native_chans: int, in_chans: int) -> v2.Transform:
    """Gray -> RGB by repeating the channel, RGB -> gray with luma weights; identity when they match."""
    return v2.Identity() if native_chans == in_chans else v2.Grayscale(num_output_channels=in_chans)


def small_image_transform(
    *,
    native_size: int,
    native_chans: int,
    img_size: int,
    in_chans: int,
    mean: tuple[float, ...],
    std: tuple[float, ...],
    train: bool,
    interpolation: str = "bilinear",
    crop_pct: float = 1.0,
    crop_padding: int = 4,
    random_erasing: float = 0.0,
    auto_augment: str | None = None,
    native_mean: tuple[float, ...] = (0.5,),
) -> v2.Compose:
    """Transform for one uint8 image tensor ``(C, H, W)`` of a small-image data set (Fashion-MNIST, CIFAR).

    Train: random crop with zero padding + horizontal flip at the native size, timm's ``auto_augment`` (RandAugment,
    on the PIL image), channel conversion, to float in [0, 1], resize to ``img_size`` if it differs, normalise.
    Eval: the same without the random steps; with ``crop_pct`` < 1 the resize goes to ``img_size / crop_pct``
    and the centre ``img_size`` is kept, as timm's eval transform.

    Args:
        native_size: Side of the stored images (28, 32).
        native_chans: Channels of the stored images.
        img_size: Output side.
        in_chans: Output channels.
        mean: Per-channel mean for the output channels.
        std: Per-channel std for the output channels.
        train: Add the random augmentation.
        interpolation: Resize interpolation: "nearest", "bilinear" or "bicubic" (antialiased).
        crop_pct: Eval only: fraction of the resized image kept by the centre crop, in (0, 1].
        crop_padding: Zero padding of the random crop; 0 disables the crop.
        random_erasing: Train only: probability of timm's ``RandomErasing`` (mode "pixel"), after normalising.
        auto_augment: Train only: a timm augmentation string (:func:`auto_augment_transform`); None = off.
        native_mean: Mean of the stored channels: the fill colour of auto_augment's geometric ops.

    Returns:
        A transform mapping ``(native_chans, S, S)`` uint8 to ``(in_chans, img_size, img_size)`` float32.
    """
    steps: list[v2.Transform] = []
    if train:
        if crop_padding > 0:
            steps.append(v2.RandomCrop(native_size, padding=crop_padding))
        steps.append(v2.RandomHorizontalFlip())
        if auto_augment:
            steps += [v2.ToPILImage(), auto_augment_transform(auto_augment, native_size, native_mean),
                      v2.PILToTensor()]
    steps += [channel_transform(native_chans, in_chans), v2.ToDtype(torch.float32, scale=True)]
    if not train and crop_pct < 1:
        steps += [resize(scale_size(img_size, crop_pct), interpolation), v2.CenterCrop(img_size)]
    elif img_size != native_size:
        steps.append(resize((img_size, img_size), interpolation))
    steps.append(v2.Normalize(mean, std))
    if train and random_erasing > 0:
        steps.append(timm.data.random_erasing.RandomErasing(probability=random_erasing, mode="pixel", device="cpu"))
    return v2.Compose(steps)


def small_image_predict_transform(
    *,
    native_chans: int,
    img_size: int,
    in_chans: int,
    mean: tuple[float, ...],
    std: tuple[float, ...],
    interpolation: str = "bilinear",
    crop_pct: float = 1.0,
) -> v2.Compose:
    """Eval transform for an arbitrary PIL image (already in the data set's native mode, "L" or "RGB").

    Resizes the short side to ``img_size / crop_pct`` and centre-crops ``img_size``, so the output is square
    whatever the input.
    """
    return v2.Compose([
        v2.PILToTensor(),  # (native_chans, H, W) uint8
        resize(scale_size(img_size, crop_pct), interpolation),
        v2.CenterCrop(img_size),
        channel_transform(native_chans, in_chans),
        v2.ToDtype(torch.float32, scale=True),
        v2.Normalize(mean, std),
    ])


def imagenet_transform(
    *, img_size: int, mean: tuple[float, ...], std: tuple[float, ...], train: bool,
    interpolation: str = "bilinear", crop_pct: float = timm.data.DEFAULT_CROP_PCT,
):
    """timm's ImageNet pipeline on PIL images.

    Train: RandomResizedCrop + flip + RandAugment ``rand-m9-mstd0.5-inc1`` + random erasing (p=0.25).
    Eval: resize to ``img_size / crop_pct`` and centre-crop ``img_size``.
    """
    if train:
        return timm.data.create_transform(
            img_size, is_training=True, auto_augment="rand-m9-mstd0.5-inc1", re_prob=0.25, mean=mean, std=std,
            interpolation=interpolation,
        )
    return timm.data.create_transform(img_size, is_training=False, mean=mean, std=std, interpolation=interpolation,
                                      crop_pct=crop_pct)
