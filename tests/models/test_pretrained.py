"""Pretrained sources, adaptation at load time (with its table), transplant, safety, export to timm."""
import json

import pytest
import timm
import torch
from safetensors.torch import save_file
from timm.layers import resample_abs_pos_embed, resample_patch_embed
from timm.models import adapt_input_conv

import vitlab
from vitlab.models.pretrained import load_pretrained, read_state_dict
from vitlab.models.timm_export import save_timm_folder, timm_model_args

SMALL = dict(img_size=32, patch_size=8, embed_dim=48, depth=2, num_heads=3, num_classes=10)


@pytest.fixture()
def timm_ckpt(tmp_path):
    torch.manual_seed(0)
    ref = timm.create_model("vit_tiny_patch16_224", pretrained=False, **SMALL).eval()
    path = tmp_path / "timm.safetensors"
    save_file({k: v.contiguous() for k, v in ref.state_dict().items()}, str(path))
    return ref, path


def test_new_classes_size_and_channels_adapted(timm_ckpt, capsys):
    ref, path = timm_ckpt
    model = vitlab.create_model(pretrained=str(path), **{**SMALL, "num_classes": 3, "img_size": 48, "in_chans": 1})
    table = capsys.readouterr().out
    sd = ref.state_dict()
    for line in ("head.weight", "re-initialised", "classes 10 -> 3", "pos_embed", "grid (4, 4) -> (6, 6)",
                 "patch_embed.proj.weight", "in_chans 3 -> 1", "loaded"):
        assert line in table
    torch.testing.assert_close(model.pos_embed, resample_abs_pos_embed(sd["pos_embed"], [6, 6], [4, 4], 1))
    torch.testing.assert_close(model.patch_embed.proj.weight, adapt_input_conv(1, sd["patch_embed.proj.weight"]))
    torch.testing.assert_close(model.blocks[1].mlp.fc2.weight, sd["blocks.1.mlp.fc2.weight"])
    assert model.head.weight.shape == (3, 48)


def test_new_patch_size_resampled(timm_ckpt):
    ref, path = timm_ckpt
    model = vitlab.create_model(pretrained=str(path), **{**SMALL, "patch_size": 4})
    expected = resample_patch_embed(ref.state_dict()["patch_embed.proj.weight"], [4, 4])
    torch.testing.assert_close(model.patch_embed.proj.weight, expected)
    assert model.grid == (8, 8) and model.pos_embed.shape == (1, 65, 48)


def test_cls_checkpoint_into_avg_pool_model(timm_ckpt):
    ref, path = timm_ckpt
    model = vitlab.create_model(pretrained=str(path), **{**SMALL, "pool": "avg"})
    report = load_pretrained(model, path, verbose=False)
    assert "cls_token" in report.keys("dropped")
    assert "fc_norm.weight" in report.keys("adapted")
    torch.testing.assert_close(model.fc_norm.weight, ref.norm.weight)
    torch.testing.assert_close(model.pos_embed, ref.pos_embed[:, 1:])


@pytest.mark.parametrize("tokenizer", ["conv", "cct"])
def test_transplant_encoder_into_conv_tokenizers(timm_ckpt, tokenizer):
    ref, path = timm_ckpt
    model = vitlab.create_model(pretrained=str(path), **{**SMALL, "tokenizer": tokenizer, "patch_size": 8})
    report = load_pretrained(model, path, verbose=False)
    assert "patch_embed.proj.weight" in report.keys("dropped")
    assert any(k.startswith("patch_embed.") for k in report.keys("re-initialised"))
    for i in range(2):
        torch.testing.assert_close(model.blocks[i].attn.qkv.weight, ref.blocks[i].attn.qkv.weight)
    assert model(torch.randn(1, 3, 32, 32)).shape == (1, 10)


def test_other_mismatch_is_an_error_listing_keys(timm_ckpt):
    _, path = timm_ckpt
    with pytest.raises(ValueError, match=r"shape mismatches \(\d+\): \['blocks.0.attn.proj.bias"):
        vitlab.create_model(pretrained=str(path), **{**SMALL, "embed_dim": 24})
    with pytest.raises(ValueError, match=r"missing keys \(\d+\): \['blocks.2"):
        vitlab.create_model(pretrained=str(path), **{**SMALL, "depth": 3})


def test_timm_train_checkpoint_and_lightning_style_ckpt(timm_ckpt, tmp_path):
    ref, _ = timm_ckpt
    torch.save({"epoch": 3, "arch": "vit", "state_dict": ref.state_dict(), "optimizer": {}}, tmp_path / "t.pth.tar")
    lightning = {"epoch": 1, "global_step": 7, "state_dict": {f"model.{k}": v for k, v in ref.state_dict().items()},
                 "hyper_parameters": {"lr": 1e-3}}
    torch.save(lightning, tmp_path / "l.ckpt")
    for name in ("t.pth.tar", "l.ckpt"):
        model = vitlab.create_model(pretrained=str(tmp_path / name), **SMALL)
        torch.testing.assert_close(model.head.weight, ref.head.weight)


def test_hub_folder_and_timm_name_offline(timm_ckpt, tmp_path, monkeypatch):
    ref, path = timm_ckpt
    folder = tmp_path / "hub"
    folder.mkdir()
    (folder / "model.safetensors").write_bytes(path.read_bytes())
    (folder / "config.json").write_text("{}")
    model = vitlab.create_model(pretrained=str(folder), **SMALL)
    torch.testing.assert_close(model.pos_embed, ref.pos_embed)
    import huggingface_hub.constants
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)  # as HF_HUB_OFFLINE=1 at start-up
    with pytest.raises(ValueError, match="could not get pretrained weights 'vit_tiny_patch16_224.augreg_in21k'"):
        read_state_dict("vit_tiny_patch16_224.augreg_in21k")
    with pytest.raises(FileNotFoundError, match="neither a file"):
        read_state_dict("no/such/file.pth")


def test_malformed_safetensors_is_an_error(tmp_path):
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json")
    with pytest.raises(ValueError, match="not a valid safetensors file"):
        read_state_dict(bad)
    (tmp_path / "empty.pth").write_bytes(b"")
    with pytest.raises(ValueError, match="refusing to load"):
        read_state_dict(tmp_path / "empty.pth")


@pytest.mark.parametrize("pool,pos_embed,registers", [("cls", "learned", 0), ("avg", "sincos", 0),
                                                      ("avg", "learned", 4), ("cls", "none", 2)])
def test_export_loads_in_timm_with_same_logits(tmp_path, pool, pos_embed, registers):
    model = vitlab.create_model(pool=pool, pos_embed=pos_embed, num_registers=registers, **SMALL).eval()
    folder = save_timm_folder(model, tmp_path / "export", label_names=[str(i) for i in range(10)])
    args = json.loads((folder / "config.json").read_text())["model_args"]
    assert args == timm_model_args(model.cfg)
    x = torch.randn(2, 3, 32, 32)
    by_dir = timm.create_model(f"local-dir:{folder}", pretrained=True).eval()
    by_file = timm.create_model("vit_base_patch16_224", pretrained=True, **args, pretrained_cfg_overlay=dict(
        file=str(folder / "model.safetensors"), num_classes=10)).eval()
    with torch.no_grad():
        for ref in (by_dir, by_file):
            assert (ref(x) - model(x)).abs().max().item() <= 1e-5


def test_export_refuses_conv_tokenizer(tmp_path):
    with pytest.raises(ValueError, match="tokenizer='cct' has no timm VisionTransformer equivalent"):
        save_timm_folder(vitlab.create_model(tokenizer="cct", **SMALL), tmp_path)


def test_older_checkpoints_and_folders_with_flat_tokenizer_fields(tmp_path):
    """Written before tokenizers had their own options: stem_channels / cct_layers / cct_kernel as flat fields."""
    from vitlab.models.pretrained import upgrade_config_fields
    from vitlab.models.checkpoint import load_checkpoint
    from vitlab.tools import attention

    torch.manual_seed(0)
    model = vitlab.create_model("cct_micro_28", depth=1, tokenizer_options={"layers": 3, "kernel": 5}).eval()
    # an ImageClassifier .ckpt of then: every argument saved, None where the preset's value was kept
    hparams = {"preset": "cct_micro_28", "depth": 1, "tokenizer": None, "stem_channels": None, "cct_layers": 3,
               "cct_kernel": 5, "base_lr": 5e-4}
    ckpt = tmp_path / "old.ckpt"
    torch.save({"hyper_parameters": hparams, "state_dict": {f"model.{k}": v for k, v in model.state_dict().items()}},
               ckpt)
    x = torch.randn(2, 1, 28, 28)
    with torch.no_grad():
        for loaded in (vitlab.create_model(pretrained=str(ckpt)), attention.load_checkpoint(ckpt)[0],
                       load_checkpoint(ckpt).model):
            assert loaded.cfg.tokenizer_options == {"layers": 3, "kernel": 5, "mid_channels": 64}
            assert torch.equal(loaded.eval()(x), model(x))
    # a hub folder's vitlab_config of then: all three fields for every tokenizer; those of another one are dropped
    old = {k: v for k, v in model.cfg.to_dict().items() if k != "tokenizer_options"}
    assert upgrade_config_fields({**old, "stem_channels": None, "cct_layers": 3, "cct_kernel": 5}) == \
        {**old, "tokenizer_options": {"layers": 3, "kernel": 5}}
    assert upgrade_config_fields({"tokenizer": "patch", "stem_channels": None, "cct_layers": 1, "cct_kernel": 3}) == \
        {"tokenizer": "patch"}
    # today's names for them: a one-line error naming the new key
    with pytest.raises(ValueError, match=r"^cct_layers was renamed: use tokenizer_options=\{'layers': 3\} "
                                         r"\(YAML: model.arch.tokenizer_options: \{layers: 3\}\)$"):
        vitlab.create_model("cct_micro_28", cct_layers=3)
    with pytest.raises(ValueError, match=r"stem_channels was renamed: .*\{channels: \[8, 16\]\}"):
        timm.create_model("vitlab_vit_micro_conv4_28", stem_channels=(8, 16))
