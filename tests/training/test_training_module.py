"""ImageClassifier with real Trainers on tiny data: config vocabulary, weight-decay groups, lr scaling and
schedule, mixup, EMA in validation, predict_step, bad values."""
import dataclasses
import inspect
import math
import warnings

import lightning as L
import pytest
import torch
from conftest import FASHION_MNIST_DIR

from vitlab import ViTConfig
from vitlab.data import FashionMNISTDataModule
from vitlab.models.config import ViTOverrides
from vitlab.training import ImageClassifier, warmup_cosine
from vitlab.training.tta import tta_view

TINY = dict(embed_dim=32, depth=2, num_heads=2, mlp_ratio=2.0, patch_size=7, img_size=28, in_chans=1,
            num_classes=10)


def tiny(arch: dict | None = None, **kwargs) -> ImageClassifier:
    """The tiny model with ``arch`` fields on top of TINY's and the other groups (``optim={...}``, ...) as given."""
    return ImageClassifier(arch={**TINY, **(arch or {})}, **kwargs)


def data(batch_size: int = 16, train: int = 64, evaluate: int = 32) -> FashionMNISTDataModule:
    return FashionMNISTDataModule(data_dir=FASHION_MNIST_DIR, batch_size=batch_size, num_workers=0,
                                  val_split=1000, train_subset=train, eval_subset=evaluate, augment=False)


def trainer(tmp_path, **kwargs) -> L.Trainer:
    defaults = dict(accelerator="cpu", devices=1, max_epochs=1, logger=False, enable_checkpointing=False,
                    enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
                    default_root_dir=tmp_path)
    return L.Trainer(**{**defaults, **kwargs})


def test_every_config_field_is_an_argument():
    params = set(inspect.signature(ImageClassifier).parameters)
    assert {"preset", "pretrained", "arch", "optim", "schedule", "regularization", "finetune", "evaluation", "speed",
            "nonfinite"} <= params
    arch_fields = {f.name for f in dataclasses.fields(ViTOverrides)}  # model.arch.* takes every ViTConfig field
    assert ViTConfig.field_names() == arch_fields, ViTConfig.field_names() ^ arch_fields


def test_preset_with_overrides():
    m = ImageClassifier(preset="vit_micro_patch4_28", arch={"tokenizer": "conv", "depth": 2})
    assert (m.cfg.tokenizer, m.cfg.depth, m.cfg.embed_dim, m.cfg.in_chans) == ("conv", 2, 64, 1)


@pytest.mark.parametrize("kwargs, named", [
    (dict(optim=dict(base_lr=0.0)), "optim.base_lr"), (dict(optim=dict(base_lr=-1e-3)), "optim.base_lr"),
    (dict(schedule=dict(min_lr=-1.0)), "schedule.min_lr"),
    (dict(schedule=dict(warmup_epochs=-1)), "schedule.warmup_epochs"),
    (dict(optim=dict(weight_decay=-0.1)), "optim.weight_decay"),
    (dict(regularization=dict(label_smoothing=1.0)), "regularization.label_smoothing"),
    (dict(regularization=dict(mixup=-0.2)), "regularization.mixup"),
    (dict(regularization=dict(cutmix=-1)), "regularization.cutmix"),
    (dict(regularization=dict(ema_decay=1.0)), "regularization.ema_decay"),
    (dict(regularization=dict(ema_decay=0.0)), "regularization.ema_decay"),
    (dict(evaluation=dict(top_k=0)), "evaluation.top_k"),
    (dict(optim=dict(base_batch_size=0)), "optim.base_batch_size"), (dict(optim=dict(betas=(0.9, 1.5))), "optim.betas"),
    (dict(arch=dict(tokenizer="bogus")), "bogus"), (dict(arch=dict(num_classes=1)), "num_classes"),
    (dict(preset="nope"), "nope"), (dict(arch=dict(embed_dim=30, num_heads=4)), "embed_dim=30"),
    (dict(speed=dict(compile=True, compile_backend="eager", compile_mode="max-autotune")),
     "speed.compile_mode='max-autotune'"),
])
def test_bad_values_raise_value_error_naming_them(kwargs, named):
    with pytest.raises(ValueError, match=named):
        tiny(**kwargs)


def test_no_weight_decay_on_norms_biases_positions_tokens():
    m = tiny()
    groups = {g["name"]: g for g in m.param_groups(0.05)}
    names = {id(p): n for n, p in m.model.named_parameters()}
    no_decay = {names[id(p)] for p in groups["no_decay"]["params"]}
    decay = {names[id(p)] for p in groups["decay"]["params"]}
    assert {"pos_embed", "cls_token", "norm.weight", "norm.bias", "blocks.0.norm1.weight",
            "blocks.0.attn.qkv.bias", "head.bias", "patch_embed.proj.bias"} <= no_decay
    assert {"blocks.0.attn.qkv.weight", "blocks.1.mlp.fc1.weight", "head.weight",
            "patch_embed.proj.weight"} <= decay
    assert all(p.ndim > 1 for p in groups["decay"]["params"])
    assert (groups["decay"]["weight_decay"], groups["no_decay"]["weight_decay"]) == (0.05, 0.0)
    assert len(decay) + len(no_decay) == len(names)


def test_warmup_cosine_schedule():
    f = lambda s: warmup_cosine(s, warmup_steps=10, total_steps=110, min_ratio=0.01)  # noqa: E731
    assert f(0) == pytest.approx(0.1) and f(4) == pytest.approx(0.5) and f(9) == pytest.approx(1.0)
    assert f(10) == pytest.approx(1.0) and f(60) == pytest.approx(0.505) and f(110) == pytest.approx(0.01)
    assert all(f(s) >= f(s + 1) for s in range(10, 120))
    assert warmup_cosine(0, 0, 100, 0.0) == pytest.approx(1.0)  # no warmup


@pytest.mark.parametrize("batch_size, accumulate", [(16, 1), (8, 4)])
def test_lr_scales_with_global_batch_and_schedule_runs_per_step(tmp_path, fashion_mnist_available, batch_size,
                                                               accumulate):
    m = tiny(optim=dict(base_lr=1e-3, base_batch_size=64), schedule=dict(warmup_epochs=1.0, min_lr=0.0))
    t = trainer(tmp_path, max_epochs=2, accumulate_grad_batches=accumulate, limit_val_batches=0)
    t.fit(m, datamodule=data(batch_size=batch_size))
    global_batch = batch_size * accumulate
    assert m.global_batch_size == global_batch and m.lr == pytest.approx(1e-3 * global_batch / 64)
    sched = t.lr_scheduler_configs[0]
    assert sched.interval == "step"
    steps_per_epoch = math.ceil(64 // batch_size / accumulate)
    assert t.global_step == 2 * steps_per_epoch == sched.scheduler.last_epoch
    # warmup over the first epoch, cosine to 0 at the end
    assert sched.scheduler.get_last_lr()[0] == pytest.approx(0.0, abs=1e-12)
    assert sched.scheduler.base_lrs[0] == pytest.approx(m.lr)


def test_mixup_cutmix_path_trains(tmp_path, fashion_mnist_available):
    m = tiny(regularization=dict(mixup=0.8, cutmix=1.0, label_smoothing=0.1))
    assert type(m.train_loss).__name__ == "SoftTargetCrossEntropy"
    before = [p.detach().clone() for p in m.model.parameters()]
    t = trainer(tmp_path, limit_train_batches=3, limit_val_batches=2)
    t.fit(m, datamodule=data(batch_size=15))  # odd batch: one sample is dropped for timm's mix
    assert math.isfinite(t.callback_metrics["train/loss"].item())
    assert 0.0 <= t.callback_metrics["val/acc1"].item() <= 1.0
    assert any(not torch.equal(a, b) for a, b in zip(before, m.model.parameters()))


def test_ema_weights_are_used_in_validation(tmp_path, fashion_mnist_available):
    m = tiny(regularization=dict(ema_decay=0.5), optim=dict(base_lr=0.05, base_batch_size=16),
             schedule=dict(warmup_epochs=0))
    dm = data(batch_size=16)
    t = trainer(tmp_path, max_steps=4, limit_val_batches=0)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        t.fit(m, datamodule=dm)
    assert not [w for w in caught if "in eval mode" in str(w.message)], "the EMA copy set off Lightning's warning"
    assert not any(p.requires_grad for p in m.ema.parameters())
    raw, ema = m.model.state_dict(), m.ema.module.state_dict()
    assert any(not torch.allclose(raw[k], ema[k]) for k in raw), "EMA should lag the trained weights"
    logged = trainer(tmp_path).validate(m, datamodule=dm, verbose=False)[0]["val/loss"]
    dm.setup("validate")
    x, y = next(iter(torch.utils.data.DataLoader(dm.val_set, batch_size=len(dm.val_set))))
    with torch.no_grad():
        loss_ema = torch.nn.functional.cross_entropy(m.ema.module.eval()(x), y).item()
        loss_raw = torch.nn.functional.cross_entropy(m.model.eval()(x), y).item()
    assert logged == pytest.approx(loss_ema, rel=1e-4) and logged != pytest.approx(loss_raw, rel=1e-4)


def test_ema_is_saved_in_checkpoints(tmp_path):
    m = tiny(regularization=dict(ema_decay=0.9))
    keys = set(m.state_dict())
    assert "ema.module.head.weight" in keys and "model.head.weight" in keys


def test_predict_step_top_k():
    m = tiny(evaluation=dict(top_k=3)).eval()
    out = m.predict_step((torch.randn(4, 1, 28, 28), torch.tensor([5, 6, 7, 8])), 0)
    assert out["classes"].shape == out["probs"].shape == (4, 3)
    assert torch.equal(out["index"], torch.tensor([5, 6, 7, 8]))
    assert (out["probs"][:, :-1] >= out["probs"][:, 1:]).all() and (out["probs"].sum(-1) <= 1 + 1e-6).all()
    assert m.predict_step(None, 0) is None
    assert tiny(dict(num_classes=2), evaluation=dict(top_k=5)).predict_step((torch.randn(1, 1, 28, 28), torch.tensor([0])),
                                                     0)["classes"].shape == (1, 2)


def test_flip_tta_averages_the_probabilities_of_image_and_mirror():
    torch.manual_seed(0)
    plain, tta = tiny().eval(), tiny(evaluation=dict(tta="flip")).eval()
    tta.load_state_dict(plain.state_dict())
    x = torch.randn(4, 1, 28, 28)
    with torch.no_grad():
        p, q = plain.eval_logits(x).softmax(-1), plain.eval_logits(x.flip(-1)).softmax(-1)
        both = tta.eval_logits(x)  # (B, K) log of the mean probabilities
        torch.testing.assert_close(both.exp(), (p + q) / 2)
        torch.testing.assert_close(tta.eval_logits(x.flip(-1)), both)  # an image and its mirror agree
        assert not torch.allclose(p, q)  # so the average is not the plain output
        out = tta.predict_step((x, torch.arange(4)), 0)
    torch.testing.assert_close(out["probs"][:, 0], both.exp().max(-1).values)
    with pytest.raises(ValueError, match=r"evaluation.tta must be one of \['none', 'flip', 'flip_shift'\], got 'rot90'"):
        tiny(evaluation=dict(tta="rot90"))


def test_tta_view_shifts_by_one_pixel_and_repeats_the_border():
    x = torch.arange(12.0).view(1, 1, 3, 4)  # rows 0-3, 4-7, 8-11
    down = tta_view(x, False, 1, 0)  # row r shows input row r - 1; the top row repeats
    torch.testing.assert_close(down[0, 0], torch.tensor([[0.0, 1, 2, 3], [0, 1, 2, 3], [4, 5, 6, 7]]))
    left = tta_view(x, False, 0, -1)  # column c shows input column c + 1; the right column repeats
    torch.testing.assert_close(left[0, 0, 0], torch.tensor([1.0, 2, 3, 3]))
    torch.testing.assert_close(tta_view(x, True, 0, 0), x.flip(-1))
    assert tta_view(x, True, -1, 1).shape == x.shape


def test_flip_shift_tta_averages_ten_views():
    torch.manual_seed(0)
    plain, tta = tiny().eval(), tiny(evaluation=dict(tta="flip_shift")).eval()
    tta.load_state_dict(plain.state_dict())
    x = torch.randn(4, 1, 28, 28)
    views = [(m, dy, dx) for m in (False, True) for dy, dx in ((0, 0), (1, 0), (-1, 0), (0, 1), (0, -1))]
    with torch.no_grad():
        expected = sum(plain.eval_logits(tta_view(x, *v)).softmax(-1) for v in views) / 10  # (B, K)
        torch.testing.assert_close(tta.eval_logits(x).exp(), expected)
        assert not torch.allclose(expected, (plain.eval_logits(x).softmax(-1)
                                             + plain.eval_logits(x.flip(-1)).softmax(-1)) / 2)


def test_top5_only_with_five_classes_or_more():
    assert set(tiny(dict(num_classes=4)).val_metrics.keys()) == {"val/acc1"}
    assert set(tiny(dict(num_classes=10)).val_metrics.keys()) == {"val/acc1", "val/acc5"}


def test_fused_adamw_with_bf16_autocast_and_gradient_clipping(tmp_path, fashion_mnist_available, monkeypatch):
    """The GPU setting (fused AdamW, bf16-mixed, gradient_clip_val) trains and clips; Lightning's AMP plugin alone
    refuses to clip for a fused optimizer. Run on CPU with the fused CPU AdamW (a few tiny bf16 steps)."""
    from vitlab.training import module as module_lib

    monkeypatch.setattr(module_lib, "use_fused_adamw", lambda *args: True)
    m = tiny()
    t = trainer(tmp_path, precision="bf16-mixed", gradient_clip_val=0.5, max_steps=2, limit_val_batches=0)
    t.fit(m, datamodule=data())
    opt = t.optimizers[0]
    assert opt.defaults["fused"] and t.global_step == 2
    for p in m.parameters():
        p.grad = torch.full_like(p, 10.0)
    m.configure_gradient_clipping(opt, 0.5, "norm")
    norm = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(p.grad) for p in m.parameters()]))
    assert norm.item() == pytest.approx(0.5, rel=1e-3)
    m.configure_gradient_clipping(opt, 0.01, "value")
    assert max(p.grad.abs().max().item() for p in m.parameters()) <= 0.01 + 1e-9


def test_fused_adamw_only_where_it_can_be_clipped():
    from types import SimpleNamespace

    from vitlab.training.optim import use_fused_adamw

    cuda, cpu = torch.device("cuda"), torch.device("cpu")
    bf16, fp16 = SimpleNamespace(scaler=None), SimpleNamespace(scaler=object())
    assert use_fused_adamw(cuda, bf16, 1.0) and use_fused_adamw(cuda, fp16, None) and use_fused_adamw(cuda, bf16, None)
    assert not use_fused_adamw(cuda, fp16, 1.0)  # fp16 loss scaling + clipping: foreach
    assert not use_fused_adamw(cpu, bf16, None)


@pytest.mark.gpu
def test_fit_on_cuda_with_bf16_fused_adamw_and_clipping(tmp_path, fashion_mnist_available):
    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    m = tiny()
    t = trainer(tmp_path, accelerator="gpu", precision="bf16-mixed", gradient_clip_val=1.0, max_steps=4,
                limit_val_batches=2)
    t.fit(m, datamodule=data())
    assert t.optimizers[0].defaults["fused"] and t.global_step == 4
    assert math.isfinite(t.callback_metrics["val/loss"].item())
