import lightning as L
import torch
from data_files import save_image, write_fashion_mnist
from torch import nn

from vitlab.data import FashionMNISTDataModule


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
