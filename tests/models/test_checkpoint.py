"""One set of rules turns a vitlab .ckpt into a model: both hyper_parameters formats, EMA or not, compiled keys,
clear errors naming the file."""
import pytest
import torch

import vitlab
from vitlab.models.checkpoint import (UnsafeCheckpointError, checkpoint_arch, load_checkpoint, network_weights,
                                      read_checkpoint)

ARCH = {"depth": 1, "embed_dim": 32, "num_heads": 2, "tokenizer_options": {"layers": 1, "kernel": 5}}
# today's ImageClassifier: the set ViTConfig fields under "arch", the training settings in their groups
NEW = {"preset": "cct_micro_28", "pretrained": None, "arch": ARCH, "optim": {"base_lr": 5e-4},
       "schedule": {"warmup_epochs": 1}, "regularization": {"ema_decay": None}, "finetune": {},
       "evaluation": {"tta": "none", "top_k": 5}, "speed": {"compile": False}, "nonfinite": "stop"}
# before the groups: every argument flat, None where the preset's value was kept, the old flat tokenizer fields
OLD = {"preset": "cct_micro_28", "depth": 1, "embed_dim": 32, "num_heads": 2, "tokenizer": None, "pool": None,
       "stem_channels": None, "cct_layers": 1, "cct_kernel": 5, "base_lr": 5e-4, "ema_decay": None, "tta": "none"}


def _model(seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return vitlab.create_model("cct_micro_28", **ARCH).eval()


def _save(path, hparams, model, ema=None, prefix="model.", **extra):
    state = {f"{prefix}{k}": v for k, v in model.state_dict().items()}
    if ema is not None:
        state |= {f"ema.module.{k}": v for k, v in ema.state_dict().items()}
    torch.save({"state_dict": state, "hyper_parameters": hparams, **extra}, path)
    return path


def test_new_and_old_hparams_give_the_same_model(tmp_path):
    model = _model()
    x = torch.randn(2, 1, 28, 28)
    assert checkpoint_arch(NEW) == checkpoint_arch(OLD) == ("cct_micro_28", ARCH)
    with torch.no_grad():
        ref = model(x)
        for name, hparams in (("new", NEW), ("old", OLD)):
            path = _save(tmp_path / f"{name}.ckpt", hparams, model)
            loaded = load_checkpoint(path)
            assert loaded.preset == "cct_micro_28" and loaded.config == model.cfg and not loaded.model.training
            assert torch.equal(loaded.model(x), ref)
            assert torch.equal(vitlab.create_model(pretrained=str(path)).eval()(x), ref)  # the pretrained path


def test_none_values_are_left_to_the_preset():
    assert checkpoint_arch({"preset": "vit_micro_patch4_28", "arch": {"depth": 2, "pool": None}}) == \
        ("vit_micro_patch4_28", {"depth": 2})
    assert checkpoint_arch({"preset": None, "depth": None, "base_lr": 1e-3}) == (None, {})


def test_ema_weights_are_preferred_unless_asked_not_to(tmp_path):
    model, ema = _model(0), _model(1)
    path = _save(tmp_path / "m.ckpt", NEW, model, ema=ema)
    x = torch.randn(2, 1, 28, 28)
    with torch.no_grad():
        assert torch.equal(load_checkpoint(path).model(x), ema(x))
        assert torch.equal(load_checkpoint(path, ema=False).model(x), model(x))
    assert network_weights({"model.a": torch.zeros(1)}, ema=True) == ({"a": torch.zeros(1)}, "model.")


def test_compiled_model_keys(tmp_path):
    model = _model()
    path = _save(tmp_path / "c.ckpt", NEW, model, prefix="model._orig_mod.")
    x = torch.randn(1, 1, 28, 28)
    with torch.no_grad():
        assert torch.equal(load_checkpoint(path).model(x), model(x))


def test_data_config_class_names_and_overrides(tmp_path):
    data = {"input_size": [1, 28, 28], "mean": [0.3], "std": [0.2], "interpolation": "bilinear", "crop_pct": 1.0}
    names = [f"c{i}" for i in range(10)]
    path = _save(tmp_path / "d.ckpt", NEW, _model(), data_config=data, class_names=names,
                 datamodule_hyper_parameters={"_class_path": "vitlab.data.FashionMNISTDataModule"})
    loaded = load_checkpoint(path, overrides={"drop_path_rate": 0.1})
    assert loaded.data_config == data and loaded.class_names == names and loaded.hparams == NEW
    assert loaded.datamodule_hparams["_class_path"].endswith("FashionMNISTDataModule")
    assert loaded.config.drop_path_rate == 0.1


def test_unreadable_file_is_a_one_line_error_naming_it(tmp_path):
    path = tmp_path / "broken.ckpt"
    path.write_bytes(b"not a checkpoint at all")
    for read in (read_checkpoint, load_checkpoint):
        with pytest.raises(ValueError) as err:
            read(path)
        assert isinstance(err.value, UnsafeCheckpointError)
        assert str(path) in str(err.value) and "weights_only=True" in str(err.value) and "\n" not in str(err.value)
    with pytest.raises(FileNotFoundError, match="missing.ckpt' does not exist"):
        load_checkpoint(tmp_path / "missing.ckpt")


def test_checkpoints_that_do_not_fit(tmp_path):
    model = _model()
    torch.save(model.state_dict(), tmp_path / "w.ckpt")
    with pytest.raises(ValueError, match=r"w.ckpt is not a Lightning checkpoint .*--model PRESET --weights"):
        load_checkpoint(tmp_path / "w.ckpt")
    torch.save({"state_dict": {f"model.{k}": v for k, v in model.state_dict().items()}}, tmp_path / "h.ckpt")
    with pytest.raises(ValueError, match="h.ckpt has no hyper_parameters"):
        load_checkpoint(tmp_path / "h.ckpt")
    _save(tmp_path / "o.ckpt", NEW, model, prefix="net.")
    with pytest.raises(ValueError, match=r"o.ckpt: state_dict has no 'model.\*' weights"):
        load_checkpoint(tmp_path / "o.ckpt")
    _save(tmp_path / "a.ckpt", {**NEW, "arch": {**ARCH, "depth": 2}}, model)
    with pytest.raises(ValueError, match=r"a.ckpt \(model.\*\) does not match the model:\n  missing keys \(\d+\): "
                                         r"\['blocks.1"):
        load_checkpoint(tmp_path / "a.ckpt")
