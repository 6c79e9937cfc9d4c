import lightning as L
import pytest
import torch
from conftest import FASHION_MNIST_DIR
from data_files import save_image, write_fashion_mnist
from torch import nn

from vitlab.data import FashionMNISTDataModule
from vitlab.data.device_cache import DeviceCachedLoader


class Linear(L.LightningModule):
    def __init__(self, in_features: int, num_classes: int) -> None:
        super().__init__()
        self.head = nn.Linear(in_features, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(x.flatten(1))  # (B, C*H*W) -> (B, num_classes)

    def training_step(self, batch, _):
        x, y = batch
        return nn.functional.cross_entropy(self(x), y)

    def validation_step(self, batch, _):
        x, y = batch
        self.log("val/loss", nn.functional.cross_entropy(self(x), y))

    def predict_step(self, batch, _):
        x, idx = batch
        return self(x).argmax(-1), idx

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def test_trainer_fits_and_predicts(tmp_path):
    write_fashion_mnist(tmp_path / "data")
    (tmp_path / "predict").mkdir()
    for i in range(3):
        save_image(tmp_path / "predict" / f"{i}.png", "RGB")
    dm = FashionMNISTDataModule(data_dir=str(tmp_path / "data"), batch_size=8, num_workers=0,
                                predict_dir=str(tmp_path / "predict"))
    model = Linear(dm.in_chans * dm.img_size**2, dm.num_classes)
    trainer = L.Trainer(fast_dev_run=2, accelerator="cpu", logger=False, enable_progress_bar=False,
                        enable_model_summary=False, default_root_dir=str(tmp_path))
    trainer.fit(model, datamodule=dm)
    (preds, idx), = trainer.predict(model, datamodule=dm)
    assert preds.shape == (3,) and [dm.predict_files[i].rsplit("/", 1)[1] for i in idx] == ["0.png", "1.png", "2.png"]


class RecordTrainBatches(L.Callback):
    def __init__(self):
        self.batches = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self.batches.append((trainer.current_epoch, batch[0].clone(), batch[1].clone()))


def test_on_device_loaders_match_the_per_sample_path_in_a_fit(tmp_path, fashion_mnist_available):
    """on_device=True: the same samples in the same order (both shuffle with randperm(seed + epoch)) and the
    same pixels (no augmentation), a new order every epoch through Lightning's set_epoch, and the same eval
    batches; the loaders are the device-cached ones."""
    runs = {}
    for on_device in (False, True):
        dm = FashionMNISTDataModule(data_dir=FASHION_MNIST_DIR, batch_size=16, num_workers=0, val_split=500,
                                    train_subset=48, eval_subset=40, augment=False, on_device=on_device)
        model, record = Linear(dm.in_chans * dm.img_size**2, dm.num_classes), RecordTrainBatches()
        L.seed_everything(3)
        trainer = L.Trainer(max_epochs=2, accelerator="cpu", logger=False, enable_progress_bar=False,
                            enable_model_summary=False, enable_checkpointing=False, callbacks=[record],
                            default_root_dir=str(tmp_path))
        trainer.fit(model, datamodule=dm)
        assert isinstance(trainer.train_dataloader, DeviceCachedLoader) == on_device
        dm.setup("test")
        runs[on_device] = record.batches, list(dm.val_dataloader()), list(dm.test_dataloader())
    (host_train, host_val, host_test), (dev_train, dev_val, dev_test) = runs[False], runs[True]
    assert [e for e, _, _ in dev_train] == [0, 0, 0, 1, 1, 1]
    for (_, xh, yh), (_, xd, yd) in zip(host_train, dev_train, strict=True):
        assert torch.equal(yh, yd)
        torch.testing.assert_close(xd, xh, atol=1e-5, rtol=0)
    assert not torch.equal(torch.cat([y for e, _, y in dev_train if e == 0]),
                           torch.cat([y for e, _, y in dev_train if e == 1]))
    for host, dev in ((host_val, dev_val), (host_test, dev_test)):
        for (xh, yh), (xd, yd) in zip(host, dev, strict=True):
            assert torch.equal(yh, yd)
            torch.testing.assert_close(xd, xh, atol=1e-5, rtol=0)


def test_on_device_must_be_a_bool(tmp_path):
    with pytest.raises(ValueError, match="on_device must be true or false, got 'yes'"):
        FashionMNISTDataModule(data_dir=str(tmp_path), on_device="yes")


@pytest.mark.parametrize("on_device", [False, True])
def test_random_erasing_on_both_paths_touches_training_images_only(tmp_path, on_device):
    """random_erasing=1: every training image has a rectangle of noise (timm's RandomErasing per sample, or the
    batched device version); validation images are untouched."""
    write_fashion_mnist(tmp_path, n_train=40, n_test=12)
    kw = dict(data_dir=str(tmp_path), batch_size=30, num_workers=0, val_split=10, augment=True, on_device=on_device)
    plain, erased = FashionMNISTDataModule(**kw), FashionMNISTDataModule(**kw, random_erasing=1.0)
    for dm in (plain, erased):
        dm.crop_padding = 0  # no crop, so only the flip and the erasing are random
        dm.setup("fit")
    torch.manual_seed(0)
    x, y = next(iter(plain.train_dataloader()))
    xe, ye = next(iter(erased.train_dataloader()))
    assert torch.equal(y, ye)  # the same images in the same order
    unflipped = torch.minimum((xe - x).abs(), (xe - x.flip(-1)).abs()).flatten(1)  # (B, H*W) either flip
    changed = (unflipped > 1e-6).float().mean(1)  # share of the pixels erased per image
    assert (changed > 0).all() and (changed <= 0.5).all(), changed
    for a, b in zip(plain.val_dataloader(), erased.val_dataloader(), strict=True):
        assert torch.equal(a[0], b[0])
    with pytest.raises(ValueError, match="random_erasing must be a probability in \\[0, 1\\], got -0.1"):
        FashionMNISTDataModule(data_dir=str(tmp_path), random_erasing=-0.1)
