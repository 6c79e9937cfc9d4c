import numpy as np
import pytest
import torch
from data_files import save_image

from vitlab.data import ImageDecodeError, ImageFolderDataModule, ImageNetDataModule, load_image


def small(root, **kwargs):
    return ImageFolderDataModule(data_dir=str(root), num_workers=0, batch_size=4, img_size=32, **kwargs)


def test_every_mode_loads_to_three_channels(image_tree):
    dm = small(image_tree)
    assert dm.classes == ["cat", "dog"] and dm.num_classes == 2  # known before setup
    dm.setup(None)
    assert (len(dm.train_set), len(dm.val_set), len(dm.test_set)) == (14, 14, 14)  # test falls back to val
    for loader in (dm.train_dataloader(), dm.val_dataloader()):
        for x, y in loader:
            assert x.shape[1:] == (3, 32, 32) and x.dtype == torch.float32  # (B, C, H, W)
            assert y.dtype == torch.int64 and set(y.tolist()) <= {0, 1}


def test_gray_output_with_in_chans_1(image_tree):
    dm = small(image_tree, in_chans=1)
    dm.setup("fit")
    x, _ = next(iter(dm.train_dataloader()))
    assert x.shape == (4, 1, 32, 32) and len(dm.mean) == 1


def test_16_bit_png_is_scaled_not_clipped(image_tree):
    img = load_image(image_tree / "train" / "cat" / "f_16bit.png", "L")
    assert np.asarray(img).max() == 128  # 128 * 257 in 16 bits


@pytest.mark.parametrize("content", [b"", b"\x89PNG\r\n\x1a\n garbage"], ids=["empty", "garbage"])
def test_bad_file_error_names_it(image_tree, content):
    bad = image_tree / "val" / "dog" / "zz_bad.png"
    bad.write_bytes(content)
    dm = small(image_tree)
    dm.setup("validate")
    with pytest.raises(ImageDecodeError, match="zz_bad.png"):
        for _ in dm.val_dataloader():
            pass


def test_truncated_jpeg_error_names_it(tmp_path):
    path = tmp_path / "cut.jpg"
    save_image(path, "RGB", size=(64, 64), quality=95)
    path.write_bytes(path.read_bytes()[:400])
    with pytest.raises(ImageDecodeError, match="cut.jpg"):
        load_image(path)


def test_empty_class_folder_is_named(image_tree):
    (image_tree / "val" / "dog").rename(image_tree / "val_dog_moved")
    (image_tree / "val" / "dog").mkdir()
    with pytest.raises(ValueError, match=r"val/dog"):
        small(image_tree).setup("fit")


def test_missing_dirs(tmp_path, image_tree):
    with pytest.raises(FileNotFoundError, match="nope"):
        small(tmp_path / "nope")
    with pytest.raises(FileNotFoundError, match="train"):
        small(image_tree / "val")  # has class folders but no train/


def test_without_val_folder_holds_out_val_split(image_tree):
    (image_tree / "val").rename(image_tree / "old_val")
    dm = small(image_tree, val_split=4)
    dm.setup("fit")
    assert (len(dm.train_set), len(dm.val_set)) == (10, 4)
    assert not set(dm.train_set.indices) & set(dm.val_set.indices)


def test_imagenet_defaults(image_tree):
    for wnid, old in (("n01440764", "cat"), ("n01443537", "dog")):
        for split in ("train", "val"):
            (image_tree / split / old).rename(image_tree / split / wnid)
    dm = ImageNetDataModule(data_dir=str(image_tree), num_workers=0, eval_subset=2)
    assert dm.img_size == 224 and dm.num_classes == 2
    assert dm.class_descriptions[0].startswith("tench")
    dm.setup("validate")
    x, _ = next(iter(dm.val_dataloader()))
    assert x.shape == (2, 3, 224, 224)


def test_randaugment_posterize_at_zero_bits_gives_black_not_an_error():
    """timm asks Pillow for 0 bits at RandAugment magnitude 10; Pillow >= 13 raises there, vitlab's op gives black."""
    from PIL import Image
    from timm.data import auto_augment

    import vitlab.data.transforms  # noqa: F401  (installs the safe op)
    img = Image.new("RGB", (8, 8), (200, 100, 50))
    for name in ("PosterizeIncreasing", "Posterize"):
        op = auto_augment.AugmentOp(name, prob=1.0, magnitude=10, hparams={"magnitude_std": 0})
        assert op(img).getextrema() == ((0, 0), (0, 0), (0, 0)) if name == "PosterizeIncreasing" else op(img)
    kept = auto_augment.NAME_TO_OP["Posterize"](img, 8)
    assert kept is img and auto_augment.NAME_TO_OP["Posterize"](img, 1).getpixel((0, 0)) == (128, 0, 0)
