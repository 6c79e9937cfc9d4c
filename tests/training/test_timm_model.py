"""``model.timm_model``: a timm CNN trained by ``vitlab fit`` (real Fashion-MNIST, real Trainer), its checkpoint as
a DeiT teacher with the logits it had when trained, and one-line errors for the ViT-only settings."""
import pytest
import torch
from conftest import CPU_TRAINER, fashion_mnist_data, latest_run_folder

from vitlab import cli
from vitlab.models.checkpoint import load_checkpoint
from vitlab.training import ImageClassifier
from vitlab.training.distill import build_teacher
from vitlab.training.settings import Distill

DATA = dict(num_classes=10, in_chans=1, img_size=28)


def test_a_timm_cnn_trains_with_vitlabs_groups_and_counted_flops():
    module = ImageClassifier(arch=DATA, timm_model="resnet10t", timm_kwargs={"drop_path_rate": 0.05})
    assert type(module.model).__name__ == "ResNet" and module.model.num_classes == 10
    assert module.model.conv1[0].in_channels == 1
    assert module(torch.rand(2, 1, 28, 28)).shape == (2, 10)
    # no weight decay on BatchNorm weights and biases, decay on the convolutions
    assert "bn1.weight" in module.no_decay_names and "conv1.0.weight" not in module.no_decay_names
    groups = module.param_groups(0.05)
    assert sum(len(g["params"]) for g in groups) == len(list(module.model.parameters()))
    # 3 x the forward FLOPs torch's counter finds; resnet10t on 28 x 28: ~20 MMACs
    assert 3 * 2 * 15e6 < module.train_flops_per_sample < 3 * 2 * 25e6
    assert module.hparams["timm_model"] == "resnet10t" and module.hparams["timm_kwargs"] == {"drop_path_rate": 0.05}


@pytest.mark.parametrize("kwargs, named", [
    (dict(timm_model="resnet10t", preset="vit_micro_patch4_28"), r"model.preset='vit_micro_patch4_28' is a setting"),
    (dict(timm_model="resnet10t", arch={**DATA, "tokenizer": "conv"}), r"model.arch.tokenizer='conv' is a setting"),
    (dict(timm_model="resnet10t", distill={"teacher": "resnet18"}), r"model.distill.teacher='resnet18' is a setting"),
    (dict(timm_model="resnet10t", finetune={"freeze": "backbone"}), r"model.finetune freezing"),
    (dict(timm_model="resnet_no_such"), r"model.timm_model='resnet_no_such' is not a timm model"),
    (dict(timm_model="resnet10t", timm_kwargs={"wings": 2}), r"model.timm_kwargs=\{'wings': 2\} do not fit"),
    (dict(timm_model="resnet10t", timm_kwargs={"num_classes": 3}), r"may not set \['num_classes'\]"),
])
def test_vit_only_settings_are_one_line_errors(kwargs, named):
    kwargs = {"arch": DATA, **kwargs}
    with pytest.raises(ValueError, match=named) as err:
        ImageClassifier(**kwargs)
    assert "\n" not in str(err.value)


def test_fit_a_cnn_teacher_then_distill_from_its_checkpoint(tmp_path, fashion_mnist_available):
    runs = tmp_path / "runs"
    common = [*fashion_mnist_data(batch_size=32, train=128, evaluate=64), *CPU_TRAINER, "--runs_dir", str(runs)]
    assert cli.main(["fit", *common, "--model.timm_model", "resnet10t", "--trainer.max_epochs", "1",
                     "--model.schedule.warmup_epochs", "0"]) == 0
    folder = latest_run_folder(runs / "fashion_mnist_resnet10t")  # the run is named after the timm model
    ckpt = folder / "checkpoints" / "last.ckpt"
    trained = ImageClassifier.load_from_checkpoint(ckpt).model.eval()

    teacher = build_teacher(Distill(teacher=str(ckpt)), num_classes=10, in_chans=1)
    assert type(teacher).__name__ == "ResNet" and not teacher.training
    assert not any(p.requires_grad for p in teacher.parameters())
    x = torch.rand(4, 1, 28, 28)
    with torch.no_grad():
        torch.testing.assert_close(teacher(x), trained(x))  # the trained weights, BN statistics included
    with pytest.raises(ValueError, match=r"predicts 10 classes; the student has 5"):
        build_teacher(Distill(teacher=str(ckpt)), num_classes=5, in_chans=1)
    # the tools that take a vitlab ViT say what the file is instead of failing on its keys
    with pytest.raises(ValueError, match=r"holds timm's 'resnet10t' .*not a vitlab ViT"):
        load_checkpoint(ckpt)

    # a distilled ViT student learns from it through the CLI
    student = ["--model.arch.embed_dim", "32", "--model.arch.depth", "1", "--model.arch.num_heads", "2",
               "--model.arch.patch_size", "7", "--model.arch.distilled", "true", "--model.distill.teacher", str(ckpt),
               "--model.distill.kind", "hard", "--trainer.max_epochs", "1", "--run_name", "student"]
    assert cli.main(["fit", *common, *student]) == 0
    metrics = (latest_run_folder(runs / "student") / "metrics.csv").read_text()
    assert "train/loss_distill" in metrics.splitlines()[0]
