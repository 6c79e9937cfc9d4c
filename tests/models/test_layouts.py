"""Published timm ViT layouts load by looking at the checkpoint: tiny timm models built with the flags of timm's
own ``vit_*`` definitions (shrunk by keyword arguments) give vitlab models with timm's logits (<= 1e-5, fp32, eval),
with no layout flag from the user; what vitlab cannot express is an error naming it."""
import pytest
import timm
import torch
from safetensors.torch import save_file
from timm.layers import RmsNorm, SwiGLU, SwiGLUPacked
from timm.models import save_for_hf

import vitlab
from vitlab.models.pretrained import create_pretrained, read_source, resolve_config

TINY = dict(img_size=32, patch_size=8, embed_dim=48, depth=2, num_heads=3, num_classes=10)
# the shapes of vitlab's vit_micro_patch4_28 preset, so the preset alone describes them
MICRO = dict(img_size=28, patch_size=4, in_chans=1, embed_dim=64, depth=6, num_heads=4, mlp_ratio=2.0,
             num_classes=10)

# layout -> (timm architecture whose flags are used, extra timm kwargs, vitlab fields the checkpoint must give)
LAYOUTS = {
    "cls_token": ("vit_small_patch16_224", {}, dict(pool="cls", num_registers=0)),
    "layerscale": ("vit_small_patch14_dinov2", {}, dict(pool="cls", layer_scale_init=1e-5)),
    "reg4_gap": ("vit_base_patch16_reg4_gap_256", {},
                 dict(pool="avg", class_token=None, num_registers=4, pos_embed_prefix=False, fc_norm=None)),
    "reg4_gap_fc_norm_false": ("vit_so150m_patch16_reg4_gap_256", {},  # positions cover the registers
                               dict(pool="avg", num_registers=4, pos_embed_prefix=True, fc_norm=False)),
    "gap_fc_norm_false": ("vit_medium_patch16_gap_256", {},  # also qkv_bias=False, LayerScale
                          dict(pool="avg", fc_norm=False, qkv_bias=False, layer_scale_init=1e-5)),
    "gap_fc_norm": ("vit_base_patch16_224", dict(class_token=False, global_pool="avg"),
                    dict(pool="avg", class_token=None, fc_norm=None)),
    "cls_reg4_dinov2": ("vit_small_patch14_reg4_dinov2", {},
                        dict(pool="cls", num_registers=4, pos_embed_prefix=False, layer_scale_init=1e-5)),
    "reg1_gap": ("vit_medium_patch16_reg1_gap_256", {}, dict(pool="avg", num_registers=1, pos_embed_prefix=False)),
    "avg_with_class_token": ("vit_base_patch16_224", dict(global_pool="avg"),
                             dict(pool="avg", class_token=True, fc_norm=None)),
    "no_qkv_bias_miil": ("vit_base_patch16_224_miil", {}, dict(qkv_bias=False)),
    "qk_norm": ("vit_base_patch16_224", dict(qk_norm=True), dict(qk_norm=True)),
    "no_pos_embed": ("vit_base_patch16_224", dict(pos_embed="none"), dict(pos_embed="none")),
}
MAX_DIFF: dict[str, float] = {}  # layout -> max |logits diff|, printed at the end (pytest -s) for the docs


def _timm(arch: str, **kwargs) -> torch.nn.Module:
    torch.manual_seed(0)
    model = timm.create_model(arch, pretrained=False, **kwargs).eval()
    with torch.no_grad():
        for p in model.parameters():  # away from the init (LayerScale 1e-6, zero tokens) so every tensor matters
            p.add_(0.05 * torch.randn_like(p))
    return model


def _save(model: torch.nn.Module, path) -> str:
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    return str(path)


def _max_diff(model: torch.nn.Module, ref: torch.nn.Module, in_chans: int, side: int) -> float:
    x = torch.randn(3, in_chans, side, side)
    with torch.no_grad():
        logits = (model.eval()(x) - ref(x)).abs().max().item()
        features = (model.forward_features(x) - ref.forward_features(x)).abs().max().item()
    return max(logits, features)


@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_layout_loads_with_timm_logits(layout, tmp_path):
    arch, kwargs, expected = LAYOUTS[layout]
    ref = _timm(arch, **{**TINY, **kwargs})
    path = _save(ref, tmp_path / "w.safetensors")
    model = vitlab.create_model(pretrained=path, num_heads=3)  # nothing else: the tensors say the rest
    shapes = dict(embed_dim=48, depth=2, patch_size=8, img_size=32 if "pos_embed" in ref.state_dict() else 224)
    for key, value in {**expected, **shapes}.items():  # without positions the image size is not in the weights
        assert getattr(model.cfg, key) == value, (key, getattr(model.cfg, key), value)
    diff = _max_diff(model, ref, 3, 32)
    MAX_DIFF[layout] = max(diff, MAX_DIFF.get(layout, 0.0))
    assert diff <= 1e-5, diff


@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_layout_loads_into_a_preset(layout, tmp_path):
    """``create_model(PRESET, pretrained=...)``: the preset gives the shapes, the checkpoint its layout."""
    arch, kwargs, expected = LAYOUTS[layout]
    ref = _timm(arch, **{**MICRO, **kwargs})
    model = vitlab.create_model("vit_micro_patch4_28", pretrained=_save(ref, tmp_path / "w.safetensors"))
    for key, value in expected.items():
        assert getattr(model.cfg, key) == value, (key, getattr(model.cfg, key), value)
    diff = _max_diff(model, ref, 1, 28)
    MAX_DIFF[layout] = max(diff, MAX_DIFF.get(layout, 0.0))
    assert diff <= 1e-5, diff


@pytest.mark.parametrize("layout", ["cls_token", "reg4_gap", "gap_fc_norm_false", "cls_reg4_dinov2"])
def test_timm_hub_folder_states_heads_and_pooling(layout, tmp_path):
    """A folder timm wrote (config.json: architecture + model_args) needs no num_heads from the user."""
    arch, kwargs, _ = LAYOUTS[layout]
    ref = _timm(arch, **{**TINY, **kwargs})
    save_for_hf(ref, str(tmp_path), safe_serialization=True)
    model = vitlab.create_model(pretrained=str(tmp_path))
    assert model.cfg.num_heads == 3
    assert _max_diff(model, ref, 3, 32) <= 1e-5


def test_class_token_avg_pool_without_fc_norm_from_timm_folder(tmp_path):
    """class token + norm before pooling is timm's token pooling unless the architecture says avg: the folder's
    config.json decides (the tensors of both are the same)."""
    ref = _timm("vit_base_patch16_224", **TINY, global_pool="avg", fc_norm=False)
    save_for_hf(ref, str(tmp_path), safe_serialization=True)
    model = vitlab.create_model(pretrained=str(tmp_path))
    assert (model.cfg.pool, model.cfg.class_token, model.cfg.fc_norm) == ("avg", True, False)
    assert _max_diff(model, ref, 3, 32) <= 1e-5


def test_heads_differing_from_the_preset_come_from_the_source(tmp_path):
    """vit_base_patch16_gap_224 has 16 heads where ViT-B has 12: equal tensor shapes, other results."""
    ref = _timm("vit_base_patch16_gap_224", **{**MICRO, "num_heads": 8})
    save_for_hf(ref, str(tmp_path), safe_serialization=True)
    model = vitlab.create_model("vit_micro_patch4_28", pretrained=str(tmp_path))
    assert model.cfg.num_heads == 8 and _max_diff(model, ref, 1, 28) <= 1e-5


def test_overrides_beat_the_checkpoint(tmp_path):
    ref = _timm("vit_base_patch16_reg4_gap_256", **TINY)
    path = _save(ref, tmp_path / "w.safetensors")
    model = vitlab.create_model(pretrained=path, num_heads=3, num_classes=5, img_size=48)
    assert (model.cfg.num_classes, model.cfg.img_size, model.cfg.num_registers) == (5, 48, 4)
    assert model(torch.randn(1, 3, 48, 48)).shape == (1, 5)


def test_source_is_read_once(tmp_path, monkeypatch):
    ref = _timm("vit_small_patch16_224", **TINY)
    path = _save(ref, tmp_path / "w.safetensors")
    from vitlab.models.pretrained import sources
    calls = []
    original = sources._load
    monkeypatch.setattr(sources, "_load", lambda p: calls.append(p) or original(p))
    create_pretrained(None, path, num_heads=3)
    assert len(calls) == 1


def test_no_heads_is_an_error_asking_for_them(tmp_path):
    path = _save(_timm("vit_small_patch16_224", **TINY), tmp_path / "w.safetensors")
    with pytest.raises(ValueError, match=r"num_heads cannot be read from the weights.*pass num_heads=\.\.\."):
        vitlab.create_model(pretrained=path)


def test_mlp_ratio_read_exactly():
    """timm sizes the MLP as int(D * mlp_ratio): a ratio read from the shapes gives the same width back."""
    ref = _timm("vit_so150m_patch16_reg4_gap_256", **{**TINY, "embed_dim": 896 // 8, "num_heads": 2})
    cfg = resolve_config(None, read_source(_state_source(ref)), {"num_heads": 2})
    hidden = ref.blocks[0].mlp.fc1.out_features
    assert int(cfg.embed_dim * cfg.mlp_ratio) == hidden


def _state_source(model):
    from vitlab.models.pretrained import Source
    return Source("timm", dict(model.state_dict()))


# ---------------------------------------------------------------- what vitlab cannot express
UNSUPPORTED = {
    # layout -> (timm architecture or None for timm's VisionTransformer class, kwargs, words the error must have)
    "siglip_map": ("vit_base_patch16_siglip_224", {}, ["attention pooling", "global_pool='map'", "attn_pool."]),
    "clip_pre_norm": ("vit_base_patch16_clip_224", {}, ["pre_norm=True", "norm_pre.", "patch_embed.proj.bias"]),
    "swiglu": ("vit_base_patch16_224", dict(mlp_layer=SwiGLU), ["SwiGLU", "blocks.0.mlp.fc1_g"]),
    "swiglu_packed": ("vit_base_patch16_224", dict(mlp_layer=SwiGLUPacked, mlp_ratio=2 * 2.0),
                      ["gated MLP", "SwiGLUPacked"]),
    "scale_mlp_norm": ("vit_base_patch16_224", dict(scale_mlp_norm=True), ["scale_mlp_norm", "blocks.0.mlp.norm"]),
    "scale_attn_norm": ("vit_base_patch16_224", dict(scale_attn_norm=True), ["scale_attn_norm"]),
    "proj_bias_false": ("vit_base_patch16_224", dict(proj_bias=False), ["proj_bias=False"]),
    "rms_norm": ("vit_base_patch16_224", dict(norm_layer=RmsNorm), ["RmsNorm", "blocks.0.norm1.bias"]),
    "final_norm_false": ("vit_base_patch16_224", dict(final_norm=False), ["final_norm=False"]),
}


@pytest.mark.parametrize("layout", list(UNSUPPORTED))
def test_what_vitlab_cannot_express_is_named(layout, tmp_path):
    arch, kwargs, words = UNSUPPORTED[layout]
    ref = _timm(arch, **{**TINY, **kwargs})
    path = _save(ref, tmp_path / "w.safetensors")
    for name in (None, "vit_micro_patch4_28"):
        with pytest.raises(ValueError) as err:
            vitlab.create_model(name, pretrained=path, num_heads=3)
        message = str(err.value)
        assert "vitlab cannot express" in message and "\n" not in message, message
        for word in words:
            assert word in message, (word, message)


@pytest.mark.parametrize("kwargs, words", [
    (dict(global_pool="max"), ["global_pool='max'"]),
    (dict(act_layer="quick_gelu"), ["MLP activation", "act_layer"]),
    (dict(pool_include_prefix=True, global_pool="avg"), ["pool_include_prefix"]),
], ids=["max_pool", "quick_gelu", "pool_include_prefix"])
def test_architecture_settings_without_tensors_are_named(tmp_path, kwargs, words):
    """Settings the tensors do not show are read from a timm folder's architecture and refused by name."""
    save_for_hf(_timm("vit_base_patch16_224", **TINY, **kwargs), str(tmp_path), safe_serialization=True)
    with pytest.raises(ValueError) as err:
        vitlab.create_model(pretrained=str(tmp_path))
    for word in words:
        assert word in str(err.value), (word, str(err.value))


def test_unknown_keys_are_named(tmp_path):
    state = _timm("vit_small_patch16_224", **TINY).state_dict()
    state["blocks.0.adapter.weight"] = torch.zeros(3)
    save_file({k: v.contiguous() for k, v in state.items()}, str(tmp_path / "w.safetensors"))
    with pytest.raises(ValueError, match=r"unknown keys \(1\): \['blocks.0.adapter.weight'\]"):
        vitlab.create_model(pretrained=str(tmp_path / "w.safetensors"), num_heads=3)


def test_report_max_differences():
    """Not a check: prints the measured differences (pytest -s) for docs/finetune-and-hub.md."""
    for layout, diff in sorted(MAX_DIFF.items()):
        print(f"{layout:<26} max |logits - timm| = {diff:.2e}")
