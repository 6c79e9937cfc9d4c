"""The data modules' mean/std/interpolation/crop_pct arguments: what they do to the tensors of every transform path
(per-sample, on-device, predict, image folders), the resolved ``data_config``, and errors that name the field."""
import math

import pytest
import torch
from data_files import save_image, write_fashion_mnist
from PIL import Image

from vitlab.data import CIFAR10DataModule, FashionMNISTDataModule, ImageFolderDataModule
from vitlab.data.stats import FASHION_MNIST_MEAN, FASHION_MNIST_STD
from vitlab.data.transforms import small_image_transform


@pytest.fixture
def fmnist(tmp_path):
    write_fashion_mnist(tmp_path, n_train=24, n_test=8)
    return str(tmp_path)


def eval_images(dm) -> torch.Tensor:
    dm.setup("fit")
    return torch.stack([dm.val_set[i][0] for i in range(len(dm.val_set))])


def raw_val(dm) -> torch.Tensor:
    """The validation images as floats in [0, 1], (N, 1, 28, 28)."""
    return torch.stack([dm.val_set.images[j] for j in dm.val_set.indices]).float() / 255


def test_defaults_are_the_data_sets_own(fmnist):
    dm = FashionMNISTDataModule(data_dir=fmnist, num_workers=0, val_split=8)
    assert dm.data_config == {"input_size": [1, 28, 28], "mean": FASHION_MNIST_MEAN, "std": FASHION_MNIST_STD,
                              "interpolation": "bilinear", "crop_pct": 1.0}
    folder_defaults = ImageFolderDataModule.default_interpolation, ImageFolderDataModule.default_crop_pct
    assert folder_defaults == ("bilinear", 0.875)  # what timm's create_transform used before these arguments


def test_mean_and_std_normalise_the_batches(fmnist):
    dm = FashionMNISTDataModule(data_dir=fmnist, num_workers=0, val_split=8, mean=(0.5,), std=(0.25,))
    torch.testing.assert_close(eval_images(dm), (raw_val(dm) - 0.5) / 0.25)
    assert dm.data_config["mean"] == (0.5,) and dm.data_config["std"] == (0.25,)


def test_rgb_statistics_for_gray_data_and_back(fmnist):
    to_gray = FashionMNISTDataModule(data_dir=fmnist, num_workers=0, mean=(0.485, 0.456, 0.406),
                                     std=(0.229, 0.224, 0.225))
    assert to_gray.mean == (round(0.299 * 0.485 + 0.587 * 0.456 + 0.114 * 0.406, 4),)  # luma, as stats.py
    to_rgb = FashionMNISTDataModule(data_dir=fmnist, num_workers=0, in_chans=3, mean=[0.5], std=[0.5])
    assert to_rgb.mean == (0.5, 0.5, 0.5) and to_rgb.data_config["input_size"] == [3, 28, 28]


@pytest.mark.parametrize("kwargs, named", [
    ({"mean": (0.1, 0.2)}, "mean"),
    ({"std": (0.5, 0.0, 0.5)}, "std"),
    ({"std": (-1.0,)}, "std"),
    ({"mean": (float("nan"),)}, "mean"),
    ({"mean": ("a",)}, "mean"),
    ({"interpolation": "cubic"}, "'cubic'"),
    ({"interpolation": "lanczos"}, "interpolation"),  # PIL only: not for tensor images
    ({"crop_pct": 0.0}, "crop_pct"),
    ({"crop_pct": 1.5}, "1.5"),
])
def test_bad_values_are_named(kwargs, named):
    with pytest.raises(ValueError, match=named):
        CIFAR10DataModule(**kwargs)


def test_interpolation_changes_the_resized_images(fmnist):
    common = dict(data_dir=fmnist, num_workers=0, val_split=8, img_size=40)
    bilinear = eval_images(FashionMNISTDataModule(**common))
    bicubic = eval_images(FashionMNISTDataModule(**common, interpolation="bicubic"))
    nearest = eval_images(FashionMNISTDataModule(**common, interpolation="nearest"))
    assert bilinear.shape == bicubic.shape == nearest.shape == (8, 1, 40, 40)
    assert not torch.allclose(bilinear, bicubic) and not torch.allclose(bilinear, nearest)
    dm = FashionMNISTDataModule(**common, interpolation="nearest", mean=(0.0,), std=(1.0,))
    levels = eval_images(dm) * 255  # nearest only repeats stored pixels: still whole uint8 levels
    torch.testing.assert_close(levels, levels.round(), atol=1e-4, rtol=0)


def test_crop_pct_resizes_larger_then_crops_the_centre(fmnist):
    dm = FashionMNISTDataModule(data_dir=fmnist, num_workers=0, val_split=8, crop_pct=0.875, mean=(0.0,),
                                std=(1.0,))
    images = eval_images(dm)
    big = math.floor(28 / 0.875)  # 32, as timm's eval transform
    expected = torch.nn.functional.interpolate(raw_val(dm), size=(big, big), mode="bilinear", antialias=True)
    torch.testing.assert_close(images, expected[..., 2:30, 2:30])
    train = small_image_transform(native_size=28, native_chans=1, img_size=28, in_chans=1, mean=(0.0,),
                                  std=(1.0,), train=True, crop_pct=0.5, crop_padding=0)
    x = torch.zeros(1, 28, 28, dtype=torch.uint8)
    x[:, :, :14] = 255
    assert train(x).shape == (1, 28, 28) and train(x).mean() == pytest.approx(0.5)  # no crop in training


def test_on_device_batches_match_the_per_sample_transform(fmnist):
    kwargs = dict(data_dir=fmnist, num_workers=0, val_split=8, batch_size=8, img_size=36, in_chans=3,
                  mean=(0.4, 0.5, 0.6), std=(0.2, 0.3, 0.4), interpolation="bicubic", crop_pct=0.9)
    per_sample = eval_images(FashionMNISTDataModule(**kwargs))
    dm = FashionMNISTDataModule(**kwargs, on_device=True)
    dm.setup("fit")
    x, _ = next(iter(dm.val_dataloader()))
    torch.testing.assert_close(x, per_sample, atol=1e-5, rtol=0)


def test_predict_transform_uses_them(fmnist, tmp_path):
    folder = tmp_path / "pred"
    folder.mkdir()
    Image.new("L", (56, 40), 128).save(folder / "gray.png")
    dm = FashionMNISTDataModule(data_dir=fmnist, num_workers=0, predict_dir=str(folder), mean=(0.25,),
                                std=(0.5,), interpolation="bicubic", crop_pct=0.5)
    dm.setup("predict")
    x, _ = dm.predict_set[0]
    assert x.shape == (1, 28, 28)
    torch.testing.assert_close(x, torch.full_like(x, (128 / 255 - 0.25) / 0.5), atol=1e-3, rtol=0)


def test_image_folder_passes_them_to_timm(tmp_path):
    for split in ("train", "val"):
        for cls in ("a", "b"):
            (tmp_path / split / cls).mkdir(parents=True)
            save_image(tmp_path / split / cls / "0.png", "RGB", size=(48, 40))
    dm = ImageFolderDataModule(data_dir=str(tmp_path), img_size=32, num_workers=0, mean=(0.5,), std=(0.5,),
                               interpolation="lanczos", crop_pct=0.5)
    steps = {type(t).__name__: t for t in dm._transform(train=False).transforms}
    assert steps["Resize"].size == 64 and str(steps["Resize"].interpolation) == "InterpolationMode.LANCZOS"
    assert tuple(steps["Normalize"].mean.tolist()) == (0.5, 0.5, 0.5)
    assert dm.data_config == {"input_size": [3, 32, 32], "mean": (0.5, 0.5, 0.5), "std": (0.5, 0.5, 0.5),
                              "interpolation": "lanczos", "crop_pct": 0.5}
    dm.setup("fit")
    assert dm.val_set[0][0].shape == (3, 32, 32)
