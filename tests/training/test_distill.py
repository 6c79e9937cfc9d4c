"""DeiT distillation (``model.distill``): DeiT's loss, a real fit with a frozen timm teacher that stays out of the
checkpoint, and one-line errors naming the ``distill.`` field."""
import math

import lightning as L
import pytest
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, TensorDataset

from vitlab.models.vit import VisionTransformer
from vitlab.training import ImageClassifier
from vitlab.training.distill import Distiller, build_teacher, distillation_loss
from vitlab.training.settings import Distill

TINY = dict(embed_dim=32, depth=2, num_heads=2, mlp_ratio=2.0, patch_size=7, img_size=28, in_chans=1,
            num_classes=10, distilled=True)

STUDENT = torch.tensor([[2.0, 0.5, -1.0], [0.0, 1.0, 3.0]])
TEACHER = torch.tensor([[1.0, 2.0, 0.0], [-1.0, 0.5, 0.5]])


def test_soft_loss_is_deits_kl_times_tau_squared():
    tau = 2.0
    p_t = (TEACHER / tau).softmax(1)
    log_p_s = (STUDENT / tau).log_softmax(1)
    by_hand = (p_t * (p_t.log() - log_p_s)).sum() * tau * tau / STUDENT.numel()
    torch.testing.assert_close(distillation_loss(STUDENT, TEACHER, "soft", tau), by_hand)


def test_hard_loss_is_cross_entropy_to_the_teachers_top_class():
    top = torch.tensor([1, 1])  # argmax of TEACHER's rows (the first of a tie in row 2)
    by_hand = -(STUDENT.log_softmax(1)[torch.arange(2), top]).mean()
    torch.testing.assert_close(distillation_loss(STUDENT, TEACHER, "hard"), by_hand)


def test_total_is_one_minus_alpha_base_plus_alpha_distill():
    distiller = Distiller(Distill(teacher="resnet10t", kind="hard", alpha=0.3), num_classes=3, in_chans=1)
    distiller._teacher = torch.nn.Identity()  # the images are the teacher's logits
    labels = torch.tensor([0, 2])
    loss, base, distill = distiller.loss(TEACHER, STUDENT, STUDENT + 1, labels, torch.nn.CrossEntropyLoss())
    torch.testing.assert_close(base, F.cross_entropy(STUDENT, labels))
    torch.testing.assert_close(distill, distillation_loss(STUDENT + 1, TEACHER, "hard"))
    torch.testing.assert_close(loss, 0.7 * base + 0.3 * distill)


def loader(n: int = 32, batch_size: int = 8) -> DataLoader:
    g = torch.Generator().manual_seed(0)
    x, y = torch.rand(n, 1, 28, 28, generator=g), torch.randint(0, 10, (n,), generator=g)
    return DataLoader(TensorDataset(x, y), batch_size=batch_size)


@pytest.mark.parametrize("kind, regularization", [("soft", {}), ("hard", {"mixup": 0.8})])
def test_fit_with_a_frozen_timm_teacher_that_stays_out_of_the_checkpoint(tmp_path, kind, regularization):
    torch.manual_seed(0)
    module = ImageClassifier(arch=TINY, distill={"teacher": "resnet10t", "kind": kind},
                             schedule={"warmup_epochs": 0.0}, regularization=regularization)
    teacher = module.distiller.teacher
    before = {k: v.clone() for k, v in teacher.state_dict().items()}
    student_before = {k: v.clone() for k, v in module.model.state_dict().items()}
    trainer = L.Trainer(accelerator="cpu", devices=1, max_epochs=1, limit_train_batches=2, limit_val_batches=1,
                        logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, num_sanity_val_steps=0, default_root_dir=tmp_path)
    trainer.fit(module, loader(), loader(16))
    assert math.isfinite(trainer.callback_metrics["train/loss_distill"].item())
    assert "val/acc1" in trainer.callback_metrics  # validation ran on the averaged heads
    for k, v in teacher.state_dict().items():
        assert torch.equal(v, before[k]), k  # frozen: not trained, BN statistics untouched (eval mode)
    assert not teacher.training and not any(p.requires_grad for p in teacher.parameters())
    assert any(not torch.equal(v, student_before[k]) for k, v in module.model.state_dict().items())
    trainer.save_checkpoint(tmp_path / "student.ckpt")
    state = torch.load(tmp_path / "student.ckpt", weights_only=True)["state_dict"]
    teacher_keys = set(teacher.state_dict())
    assert not any(k.split(".", 1)[-1] in teacher_keys or "teacher" in k for k in state)
    assert {"model.dist_token", "model.head_dist.weight"} <= set(state)


def test_a_student_without_a_distillation_token_takes_both_losses_on_its_one_head(tmp_path):
    # CCT's sequence pooling has no class token to put a distillation token beside: DeiT's "usual distillation"
    arch = dict(TINY, distilled=False, tokenizer="cct", pool="seq")
    module = ImageClassifier(arch=arch, distill={"teacher": "resnet10t", "kind": "hard", "alpha": 0.25},
                             schedule={"warmup_epochs": 0.0})
    assert not module.model.distilled_training
    x, y = next(iter(loader(8)))
    module.train()
    logits = module.model(x)
    assert logits.shape == (8, 10)  # one head, also in training
    loss, base, distill = module.distiller.loss(x, logits, logits, y, module.train_loss)
    teacher_top = module.distiller.teacher(x).argmax(1)
    torch.testing.assert_close(distill, F.cross_entropy(logits, teacher_top))
    torch.testing.assert_close(loss, 0.75 * base + 0.25 * distill)
    trainer = L.Trainer(accelerator="cpu", devices=1, max_epochs=1, limit_train_batches=2, limit_val_batches=1,
                        logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, num_sanity_val_steps=0, default_root_dir=tmp_path)
    trainer.fit(module, loader(), loader(16))
    assert math.isfinite(trainer.callback_metrics["train/loss_distill"].item())
    assert "val/acc1" in trainer.callback_metrics


def test_a_vitlab_checkpoint_teacher(tmp_path):
    module = ImageClassifier(arch=TINY)
    trainer = L.Trainer(accelerator="cpu", devices=1, max_epochs=1, limit_train_batches=1, limit_val_batches=0,
                        logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, default_root_dir=tmp_path)
    trainer.fit(module, loader(8))
    trainer.save_checkpoint(tmp_path / "teacher.ckpt")
    teacher = build_teacher(Distill(teacher=str(tmp_path / "teacher.ckpt")), num_classes=10, in_chans=1)
    assert isinstance(teacher, VisionTransformer) and not teacher.training
    x = torch.rand(2, 1, 28, 28)
    assert teacher(x).shape == (2, 10)  # eval mode: the averaged heads of a distilled teacher
    with pytest.raises(ValueError, match=r"distill.teacher=.* predicts 10 classes; the student has 5"):
        build_teacher(Distill(teacher=str(tmp_path / "teacher.ckpt")), num_classes=5, in_chans=1)


@pytest.mark.parametrize("kwargs, named", [
    (dict(distill={"kind": "medium"}), r"distill.kind must be 'soft' or 'hard', got 'medium'"),
    (dict(distill={"alpha": 1.5}), r"distill.alpha must be a number in \[0, 1\], got 1.5"),
    (dict(distill={"tau": 0.0}), r"distill.tau must be a number in \(0, inf\), got 0.0"),
    (dict(distill={"teacher_weights": "w.pth"}), r"distill.teacher_weights='w.pth' needs distill.teacher"),
    (dict(distill={"teacher": "no_such_model_x"}), r"distill.teacher='no_such_model_x' is neither"),
    (dict(distill={"temperature": 2.0}), r"unknown key\(s\) \['temperature'\] in model.distill"),
])
def test_bad_settings_are_one_line_errors_naming_the_field(kwargs, named):
    kwargs = {"arch": TINY, **kwargs}
    with pytest.raises(ValueError, match=named) as err:
        ImageClassifier(**kwargs)
    assert "\n" not in str(err.value)


def test_no_teacher_trains_the_averaged_heads_as_timm():
    module = ImageClassifier(arch=TINY)
    assert module.distiller is None and not module.model.distilled_training
    assert module.train()(torch.rand(2, 1, 28, 28)).shape == (2, 10)
