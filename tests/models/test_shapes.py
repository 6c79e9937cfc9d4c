"""Shapes for every tokenizer x pooling x position combination, several image sizes and channel counts."""
import itertools

import pytest
import torch

import vitlab
from vitlab.models.flops import num_tokens

TINY = dict(embed_dim=32, depth=2, num_heads=2, num_classes=7)


@pytest.mark.parametrize("tokenizer,pool,pos_embed", itertools.product(
    ["patch", "conv", "cct"], ["cls", "avg", "seq"], ["learned", "sincos", "none"]))
@pytest.mark.parametrize("img_size,in_chans", [(28, 1), (32, 3), (64, 4)])
def test_forward_shapes(tokenizer, pool, pos_embed, img_size, in_chans):
    model = vitlab.create_model(tokenizer=tokenizer, pool=pool, pos_embed=pos_embed, img_size=img_size,
                                in_chans=in_chans, patch_size=4, num_registers=1 if pool == "avg" else 0, **TINY)
    x = torch.randn(2, in_chans, img_size, img_size)
    tokens = model.patch_embed(x)
    n = num_tokens(model.cfg)
    assert tokens.shape == (2, n, 32)
    assert model.grid[0] * model.grid[1] == n
    feats = model.forward_features(x)
    assert feats.shape == (2, model.num_prefix_tokens + n, 32)
    assert model.forward_head(feats, pre_logits=True).shape == (2, 32)
    assert model(x).shape == (2, 7)


@pytest.mark.parametrize("tokenizer", ["patch", "conv", "cct"])
def test_runs_at_other_image_size(tokenizer):
    """A model built at 32 px runs at 48 px: learned positions are resampled on the fly."""
    model = vitlab.create_model(tokenizer=tokenizer, img_size=32, patch_size=4, **TINY).eval()
    out = model(torch.randn(1, 3, 48, 48))
    assert out.shape == (1, 7) and torch.isfinite(out).all()


def test_conv_stem_matches_patch_grid():
    for p in (2, 4, 8, 16):
        patch = vitlab.create_model(tokenizer="patch", patch_size=p, img_size=64, **TINY)
        conv = vitlab.create_model(tokenizer="conv", patch_size=p, img_size=64, **TINY)
        assert patch.grid == conv.grid == (64 // p, 64 // p)
    conv = vitlab.create_model(tokenizer="conv", patch_size=16, img_size=224, embed_dim=192, depth=1,
                               num_heads=3)
    widths = [layer[0].out_channels for layer in conv.patch_embed.stem]
    assert widths == [24, 48, 96, 192]  # Xiao et al.'s ViTC-1GF stem


def test_reset_classifier_and_no_head():
    model = vitlab.create_model(tokenizer="patch", img_size=32, patch_size=8, **TINY)
    model.reset_classifier(3)
    assert model(torch.randn(1, 3, 32, 32)).shape == (1, 3)
    model.reset_classifier(0)
    assert model(torch.randn(1, 3, 32, 32)).shape == (1, 32)
    assert model.no_weight_decay() >= {"pos_embed", "cls_token"}


def test_gradients_reach_every_parameter():
    for tokenizer, pool in [("patch", "cls"), ("conv", "avg"), ("cct", "seq")]:
        model = vitlab.create_model(tokenizer=tokenizer, pool=pool, img_size=32, patch_size=4, num_registers=2,
                                    layer_scale_init=1e-1, qk_norm=True, **TINY)
        model(torch.randn(2, 3, 32, 32)).sum().backward()
        no_grad = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
        assert not no_grad, f"{tokenizer}/{pool}: no gradient for {no_grad}"


def test_gradient_checkpointing_same_gradients():
    torch.manual_seed(0)
    a = vitlab.create_model(img_size=32, patch_size=8, **TINY)
    b = vitlab.create_model(img_size=32, patch_size=8, grad_checkpointing=True, **TINY)
    b.load_state_dict(a.state_dict())
    x = torch.randn(2, 3, 32, 32)
    a(x).square().sum().backward()
    b(x).square().sum().backward()
    for (n, pa), pb in zip(a.named_parameters(), b.parameters()):
        torch.testing.assert_close(pa.grad, pb.grad, msg=n)


def test_drop_path_and_dropout_only_in_training():
    model = vitlab.create_model(img_size=32, patch_size=8, drop_path_rate=0.5, drop_rate=0.3, **TINY)
    x = torch.randn(4, 3, 32, 32)
    model.eval()
    torch.testing.assert_close(model(x), model(x))
    model.train()
    assert not torch.allclose(model(x), model(x))
