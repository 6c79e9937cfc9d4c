"""DeiT's distilled ViT (``distilled=True``): timm's weights load as they are and give timm's logits; the
distillation token keeps vitlab's model contract."""
import pytest
import timm
import torch

import vitlab
from vitlab import ViTConfig
from vitlab.models.pretrained import Source, load_pretrained
from vitlab.models.vit import VisionTransformer

SMALL = dict(img_size=32, patch_size=8, embed_dim=64, depth=2, num_heads=2, num_classes=10)


def timm_deit() -> torch.nn.Module:
    torch.manual_seed(0)
    return timm.create_model("deit_tiny_distilled_patch16_224", pretrained=False, **SMALL).eval()


@pytest.fixture(scope="module")
def deit_file(tmp_path_factory):
    teacher = timm_deit()
    path = tmp_path_factory.mktemp("deit") / "deit.pth"
    torch.save(teacher.state_dict(), path)
    return teacher, path


def test_timm_weights_give_timm_logits_eval_and_train_pair(deit_file, capsys):
    timm_model, path = deit_file
    model = vitlab.create_model(pretrained=str(path), num_heads=2).eval()  # the layout is read from the tensors
    assert model.cfg.distilled and model.cfg.img_size == 32 and model.num_prefix_tokens == 2
    assert "dist_token" in model.state_dict() and "head_dist.weight" in model.state_dict()
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(model(x), timm_model(x), atol=1e-5, rtol=0)
    timm_model.train().set_distilled_training(True)
    model.train().set_distilled_training(True)
    with torch.no_grad():
        ours, theirs = model(x), timm_model(x)
    assert isinstance(ours, tuple) and len(ours) == 2
    torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=0)
    timm_model.eval().set_distilled_training(False)


def test_load_pretrained_into_a_distilled_model(deit_file):
    timm_model, path = deit_file
    model = VisionTransformer(**SMALL, distilled=True)
    load_pretrained(model, str(path), verbose=False)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(model.eval()(x), timm_model(x), atol=1e-5, rtol=0)


def test_distilled_weights_into_a_plain_model_drop_the_token_and_its_head(deit_file):
    _, path = deit_file
    model = VisionTransformer(**SMALL)
    report = load_pretrained(model, str(path), verbose=False)
    assert {"dist_token", "head_dist.weight", "head_dist.bias"} <= set(report.keys("dropped"))
    assert "pos_embed" in report.keys("adapted")


def test_plain_weights_into_a_distilled_model_start_the_token_fresh():
    plain = VisionTransformer(**SMALL)
    model = VisionTransformer(**SMALL, distilled=True)
    report = load_pretrained(model, Source("plain", dict(plain.state_dict())), verbose=False)
    assert {"dist_token", "head_dist.weight", "head_dist.bias"} <= set(report.keys("re-initialised"))
    torch.testing.assert_close(model.pos_embed[:, 2:], plain.pos_embed[:, 1:])  # image rows kept
    torch.testing.assert_close(model.pos_embed[:, :1], plain.pos_embed[:, :1])  # class row kept


def test_distilled_needs_class_pooling():
    with pytest.raises(ValueError, match=r"distilled=True .* pool='cls', got pool='avg'"):
        ViTConfig(**SMALL, distilled=True, pool="avg")
    with pytest.raises(ValueError, match=r"distilled must be true or false"):
        ViTConfig(**SMALL, distilled="yes")


def test_contract_with_the_distillation_token():
    model = VisionTransformer(**SMALL, distilled=True, num_registers=2).eval()
    assert model.num_prefix_tokens == 4 and model.pos_embed.shape[1] == 4 + 16
    assert "dist_token" in model.no_weight_decay()
    assert isinstance(model.get_classifier(), tuple)
    x = torch.randn(2, 3, 32, 32)
    assert model.forward_features(x).shape == (2, 20, 64)
    assert model.forward_head(model.forward_features(x), pre_logits=True).shape == (2, 64)
    final, inter = model.forward_intermediates(x, return_prefix_tokens=True)
    assert inter[-1][0].shape == (2, 64, 4, 4) and inter[-1][1].shape == (2, 4, 64)
    model.reset_classifier(5)
    assert model(x).shape == (2, 5) and model.head_dist.out_features == 5
    model.train().set_distilled_training(True)
    assert [y.shape for y in model(x)] == [(2, 5), (2, 5)]
    model.eval()
    with torch.no_grad():
        torch.testing.assert_close(torch.jit.script(model)(x), model(x))  # scripting: the averaged heads
    matcher = model.group_matcher()
    assert "dist_token" in matcher["stem"]
    with pytest.raises(ValueError, match="distilled=True"):
        VisionTransformer(**SMALL).set_distilled_training(True)
