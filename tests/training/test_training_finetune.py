"""Fine-tuning controls with real Trainers: layer-wise lr decay, linear probe, gradual unfreezing, tokenizer
warmup after a transplant."""
import lightning as L
import pytest
import torch
from conftest import FASHION_MNIST_DIR

from timm.optim import param_groups_layer_decay

from vitlab.data import FashionMNISTDataModule
from vitlab.models.layers import Attention
from vitlab.training import ImageClassifier
from vitlab.training.finetune import layer_id

ARCH = dict(embed_dim=32, depth=3, num_heads=2, mlp_ratio=2.0, patch_size=7, img_size=28, in_chans=1,
            num_classes=10)
CONV = {**ARCH, "tokenizer": "conv", "patch_size": 4}


def tiny(arch: dict = ARCH, optim: dict | None = None, **groups) -> ImageClassifier:
    """A tiny model at base_lr 0.05 without warmup; ``optim`` fields on top, the other groups as given."""
    return ImageClassifier(arch=arch, optim={"base_lr": 0.05, **(optim or {})}, schedule={"warmup_epochs": 0.0},
                           **groups)


def fit(model: ImageClassifier, tmp_path, **trainer_kwargs) -> dict[str, torch.Tensor]:
    """Train ``model`` and return the parameters it had before."""
    before = {n: p.detach().clone() for n, p in model.model.named_parameters()}
    data = FashionMNISTDataModule(data_dir=FASHION_MNIST_DIR, batch_size=16, num_workers=0, val_split=1000,
                                  train_subset=64, eval_subset=16, augment=False)
    kwargs = dict(accelerator="cpu", devices=1, max_epochs=1, logger=False, enable_checkpointing=False,
                  enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
                  default_root_dir=tmp_path, limit_val_batches=0)
    L.Trainer(**{**kwargs, **trainer_kwargs}).fit(model, datamodule=data)
    return before


def changed(model: ImageClassifier, before: dict[str, torch.Tensor]) -> set[str]:
    return {n for n, p in model.model.named_parameters() if not torch.equal(p, before[n])}


def test_layer_decay_groups_scale_lr_by_depth(tmp_path):
    model = tiny(finetune={"layer_decay": 0.5})
    fit(model, tmp_path, max_steps=1)
    opt = model.trainer.optimizers[0]
    peak = model.lr
    by_param = {id(p): g["initial_lr"] for g in opt.param_groups for p in g["params"]}
    names = dict(model.model.named_parameters())
    # timm's grouping (group_matcher): head, the last block with the final norm, blocks down, the tokenizer
    assert by_param[id(names["head.weight"])] == pytest.approx(peak)
    assert by_param[id(names["norm.weight"])] == pytest.approx(peak * 0.5)
    assert by_param[id(names["blocks.2.mlp.fc1.weight"])] == pytest.approx(peak * 0.5)
    assert by_param[id(names["blocks.0.mlp.fc1.weight"])] == pytest.approx(peak * 0.5 ** 3)
    assert by_param[id(names["patch_embed.proj.weight"])] == pytest.approx(peak * 0.5 ** 4)
    timm_groups = param_groups_layer_decay(model.model, layer_decay=0.5)  # the same scales as timm's own
    timm_scale = {id(p): g["lr_scale"] for g in timm_groups for p in g["params"]}
    assert {k: v / peak for k, v in by_param.items()} == pytest.approx(timm_scale)
    assert layer_id("_orig_mod.blocks.1.attn.qkv.weight", 3) == 2  # names inside torch.compile still match


def test_linear_probe_trains_only_the_head(tmp_path):
    model = tiny(finetune={"freeze": "backbone"})
    before = fit(model, tmp_path, max_steps=3)
    assert changed(model, before) == {"head.weight", "head.bias"}


def test_gradual_unfreezing_one_block_per_epoch(tmp_path):
    model = tiny(finetune={"unfreeze_every_epochs": 1.0})
    before = fit(model, tmp_path, max_epochs=1)  # epoch 0: head, final norm only
    assert {n.split(".")[0] for n in changed(model, before)} == {"head", "norm"}
    model2 = tiny(finetune={"unfreeze_every_epochs": 1.0})
    model2.model.load_state_dict(model.model.state_dict())
    before = fit(model2, tmp_path, max_epochs=2)  # epoch 1 unfreezes the last block
    blocks = {n.split(".")[1] for n in changed(model2, before) if n.startswith("blocks.")}
    assert blocks == {"2"}
    assert not any(n.startswith("patch_embed") for n in changed(model2, before))


def test_tokenizer_warmup_then_everything(tmp_path):
    model = tiny(CONV, finetune={"tokenizer_warmup_steps": 2})
    before = fit(model, tmp_path, max_steps=2)
    assert {layer_id(n, 3) for n in changed(model, before)} == {0}  # tokenizer, positions, class token
    model2 = tiny(CONV, finetune={"tokenizer_warmup_steps": 1})
    before = fit(model2, tmp_path, max_steps=3)
    assert "blocks.0.attn.qkv.weight" in changed(model2, before) and "head.weight" in changed(model2, before)


def test_bad_finetune_values():
    with pytest.raises(ValueError, match="finetune.freeze must be 'none' or 'backbone', got 'all'"):
        tiny(finetune={"freeze": "all"})
    with pytest.raises(ValueError, match="finetune.layer_decay"):
        tiny(finetune={"layer_decay": 0.0})
    with pytest.raises(ValueError, match="finetune.tokenizer_warmup_steps"):
        tiny(finetune={"tokenizer_warmup_steps": -1})


def test_compile_and_channels_last_train(tmp_path):
    """The speed options run a real fit: dynamo traces the network (eager backend: no C++ build in the tests) and
    the conv stem trains in channels_last; the state_dict keys stay those of the plain model."""
    model = tiny(CONV, speed={"compile": True, "compile_backend": "eager", "channels_last": True})
    before = fit(model, tmp_path, max_steps=2)
    assert model.model._compiled_call_impl is not None  # nn.Module.compile: calls go through dynamo
    attention = [m for m in model.model.modules() if isinstance(m, Attention)]
    assert attention and not any(m.fused_attn for m in attention)  # compiled on a CPU: the explicit path
    assert "blocks.0.attn.qkv.weight" in changed(model, before)
    assert not any("_orig_mod" in k for k in model.model.state_dict())  # checkpoints load without compile
    stem_conv = model.model.patch_embed.stem[0][0].weight
    assert stem_conv.is_contiguous(memory_format=torch.channels_last)


@pytest.mark.parametrize("name", ["sgd", "lamb", "lion"])
def test_timm_optimizers_by_name_with_layer_decay(tmp_path, name):
    model = tiny(optim={"name": name}, finetune={"layer_decay": 0.5})
    before = fit(model, tmp_path, max_steps=2)
    opt = model.trainer.optimizers[0]
    assert type(opt).__name__.lower() == name
    assert len({g["lr_scale"] for g in opt.param_groups}) == ARCH["depth"] + 2  # stem, 3 blocks (+ norm), head
    assert "blocks.0.attn.qkv.weight" in changed(model, before)


def test_unknown_optimizer_named():
    with pytest.raises(ValueError, match="optim.name='adamx'"):
        tiny(optim={"name": "adamx"})
