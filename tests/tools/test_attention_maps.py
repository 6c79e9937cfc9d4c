"""Attention rollout, token relevance, token -> pixel mapping for every tokenizer, overlays and the CLI."""
from __future__ import annotations

import pytest
import torch
from PIL import Image
from torch import nn

import vitlab
from vitlab.models.layers import Attention
from vitlab.interpret import (
    attention_rollout,
    pixel_relevance,
    receptive_field_geometry,
    rollout_per_layer,
    save_overlays,
    to_pixels,
    token_relevance,
)
from vitlab.tools.attention import load_checkpoint, main

TINY = dict(embed_dim=16, num_heads=2, mlp_ratio=1.0)  # over the presets: keeps every test fast


def tiny(name: str = "vit_micro_patch4_28", **kw) -> nn.Module:
    torch.manual_seed(0)
    return vitlab.create_model(name, **{"depth": 2, **TINY, **kw}).eval()


def random_maps(B=2, H=3, T=10, L=4) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return [torch.randn(B, H, T, T, generator=g).softmax(-1) for _ in range(L)]


# ---------------------------------------------------------------------------------------------- rollout
@pytest.mark.parametrize("fusion", ["mean", "max", "min"])
@pytest.mark.parametrize("discard", [0.0, 0.5])
def test_rollout_rows_sum_to_one(fusion, discard):
    r = attention_rollout(random_maps(), discard_ratio=discard, head_fusion=fusion)
    assert r.shape == (2, 10, 10)
    assert torch.allclose(r.sum(-1), torch.ones(2, 10), atol=1e-5)
    assert (r >= 0).all()


def test_rollout_of_uniform_attention_is_identity_plus_uniform():
    T, L = 6, 3
    uniform = [torch.full((1, 2, T, T), 1.0 / T) for _ in range(L)]
    r = attention_rollout(uniform)
    # each layer is 0.5 I + 0.5 U (U = 1/T everywhere); U is idempotent, so L layers give 0.5^L I + (1-0.5^L) U
    expected = 0.5 ** L * torch.eye(T) + (1 - 0.5 ** L) / T
    assert torch.allclose(r[0], expected, atol=1e-6)
    identity = [torch.eye(T).expand(1, 2, T, T) for _ in range(L)]
    assert torch.allclose(attention_rollout(identity)[0], torch.eye(T))


def test_rollout_per_layer_ends_with_the_full_rollout():
    maps = random_maps()
    steps = rollout_per_layer(maps)
    assert len(steps) == len(maps)
    assert torch.allclose(steps[-1], attention_rollout(maps))
    assert torch.allclose(steps[0], attention_rollout(maps[:1]))


@pytest.mark.parametrize("kwargs, match", [
    (dict(maps=[]), "at least one layer"),
    (dict(maps=random_maps(), discard_ratio=1.0), "discard_ratio"),
    (dict(maps=random_maps(), head_fusion="median"), "head_fusion"),
    (dict(maps=[torch.rand(1, 2, 5, 5), torch.rand(1, 2, 6, 6)]), "every attention map"),
])
def test_rollout_rejects_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        attention_rollout(**kwargs)


# ---------------------------------------------------------------------------------------------- relevance
@pytest.mark.parametrize("name, kw", [
    ("vit_micro_patch4_28", {}),                        # class token
    ("vit_micro_conv4_28", dict(pool="avg")),            # mean of image-token rows
    ("cct_micro_28", {}),                                # sequence pooling, no class token
    ("vit_micro_patch4_28", dict(num_registers=2)),      # class token + registers
])
def test_token_relevance_shape_and_fused_attention_restored(name, kw):
    model = tiny(name, **kw)
    x = torch.randn(2, 1, 28, 28)
    rel = token_relevance(model, x)
    assert rel.shape == (2, *model.grid)
    assert (rel >= 0).all()
    if model.num_prefix_tokens == 0:  # all mass stays on image tokens: a weighted mean of rows summing to 1
        assert torch.allclose(rel.sum((1, 2)), torch.ones(2), atol=1e-5)
    else:
        assert (rel.sum((1, 2)) < 1).all()
    per_layer = token_relevance(model, x, per_layer=True)
    assert per_layer.shape == (2, 2, *model.grid) and torch.allclose(per_layer[:, -1], rel)
    # training keeps fused SDPA: the explicit path was switched on for the attention call only
    assert all(m.fused_attn for m in model.modules() if isinstance(m, Attention))


def test_class_token_relevance_is_the_class_row_of_the_rollout():
    model = tiny()
    x = torch.randn(1, 1, 28, 28)
    r = attention_rollout(model.attention_maps(x))
    assert torch.allclose(token_relevance(model, x).flatten(), r[0, 0, 1:])


# ---------------------------------------------------------------------------------------------- pixels
TOKENIZERS = [  # (name, overrides, img_size, expected (stride, receptive field, offset))
    ("patch4", dict(tokenizer="patch", patch_size=4), 28, (4, 4, 0)),
    ("patch7", dict(tokenizer="patch", patch_size=7), 28, (7, 7, 0)),
    ("conv4", dict(tokenizer="conv", patch_size=4), 28, (4, 7, -3)),
    # 3 stride-2 layers and one stride-1 layer: rf 1 + 2 + 4 + 8 + 8 * 2 = 31
    ("conv8", dict(tokenizer="conv", patch_size=8, tokenizer_options={"channels": (4, 4, 4, 4)}), 32, (8, 31, -15)),
    ("cct1", dict(tokenizer="cct", tokenizer_options={"layers": 1}, pool="seq"), 32, (2, 5, -2)),
    ("cct2", dict(tokenizer="cct", tokenizer_options={"layers": 2}, pool="seq"), 28, (4, 13, -6)),
    ("cct1k7", dict(tokenizer="cct", tokenizer_options={"layers": 1, "kernel": 7}, pool="seq"), 20, (2, 9, -4)),
]


def footprint_by_gradient(tokenizer: nn.Module, img: int, i: int, j: int) -> torch.Tensor:
    """Pixels token (i, j) depends on, found by autograd (independently of the geometry code): positive
    weights and inputs keep every ReLU open; max-pools become average pools of the same shape, so the
    gradient reaches every pixel a window sees, not only its argmax."""
    tok = _copy_positive(tokenizer)
    x = torch.rand(1, tok.in_chans, img, img) + 0.1
    x.requires_grad_(True)
    gh, gw = tok.grid(img, img)
    tok(x).reshape(gh, gw, -1)[i, j].sum().backward()
    return x.grad[0].abs().sum(0) > 0  # (H, W)


def _copy_positive(tokenizer: nn.Module) -> nn.Module:
    import copy

    tok = copy.deepcopy(tokenizer).eval()
    for name, m in list(tok.named_modules()):
        for child_name, child in list(m.named_children()):
            if isinstance(child, nn.MaxPool2d):
                setattr(m, child_name, nn.AvgPool2d(child.kernel_size, child.stride, child.padding))
            if isinstance(child, nn.ReLU):
                setattr(m, child_name, nn.ReLU(inplace=False))
    with torch.no_grad():
        for p in tok.parameters():
            p.abs_().add_(1e-3)
    return tok


@pytest.mark.parametrize("name, overrides, img, geometry", TOKENIZERS, ids=[t[0] for t in TOKENIZERS])
def test_a_hot_token_lights_exactly_the_pixels_it_sees(name, overrides, img, geometry):
    cfg = dict(img_size=img, in_chans=1, embed_dim=8, depth=1, num_heads=1, num_classes=2, **overrides)
    tokenizer = vitlab.create_model(**cfg).patch_embed
    assert receptive_field_geometry(tokenizer) == geometry
    gh, gw = tokenizer.grid(img, img)
    for i, j in [(0, 0), (gh // 2, gw // 2 - 1), (gh - 1, gw - 1), (0, gw - 1)]:
        hot = torch.zeros(1, gh, gw)
        hot[0, i, j] = 1.0
        lit = to_pixels(hot, tokenizer, (img, img))[0] > 0
        seen = footprint_by_gradient(tokenizer, img, i, j)
        assert torch.equal(lit, seen), f"{name}: token ({i}, {j}) lights {lit.sum()} pixels, sees {seen.sum()}"
        # and the box matches the stated geometry, clipped to the image
        s, rf, off = geometry
        box = torch.zeros(img, img, dtype=torch.bool)
        box[max(0, off + i * s):off + i * s + rf, max(0, off + j * s):off + j * s + rf] = True
        assert torch.equal(lit, box)
    # a constant relevance stays constant: every pixel is divided by the number of tokens that see it
    flat = to_pixels(torch.full((1, gh, gw), 0.25), tokenizer, (img, img))
    assert torch.allclose(flat, torch.full_like(flat, 0.25))


def test_patch_tokens_map_to_exact_tiles():
    tokenizer = tiny().patch_embed
    rel = torch.arange(49.0).reshape(1, 7, 7)
    pix = to_pixels(rel, tokenizer, (28, 28))
    assert torch.equal(pix, rel.repeat_interleave(4, -1).repeat_interleave(4, -2))


def test_to_pixels_rejects_a_grid_that_does_not_fit():
    with pytest.raises(ValueError, match="does not match the tokenizer's grid"):
        to_pixels(torch.zeros(1, 6, 6), tiny().patch_embed, (28, 28))


def test_pixel_relevance_for_each_tokenizer():
    x = torch.randn(1, 1, 28, 28)
    for name in ("vit_micro_patch4_28", "vit_micro_conv4_28", "cct_micro_28"):
        pix = pixel_relevance(tiny(name), x)
        assert pix.shape == (1, 28, 28) and (pix > 0).all()


# ---------------------------------------------------------------------------------------------- files
def test_save_overlays_writes_pngs(tmp_path):
    model = tiny("vit_micro_conv4_28")
    images = torch.randn(2, 1, 28, 28)
    paths = save_overlays(model, images, tmp_path / "out", mean=0.5, std=0.5, names=["a", "b"], per_layer=True,
                          classes=[f"c{k}" for k in range(10)])
    assert [p.name for p in paths] == ["a.png", "a_layers.png", "b.png", "b_layers.png"]
    for p in paths:
        with Image.open(p) as im:
            assert im.format == "PNG" and im.size[0] > 100
    rgb = tiny("vit_micro_patch4_28", in_chans=3)
    assert len(save_overlays(rgb, torch.randn(1, 3, 28, 28), tmp_path, (0.5,) * 3, (0.25,) * 3)) == 1


def write_images(folder):
    folder.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (40, 30), (200, 10, 10)).save(folder / "a.png")
    Image.fromarray((torch.rand(28, 28) * 255).byte().numpy(), "L").save(folder / "b.jpg")
    return [str(folder / "a.png"), str(folder / "b.jpg")]


def test_cli_with_preset_and_weights(tmp_path, capsys):
    model = tiny("vit_micro_conv4_28")
    torch.save(model.state_dict(), tmp_path / "w.pth")
    images = write_images(tmp_path / "img")
    args = ["--model", "vit_micro_conv4_28", "--set", "depth=2", "--set", "embed_dim=16", "--set", "num_heads=2",
            "--set", "mlp_ratio=1.0", "--weights", str(tmp_path / "w.pth"), "--out", str(tmp_path / "out")]
    assert main(args + ["--images", *images]) == 0
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["a.png", "b.png"]
    assert main(args + ["--image-dir", str(tmp_path / "img"), "--per-layer", "--overwrite"]) == 0  # a.png, b.png again
    assert len(list((tmp_path / "out").glob("*_layers.png"))) == 2
    assert "b_layers.png" in capsys.readouterr().out


def test_cli_with_lightning_checkpoint(tmp_path):
    """A checkpoint as ``vitlab fit`` writes it: weights under ``model.``, the config in ``hyper_parameters``,
    the data module named in the run folder's config.yaml."""
    from vitlab.data.stats import FASHION_MNIST_CLASSES, FASHION_MNIST_MEAN, FASHION_MNIST_STD

    model = tiny("cct_micro_28")
    run = tmp_path / "runs" / "fmnist" / "version_0"
    (run / "checkpoints").mkdir(parents=True)
    (run / "config.yaml").write_text("data:\n  class_path: vitlab.data.FashionMNISTDataModule\n")
    ckpt = {
        "state_dict": {f"model.{k}": v for k, v in model.state_dict().items()},
        "hyper_parameters": {"preset": "cct_micro_28", "depth": 2, "tokenizer": None, "base_lr": 1e-3, **TINY},
    }
    torch.save(ckpt, run / "checkpoints" / "last.ckpt")
    loaded, info = load_checkpoint(run / "checkpoints" / "last.ckpt")
    assert loaded.cfg == model.cfg
    assert all(torch.equal(a, b) for a, b in zip(loaded.state_dict().values(), model.state_dict().values()))
    assert tuple(info["mean"]) == FASHION_MNIST_MEAN and tuple(info["std"]) == FASHION_MNIST_STD
    assert info["classes"] == FASHION_MNIST_CLASSES
    images = write_images(tmp_path / "img")
    assert main(["--checkpoint", str(run / "checkpoints" / "last.ckpt"), "--images", *images,
                 "--out", str(tmp_path / "out")]) == 0
    assert len(list((tmp_path / "out").glob("*.png"))) == 2


def test_checkpoint_prefers_the_ema_weights(tmp_path):
    model, ema = tiny(), tiny()
    with torch.no_grad():
        for p in ema.parameters():
            p.add_(1.0)
    state = {f"model.{k}": v for k, v in model.state_dict().items()}
    state.update({f"ema.module.{k}": v for k, v in ema.state_dict().items()})
    torch.save({"state_dict": state, "hyper_parameters": {"preset": "vit_micro_patch4_28", "depth": 2, **TINY}},
               tmp_path / "m.ckpt")
    loaded, info = load_checkpoint(tmp_path / "m.ckpt")
    assert torch.equal(loaded.head.weight, ema.head.weight) and info == {}


def test_cli_errors(tmp_path):
    torch.save({"a": torch.zeros(1)}, tmp_path / "plain.pth")
    with pytest.raises(ValueError, match="not a Lightning checkpoint"):
        main(["--checkpoint", str(tmp_path / "plain.pth"), "--images", "x.png"])
    with pytest.raises(SystemExit):
        main(["--model", "vit_micro_patch4_28", "--set", "depth", "--images", "x.png"])
    (tmp_path / "empty").mkdir()
    with pytest.raises(SystemExit, match="no image files"):
        main(["--model", "vit_micro_patch4_28", "--image-dir", str(tmp_path / "empty")])


def test_checkpoint_of_the_training_module(tmp_path):
    """Key names and hyper-parameters as ``ImageClassifier`` (with EMA) saves them; data module from
    ``_class_path``, its statistics converted to the model's channels; nothing outside vitlab.data is looked up."""
    from vitlab.data.stats import CIFAR10_CLASSES, CIFAR10_MEAN, CIFAR10_STD, stats_for_channels

    training = pytest.importorskip("vitlab.training.module")
    module = training.ImageClassifier(preset="vit_micro_patch4_28", arch={"depth": 1, "embed_dim": 16, "num_heads": 2},
                                      regularization={"ema_decay": 0.9})
    ckpt = {"state_dict": module.state_dict(), "hyper_parameters": dict(module.hparams),
            "datamodule_hyper_parameters": {"_class_path": "vitlab.data.CIFAR10DataModule", "in_chans": 1}}
    torch.save(ckpt, tmp_path / "a.ckpt")
    model, info = load_checkpoint(tmp_path / "a.ckpt")
    assert model.cfg == module.cfg and torch.equal(model.head.weight, module.ema.module.head.weight)
    assert (tuple(info["mean"]), tuple(info["std"])) == stats_for_channels(CIFAR10_MEAN, CIFAR10_STD, 1)
    assert info["classes"] == CIFAR10_CLASSES
    ckpt["datamodule_hyper_parameters"] = {"_class_path": "os.system"}
    torch.save(ckpt, tmp_path / "b.ckpt")
    assert load_checkpoint(tmp_path / "b.ckpt")[1] == {}

