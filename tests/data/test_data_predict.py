import logging

import pytest
import torch
from data_files import save_image, write_fashion_mnist
from torch.utils.data import DataLoader

from vitlab.data import FashionMNISTDataModule, ImageFilesDataset, ImageFolderDataModule, collate_skip_none
from vitlab.data.transforms import imagenet_transform


@pytest.fixture
def predict_dir(tmp_path):
    folder = tmp_path / "predict"
    folder.mkdir()
    for i, mode in enumerate(["RGB", "L", "RGBA", "CMYK"]):
        save_image(folder / f"img{i}.{'jpg' if mode == 'CMYK' else 'png'}", mode, size=(30 + i, 20))
    (folder / "img9_broken.jpg").write_bytes(b"\xff\xd8\xff not really a jpeg")
    (folder / "notes.txt").write_text("not an image")
    return folder


def test_broken_file_is_skipped_and_reported(predict_dir, caplog):
    ds = ImageFilesDataset(predict_dir, imagenet_transform(img_size=16, mean=(0.5,) * 3, std=(0.5,) * 3, train=False))
    names = [f.rsplit("/", 1)[1] for f in ds.files]
    assert names == ["img0.png", "img1.png", "img2.png", "img3.jpg", "img9_broken.jpg"]  # sorted, images only
    with caplog.at_level(logging.WARNING):
        batches = list(DataLoader(ds, batch_size=2, collate_fn=collate_skip_none))
    assert batches[-1] is None  # the last batch held only the broken file
    indices = torch.cat([idx for _, idx in batches[:-1]]).tolist()
    assert indices == [0, 1, 2, 3] and all(x.shape[1:] == (3, 16, 16) for x, _ in batches[:-1])  # (B, C, H, W)
    assert len(caplog.records) == 1 and "img9_broken.jpg" in caplog.records[0].getMessage()


def test_all_broken_batch_collates_to_none():
    assert collate_skip_none([None, None]) is None


def test_fashion_mnist_predicts_any_image_as_gray_28(tmp_path, predict_dir):
    write_fashion_mnist(tmp_path / "data")
    dm = FashionMNISTDataModule(data_dir=str(tmp_path / "data"), num_workers=0, predict_dir=str(predict_dir))
    dm.setup("predict")
    assert len(dm.predict_files) == 5
    x, idx = next(iter(dm.predict_dataloader()))
    assert x.shape == (4, 1, 28, 28) and idx.tolist() == [0, 1, 2, 3]


def test_image_folder_predict(image_tree, predict_dir):
    dm = ImageFolderDataModule(data_dir=str(image_tree), num_workers=0, img_size=32, predict_dir=str(predict_dir))
    dm.setup("predict")
    x, idx = next(iter(dm.predict_dataloader()))
    assert x.shape == (4, 3, 32, 32)
    assert [dm.predict_files[i] for i in idx] == dm.predict_files[:4]


def test_predict_dir_unset_or_missing(tmp_path, image_tree):
    with pytest.raises(ValueError, match="predict_dir"):
        ImageFolderDataModule(data_dir=str(image_tree)).setup("predict")
    with pytest.raises(FileNotFoundError, match="elsewhere"):
        ImageFolderDataModule(data_dir=str(image_tree), predict_dir=str(tmp_path / "elsewhere")).setup("predict")
