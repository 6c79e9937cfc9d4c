"""vitlab_ models keep timm's model contract (issue 19, items 1-4): data config, create_model keywords, feature
extraction and the optimizer factory, checked against timm's own VisionTransformer with the same weights."""
import logging

import pytest
import timm
import torch
import torchvision.models.feature_extraction as tv_fx
from safetensors.torch import save_file
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD, resolve_model_data_config
from timm.models import get_model_input_config, get_notrace_functions, get_notrace_modules
from timm.optim import create_optimizer_v2, param_groups_layer_decay

import vitlab
from vitlab.data.stats import CIFAR10_MEAN, CIFAR10_STD, FASHION_MNIST_MEAN, FASHION_MNIST_STD

SMALL = dict(img_size=32, patch_size=8, embed_dim=48, depth=3, num_heads=3, num_classes=10)
# (timm kwargs, vitlab overrides) for the same architecture
VARIANTS = {
    "cls": (dict(), dict()),
    "reg4_avg": (dict(reg_tokens=4, class_token=False, global_pool="avg", no_embed_class=True),
                 dict(num_registers=4, pool="avg", pos_embed_prefix=False)),
}
MICRO = {"patch": "vit_micro_patch4_28", "conv": "vit_micro_conv4_28", "cct": "cct_micro_28"}  # 1x28x28, D=64


def _pair(variant: str = "cls"):
    """timm's ViT (weights moved off the init so every tensor matters) and a vitlab model with its weights."""
    timm_kwargs, ours = VARIANTS[variant]
    torch.manual_seed(0)
    ref = timm.create_model("vit_tiny_patch16_224", **SMALL, **timm_kwargs).eval()
    with torch.no_grad():
        for p in ref.parameters():
            p.add_(0.05 * torch.randn_like(p))
    model = vitlab.create_model(**SMALL, **ours).eval()
    model.load_state_dict(ref.state_dict())
    return ref, model


def _micro(tokenizer: str = "patch", **kwargs):
    return timm.create_model(f"vitlab_{MICRO[tokenizer]}", **kwargs).eval()


def _assert_close(a, b, tol: float = 1e-5) -> None:
    """Same nesting of tuples/lists, tensors equal within ``tol``."""
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and a.shape == b.shape, (getattr(b, "shape", type(b)), a.shape)
        assert (a - b).abs().max().item() <= tol
        return
    assert isinstance(a, (tuple, list)) and isinstance(b, (tuple, list)) and len(a) == len(b), (type(b), type(a))
    for x, y in zip(a, b):
        _assert_close(x, y, tol)


# ------------------------------------------------------------------- 1. pretrained_cfg and the data config
@pytest.mark.parametrize("preset,input_size,mean,std,crop_pct", [
    ("vit_micro_patch4_28", (1, 28, 28), FASHION_MNIST_MEAN, FASHION_MNIST_STD, 1.0),
    ("cct_micro_28", (1, 28, 28), FASHION_MNIST_MEAN, FASHION_MNIST_STD, 1.0),
    ("vit_lite_7_conv4_32", (3, 32, 32), CIFAR10_MEAN, CIFAR10_STD, 1.0),
    ("vit_tiny_patch16_224", (3, 224, 224), IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD, 0.875),
])
def test_data_config_is_the_presets_data_set(preset, input_size, mean, std, crop_pct):
    config = resolve_model_data_config(timm.create_model(f"vitlab_{preset}", device="meta"))
    assert config["input_size"] == input_size
    assert tuple(config["mean"]) == tuple(mean) and tuple(config["std"]) == tuple(std)
    assert config["crop_pct"] == crop_pct


@pytest.mark.parametrize("tokenizer", list(MICRO))
def test_first_conv_and_classifier_name_real_layers(tokenizer):
    model = _micro(tokenizer)
    modules = dict(model.named_modules())
    first_conv, classifier = modules[model.pretrained_cfg["first_conv"]], modules[model.pretrained_cfg["classifier"]]
    assert isinstance(first_conv, torch.nn.Conv2d) and first_conv.in_channels == 1
    assert isinstance(classifier, torch.nn.Linear) and classifier.out_features == model.pretrained_cfg["num_classes"]


def test_set_input_size_updates_timm_input_config():
    """timm 1.0.31 keeps the source pretrained_cfg untouched and records a resize in the model's traits."""
    model = _micro()
    assert get_model_input_config(model)["input_size"] == (1, 28, 28)
    model.set_input_size(img_size=(32, 48))
    assert get_model_input_config(model)["input_size"] == (1, 32, 48)
    config = resolve_model_data_config(model)  # normalisation still the preset's data set
    assert tuple(config["mean"]) == FASHION_MNIST_MEAN and tuple(config["std"]) == FASHION_MNIST_STD


# ------------------------------------------------------------------- 2. create_model keywords
def test_create_model_keywords_take_effect():
    model = _micro(num_classes=5, in_chans=3, img_size=(28, 56), global_pool="avg", drop_rate=0.1,
                   drop_path_rate=0.2, dynamic_img_size=True)
    assert model.head.out_features == 5 and model.patch_embed.proj.in_channels == 3
    assert model.grid == (7, 14) and model.pos_embed.shape == (1, 7 * 14, 64)  # avg: no class token, no prefix row
    assert model.global_pool == "avg" and model.cls_token is None
    assert model.head_drop.p == 0.1
    assert model.blocks[-1].drop_path1.drop_prob == pytest.approx(0.2)
    assert model(torch.randn(2, 3, 28, 56)).shape == (2, 5)
    assert model(torch.randn(2, 3, 28, 28)).shape == (2, 5)  # dynamic size: positions resampled


def test_device_and_dtype():
    meta = _micro(device="meta")
    assert {t.device.type for t in [*meta.parameters(), *meta.buffers()]} == {"meta"}
    double = _micro("cct", dtype=torch.float64)
    assert {p.dtype for p in double.parameters()} == {torch.float64}
    assert double(torch.randn(1, 1, 28, 28, dtype=torch.float64)).dtype == torch.float64


def test_unknown_keyword_is_type_and_value_error():
    with pytest.raises(TypeError, match="not_a_keyword") as err:
        _micro(not_a_keyword=1)
    assert isinstance(err.value, ValueError)


@pytest.mark.parametrize("pool", ["map", "max", "avgmax", ""])
def test_unsupported_global_pool_named(pool):
    with pytest.raises(ValueError, match=f"global_pool={pool!r}"):
        _micro(global_pool=pool)


def test_pretrained_without_source_says_how():
    with pytest.raises(ValueError, match="pretrained_cfg_overlay=dict\\(file=") as err:
        _micro(pretrained=True)
    assert "checkpoint_path" in str(err.value)


@pytest.mark.parametrize("suffix", [".safetensors", ".pth"])
def test_pretrained_file_and_checkpoint_path_load(suffix, tmp_path):
    torch.manual_seed(0)
    saved = _micro()
    path = tmp_path / f"w{suffix}"
    state = {k: v.contiguous() for k, v in saved.state_dict().items()}
    save_file(state, str(path)) if suffix == ".safetensors" else torch.save(state, path)
    x = torch.randn(2, 1, 28, 28)
    with torch.no_grad():
        expected, pooled = saved(x), saved.forward_head(saved.forward_features(x), pre_logits=True)
        torch.manual_seed(1)  # a different init: equal logits can only come from the file
        loaded = _micro(pretrained=True, pretrained_cfg_overlay=dict(file=str(path)))
        _assert_close(loaded(x), expected)
        other = _micro(pretrained=True, pretrained_cfg_overlay=dict(file=str(path)), num_classes=5)
        assert other.head.weight.shape == (5, 64)  # a fresh head, the rest from the file
        _assert_close(other.forward_head(other.forward_features(x), pre_logits=True), pooled)
        _assert_close(_micro(checkpoint_path=str(path))(x), expected)


# ------------------------------------------------------------------- 3. feature extraction
INTERMEDIATE_KWARGS = [
    dict(), dict(indices=2), dict(indices=[0, -1]), dict(norm=True), dict(output_fmt="NLC"),
    dict(output_fmt="NCHW", indices=[1]), dict(intermediates_only=True), dict(indices=[0], stop_early=True),
    dict(return_prefix_tokens=True), dict(return_prefix_tokens=True, output_fmt="NLC", intermediates_only=True),
]


@pytest.mark.parametrize("variant", list(VARIANTS))
@pytest.mark.parametrize("kwargs", INTERMEDIATE_KWARGS, ids=str)
def test_forward_intermediates_equal_timm(variant, kwargs):
    ref, model = _pair(variant)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        _assert_close(model.forward_intermediates(x, **kwargs), ref.forward_intermediates(x, **kwargs))


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_prune_intermediate_layers_keeps_taps(variant):
    ref, model = _pair(variant)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        before = model.forward_intermediates(x, indices=[0, 1], intermediates_only=True)
        assert model.prune_intermediate_layers([0, 1]) == ref.prune_intermediate_layers([0, 1])
        assert len(model.blocks) == 2 and len(model.feature_info) == 2
        after = model.forward_intermediates(x, indices=[0, 1], intermediates_only=True)
        _assert_close(after, before)
        _assert_close(after, ref.forward_intermediates(x, indices=[0, 1], intermediates_only=True))


@pytest.mark.parametrize("tokenizer", list(MICRO))
def test_features_only(tokenizer):
    net = _micro(tokenizer, features_only=True, out_indices=(1, 3))
    assert net.feature_info.module_name() == ["blocks.1", "blocks.3"]
    assert net.feature_info.channels() == [64, 64] and net.feature_info.reduction() == [4, 4]
    with torch.no_grad():
        maps = net(torch.randn(2, 1, 28, 56))
    assert [m.shape for m in maps] == [(2, 64, 7, 14)] * 2  # NCHW, H / reduction x W / reduction


@pytest.mark.parametrize("extractor", ["timm", "torchvision"])
def test_fx_feature_extractor_equals_eager(extractor):
    _, model = _pair()
    nodes = {"blocks.1": "mid", "head": "logits"}
    if extractor == "timm":
        traced = timm.models.create_feature_extractor(model, nodes)
    else:
        traced = tv_fx.create_feature_extractor(model, nodes, tracer_kwargs=dict(
            leaf_modules=list(get_notrace_modules()), autowrap_functions=list(get_notrace_functions())))
    seen = {}
    model.blocks[1].register_forward_hook(lambda mod, args, out: seen.update(mid=out))
    with torch.no_grad():
        for x in (torch.randn(2, 3, 32, 32), torch.randn(2, 3, 32, 48)):  # also at a size it was not traced at
            out = traced(x)
            _assert_close(out["logits"], model(x))
            _assert_close(out["mid"], seen["mid"])


def test_torchscript_equals_eager():
    _, model = _pair("reg4_avg")
    scripted = torch.jit.script(model)
    with torch.no_grad():
        for x in (torch.randn(2, 3, 32, 32), torch.randn(2, 3, 48, 40)):  # 48x40: position table resampled
            _assert_close(scripted(x), model(x))


# ------------------------------------------------------------------- 4. optimizer factory and timm's model methods
def _lr_scales(model) -> dict:
    names = {id(p): n for n, p in model.named_parameters()}
    return {names[id(p)]: g["lr_scale"] for g in param_groups_layer_decay(model, layer_decay=0.65) for p in g["params"]}


def test_layer_decay_groups_equal_timm(caplog):
    ref, model = _pair()
    with caplog.at_level(logging.WARNING):
        ours = _lr_scales(model)
        optimizer = create_optimizer_v2(model, "adamw", lr=1e-3, layer_decay=0.65)
    assert "one layer" not in caplog.text
    assert ours == _lr_scales(ref)  # every parameter name, the same lr scale
    assert len(set(ours.values())) == SMALL["depth"] + 2  # stem, one per block, final norm + head
    assert {g["lr_scale"] for g in optimizer.param_groups} == set(ours.values())
    assert ours["blocks.0.attn.qkv.weight"] < ours["blocks.2.attn.qkv.weight"] < ours["head.weight"] == 1.0


@pytest.mark.parametrize("tokenizer", ["conv", "cct"])
def test_layer_decay_groups_other_tokenizers(tokenizer, caplog):
    model = _micro(tokenizer)
    with caplog.at_level(logging.WARNING):
        scales = _lr_scales(model)
    assert "one layer" not in caplog.text
    assert len(set(scales.values())) == len(model.blocks) + 2
    stem = {s for n, s in scales.items() if n.startswith("patch_embed.")}
    assert stem == {min(scales.values())} and scales["head.weight"] == 1.0


def test_reset_classifier_keeps_device_dtype_and_mode():
    model = _micro().to(torch.float64)
    for training in (True, False):
        model.train(training)
        model.reset_classifier(5)
        assert model.head.weight.dtype == torch.float64 and model.head.weight.device.type == "cpu"
        assert model.head.training is training and model.num_classes == 5
    assert model(torch.randn(2, 1, 28, 28, dtype=torch.float64)).shape == (2, 5)


def test_reset_classifier_zero_returns_pooled_features():
    model = _micro()
    x = torch.randn(2, 1, 28, 28)
    with torch.no_grad():
        pooled = model.forward_head(model.forward_features(x), pre_logits=True)
        model.reset_classifier(0)
        _assert_close(model(x), pooled)
    assert pooled.shape == (2, 64)


def test_reset_classifier_global_pool():
    model = _micro()  # pools by the class token
    with pytest.raises(ValueError, match="global_pool='avg'"):
        model.reset_classifier(3, global_pool="avg")
    model.reset_classifier(3, global_pool="token")
    assert model.head.out_features == 3
    avg = _micro(global_pool="avg")
    avg.reset_classifier(4, global_pool="avg")
    assert avg.head.out_features == 4


def test_set_input_size_img_equals_timm():
    ref, model = _pair()
    ref.set_input_size(img_size=(32, 48))
    model.set_input_size(img_size=(32, 48))
    x = torch.randn(1, 3, 32, 48)
    with torch.no_grad():
        _assert_close(model.pos_embed, ref.pos_embed)
        _assert_close(model(x), ref(x))


def test_set_input_size_patch_equals_timm():
    ref, model = _pair()
    ref.set_input_size(patch_size=(4, 4))
    model.set_input_size(patch_size=4)
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        _assert_close(model.patch_embed.proj.weight, ref.patch_embed.proj.weight)
        _assert_close(model.pos_embed, ref.pos_embed)
        _assert_close(model(x), ref(x))


@pytest.mark.parametrize("tokenizer", ["conv", "cct"])
def test_set_input_size_patch_rejected_for_conv_and_cct(tokenizer):
    with pytest.raises(ValueError, match=repr(tokenizer)):
        _micro(tokenizer).set_input_size(patch_size=2)


@pytest.mark.parametrize("tokenizer", ["conv", "cct"])
def test_non_square_conv_and_cct(tokenizer):
    model = _micro(tokenizer)
    model.set_input_size(img_size=(28, 56))
    assert model.grid == (7, 14)
    with torch.no_grad():
        assert model(torch.randn(2, 1, 28, 56)).shape == (2, 10)
        assert _micro(tokenizer, img_size=(56, 28))(torch.randn(1, 1, 56, 28)).shape == (1, 10)


@pytest.mark.parametrize("overrides,expected", [
    (dict(), {"pos_embed", "cls_token"}),
    (dict(num_registers=2), {"pos_embed", "cls_token", "reg_token"}),
    (dict(pos_embed="sincos", pool="avg"), set()),
])
def test_no_weight_decay_names_existing_parameters(overrides, expected):
    model = vitlab.create_model(**{**SMALL, **overrides})
    assert model.no_weight_decay() == expected
    assert expected <= dict(model.named_parameters()).keys()
