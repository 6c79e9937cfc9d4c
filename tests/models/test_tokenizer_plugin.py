"""Adding a tokenizer is one class and one registration: a toy tokenizer, defined and registered here, then works in
create_model, timm.create_model, config validation, FLOPs, hub folders, `vitlab compare`, attention maps and ONNX
export, with nothing else changed."""
import json
from dataclasses import dataclass

import pytest
import timm
import torch
from PIL import Image
from torch import nn

import vitlab
from vitlab.models.flops import model_stats, tokenizer_macs
from vitlab.models.tokenizers import (Tokenizer, check_input, check_option, conv_macs, is_int, list_tokenizers,
                                      register_tokenizer, unregister_tokenizer)

# ---- the whole of what adding a tokenizer takes --------------------------------------------------- (from here)


class PoolTokenizer(Tokenizer):
    """Average-pool p x p patches, then a pointwise MLP (two 1x1 convs) from the pixels' channels to D."""

    name = "toy"
    first_conv = "mix.0"

    @dataclass
    class Options:
        hidden: int = 16  # width of the MLP

        def __post_init__(self) -> None:  # a ValueError naming tokenizer_options.hidden
            check_option("hidden", is_int(self.hidden), "be an integer > 0", self.hidden)

    def __init__(self, cfg, options) -> None:
        p = cfg.patch_size
        super().__init__(cfg, options, stride=p, receptive_field=p)
        self.pool = nn.AvgPool2d(p)
        self.mix = nn.Sequential(nn.Conv2d(cfg.in_chans, options.hidden, 1), nn.GELU(),
                                 nn.Conv2d(options.hidden, cfg.embed_dim, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_input(x, self.in_chans, self.stride, "toy")
        x = self.mix(self.pool(x))  # (B, D, gh, gw)
        return x.flatten(2).transpose(1, 2)  # (B, N, D)

    def macs(self, H: int, W: int) -> int:
        gh, gw = self.grid(H, W)
        return conv_macs(self.mix[0], gh, gw) + conv_macs(self.mix[2], gh, gw)

# ------------------------------------------------------------------------------------------------------ (to here)


TOY = dict(tokenizer="toy", tokenizer_options={"hidden": 8})
SMALL = dict(img_size=28, patch_size=4, in_chans=1, num_classes=10, embed_dim=32, depth=2, num_heads=2)


@pytest.fixture(autouse=True)
def toy_registered():
    register_tokenizer(PoolTokenizer)
    yield
    unregister_tokenizer("toy")


def toy_model(**kw) -> vitlab.VisionTransformer:
    torch.manual_seed(0)
    return vitlab.create_model(**{**SMALL, **TOY, **kw}).eval()


def test_create_model_and_timm_create_model():
    assert list_tokenizers()[-1] == "toy"
    model = toy_model()
    assert isinstance(model.patch_embed, PoolTokenizer) and model.grid == (7, 7)
    assert model(torch.randn(2, 1, 28, 28)).shape == (2, 10)
    assert model.forward_features(torch.randn(2, 1, 32, 36)).shape == (2, 1 + 8 * 9, 32)  # another size
    assert model.cfg.tokenizer_options == {"hidden": 8}
    assert vitlab.ViTConfig.from_dict(model.cfg.to_dict()) == model.cfg
    # a preset with another tokenizer: its options stay with it
    assert vitlab.get_config("cct_micro_28", tokenizer="toy", patch_size=4).tokenizer_options == {"hidden": 16}
    with pytest.raises(ValueError, match="divisible by patch_size=4, got 30x28"):
        model(torch.randn(1, 1, 30, 28))
    timm_model = timm.create_model("vitlab_vit_micro_patch4_28", num_classes=3, **TOY)
    assert isinstance(timm_model.patch_embed, PoolTokenizer) and timm_model.patch_embed.mix[0].out_channels == 8
    assert timm_model.pretrained_cfg["first_conv"] == "patch_embed.mix.0"
    assert timm_model(torch.randn(1, 1, 28, 28)).shape == (1, 3)
    x = torch.randn(2, 1, 28, 28)
    with torch.no_grad():  # the interface keeps TorchScript working
        assert torch.allclose(torch.jit.script(model)(x), model(x), atol=1e-6)


@pytest.mark.parametrize("overrides, message", [
    (dict(tokenizer_options={"hidden": 0}), "tokenizer_options.hidden must be an integer > 0, got 0"),
    (dict(tokenizer_options={"width": 8}), "unknown tokenizer_options ['width'] for tokenizer 'toy'; its options: "
                                           "['hidden']"),
    (dict(img_size=30), "patch_size=4 does not divide img_size=30"),  # Tokenizer.validate's default
    (dict(tokenizer="toys"), "unknown tokenizer 'toys'; choose one of ['patch', 'conv', 'cct', 'toy']"),
])
def test_config_validation_names_the_option(overrides, message):
    with pytest.raises(ValueError) as err:
        vitlab.create_model(**{**SMALL, **TOY, **overrides})
    assert message in str(err.value)


def test_flops_come_from_the_tokenizer():
    cfg = vitlab.get_config(**SMALL, **TOY)
    patch = vitlab.get_config(**SMALL)
    own = 7 * 7 * (1 * 8 + 8 * 32)  # two 1x1 convs on the 7 x 7 grid
    assert tokenizer_macs(cfg) == own
    encoder = model_stats(patch)["gmacs"] * 1e9 - tokenizer_macs(patch)  # the same encoder and head
    assert model_stats(cfg)["gmacs"] * 1e9 == pytest.approx(own + encoder)
    tokenizer = toy_model().patch_embed
    assert Tokenizer.macs(tokenizer, 28, 28) == own  # the default (measured) agrees with the analytic count


def test_hub_folder_round_trip(tmp_path):
    from vitlab.models.hub import save_hub_folder

    model = toy_model()
    folder = save_hub_folder(model, tmp_path / "hub")
    config = json.loads((folder / "config.json").read_text())
    assert config["vitlab_config"]["tokenizer_options"] == {"hidden": 8}
    assert config["pretrained_cfg"]["first_conv"] == "patch_embed.mix.0"
    loaded = vitlab.create_model(pretrained=str(folder)).eval()  # the stated config says which tokenizer
    x = torch.randn(2, 1, 28, 28)
    with torch.no_grad():
        assert torch.equal(loaded(x), model(x))


def test_compare_runs_the_toy_tokenizer(tmp_path):
    from vitlab.tools.compare import main, matched_configs

    configs = matched_configs(vitlab.get_config("vit_micro_patch4_28"), ["patch", "toy"], "flops")
    assert configs["toy"].tokenizer == "toy" and vitlab.VisionTransformer(configs["toy"]).grid == (7, 7)
    assert configs["toy"].depth == 5  # its tokenizer costs a little more than the patches': one block fewer
    result = main(["--data", "digits", "--tokenizers", "patch", "toy", "--seeds", "0", "--epochs", "1",
                   "--train-subset", "64", "--eval-subset", "32", "--batch-size", "32", "--model",
                   "vit_micro_patch4_28", "--out", str(tmp_path)])
    assert [r["tokenizer"] for r in result["results"]] == ["patch", "toy"]
    assert "| toy |" in (tmp_path / "results.md").read_text()


def test_attention_maps(tmp_path, capsys):
    from vitlab.interpret import pixel_relevance, receptive_field_geometry, to_pixels
    from vitlab.tools.attention import main

    model = toy_model()
    assert receptive_field_geometry(model.patch_embed) == (4, 4, 0)
    hot = torch.zeros(1, 7, 7)
    hot[0, 2, 3] = 1.0
    lit = to_pixels(hot, model.patch_embed, (28, 28))[0] > 0
    assert lit.sum() == 16 and lit[8:12, 12:16].all()  # exactly its 4 x 4 pixels
    heat = pixel_relevance(model, torch.randn(2, 1, 28, 28))
    assert heat.shape == (2, 28, 28) and torch.isfinite(heat).all()
    Image.new("L", (28, 28), 128).save(tmp_path / "img.png")
    assert main(["--model", "vit_micro_patch4_28", "--set", "tokenizer=toy", "--set", "tokenizer_options={hidden: 8}",
                 "--set", "depth=2", "--images", str(tmp_path / "img.png"), "--out", str(tmp_path / "maps")]) == 0
    assert list((tmp_path / "maps").glob("img*.png"))


def test_onnx_export(tmp_path):
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    from vitlab.tools.onnx_export import export_onnx, verify_onnx

    model = toy_model(depth=1)
    path = export_onnx(model, tmp_path / "toy.onnx")
    assert verify_onnx(path, model, shapes=[(1, 28), (3, 28), (2, 36)], atol=1e-4) <= 1e-4
