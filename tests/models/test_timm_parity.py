"""With the same weights, vitlab's logits equal timm's VisionTransformer (max abs diff <= 1e-5, fp32, eval)."""
import pytest
import timm
import torch
from safetensors.torch import save_file
from timm.layers import resample_abs_pos_embed

import vitlab
from vitlab.models.pretrained import UnsafeCheckpointError

SMALL = dict(img_size=32, patch_size=8, embed_dim=48, depth=2, num_heads=3, num_classes=10)
# (timm kwargs, vitlab overrides) for the same architecture
VARIANTS = {
    "cls_token": (dict(), dict()),
    "avg_pool": (dict(global_pool="avg", class_token=False), dict(pool="avg")),
    "avg_pool_with_cls": (dict(global_pool="avg"), dict(pool="avg", class_token=True)),
    "registers_no_embed_class": (
        dict(global_pool="avg", class_token=False, reg_tokens=4, no_embed_class=True),
        dict(pool="avg", num_registers=4, pos_embed_prefix=False)),
    "cls_registers": (dict(reg_tokens=2), dict(num_registers=2)),
    "layerscale_qknorm": (dict(init_values=1e-2, qk_norm=True), dict(layer_scale_init=1e-2, qk_norm=True)),
    "no_pos_embed": (dict(pos_embed="none"), dict(pos_embed="none")),
    "grayscale": (dict(in_chans=1), dict(in_chans=1)),
}


def _random_timm(**kwargs):
    torch.manual_seed(0)
    model = timm.create_model("vit_tiny_patch16_224", pretrained=False, **{**SMALL, **kwargs}).eval()
    with torch.no_grad():
        for p in model.parameters():  # move away from the init so every tensor matters
            p.add_(0.05 * torch.randn_like(p))
    return model


@pytest.mark.parametrize("variant", list(VARIANTS))
@pytest.mark.parametrize("suffix", [".safetensors", ".pth"])
def test_logits_equal_timm(variant, suffix, tmp_path):
    timm_kwargs, ours = VARIANTS[variant]
    ref = _random_timm(**timm_kwargs)
    path = tmp_path / f"w{suffix}"
    state = {k: v.contiguous() for k, v in ref.state_dict().items()}
    save_file(state, str(path)) if suffix == ".safetensors" else torch.save(state, path)
    model = vitlab.create_model(pretrained=str(path), **{**SMALL, **ours}).eval()
    x = torch.randn(4, ref.patch_embed.proj.in_channels, 32, 32)
    with torch.no_grad():
        diff = (model(x) - ref(x)).abs().max().item()
        feat_diff = (model.forward_features(x) - ref.forward_features(x)).abs().max().item()
    assert diff <= 1e-5 and feat_diff <= 1e-5, (diff, feat_diff)


def test_preset_matches_timm_param_count_and_logits():
    """vit_tiny_patch16_224 at full size: timm's exact parameter count and logits."""
    ref = timm.create_model("vit_tiny_patch16_224", pretrained=False).eval()
    model = vitlab.create_model("vit_tiny_patch16_224").eval()
    assert sum(p.numel() for p in model.parameters()) == sum(p.numel() for p in ref.parameters()) == 5_717_416
    model.load_state_dict(ref.state_dict())
    x = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        assert (model(x) - ref(x)).abs().max().item() <= 1e-5


def test_missing_and_unexpected_keys_listed(tmp_path):
    ref = _random_timm()
    state = ref.state_dict()
    del state["blocks.1.mlp.fc2.bias"]
    state["blocks.9.attn.qkv.weight"] = torch.zeros(3)
    torch.save(state, tmp_path / "w.pth")
    with pytest.raises(ValueError) as err:
        vitlab.create_model(pretrained=str(tmp_path / "w.pth"), **SMALL)
    assert "missing keys (1): ['blocks.1.mlp.fc2.bias']" in str(err.value)
    assert "unexpected keys (1): ['blocks.9.attn.qkv.weight']" in str(err.value)


def test_pos_embed_resampled_like_timm(tmp_path):
    """Weights from a 32 px model load into a 48 px model; positions resampled exactly as timm does."""
    ref = _random_timm()
    torch.save(ref.state_dict(), tmp_path / "w.pth")
    model = vitlab.create_model(pretrained=str(tmp_path / "w.pth"), **{**SMALL, "img_size": 48})
    expected = resample_abs_pos_embed(ref.pos_embed, new_size=[6, 6], old_size=[4, 4], num_prefix_tokens=1)
    torch.testing.assert_close(model.pos_embed, expected)
    # running the 32 px model at 48 px resamples on the fly, same numbers as timm's dynamic_img_size
    dyn = timm.create_model("vit_tiny_patch16_224", **SMALL, dynamic_img_size=True).eval()
    dyn.load_state_dict(ref.state_dict())
    small = vitlab.create_model(**SMALL).eval()
    small.load_state_dict(ref.state_dict())
    x = torch.randn(2, 3, 48, 48)
    with torch.no_grad():
        assert (small(x) - dyn(x)).abs().max().item() <= 1e-5


def test_set_input_size_matches_timm():
    ref = _random_timm()
    model = vitlab.create_model(**SMALL)
    model.load_state_dict(ref.state_dict())
    model.set_input_size(64)
    ref.set_input_size(img_size=(64, 64))
    torch.testing.assert_close(model.pos_embed, ref.pos_embed)
    assert model.grid == (8, 8)


def test_code_running_pickle_refused(tmp_path):
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    torch.save({"state_dict": Evil()}, tmp_path / "evil.pth")
    with pytest.raises(UnsafeCheckpointError, match="refusing to load"):
        vitlab.create_model(pretrained=str(tmp_path / "evil.pth"), **SMALL)
    assert not marker.exists()


def test_timm_create_model_finds_vitlab():
    model = timm.create_model("vitlab_vit_micro_patch4_28", num_classes=3, drop_path_rate=0.1)
    assert isinstance(model, vitlab.VisionTransformer)
    assert model(torch.randn(1, 1, 28, 28)).shape == (1, 3)
    assert "vitlab_cct_7_3x1_32" in timm.list_models("vitlab_*")
