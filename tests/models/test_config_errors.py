"""Invalid configs raise ValueError whose message names the bad value."""
import pytest
import torch

import vitlab


@pytest.mark.parametrize("overrides,message", [
    (dict(img_size=30, patch_size=16), "patch_size=16 does not divide img_size=30"),
    (dict(embed_dim=100, num_heads=3), "embed_dim=100 is not divisible by num_heads=3"),
    (dict(tokenizer="vit"), "unknown tokenizer 'vit'"),
    (dict(pool="max"), "unknown pool 'max'"),
    (dict(pos_embed="rope"), "unknown pos_embed 'rope'"),
    (dict(tokenizer="conv", patch_size=6, img_size=36), "power of 2"),
    (dict(depth=0), "depth must be an integer > 0, got 0"),
    (dict(drop_path_rate=1.5), "drop_path_rate must be a number in [0, 1), got 1.5"),
    (dict(num_classes=-1), "num_classes must be an integer >= 0, got -1"),
    (dict(pool="cls", class_token=False), "pool='cls' needs a class token"),
    (dict(embed_dim="big"), "embed_dim must be an integer > 0, got 'big'"),
    (dict(mlp_ratio=0), "mlp_ratio must be a finite number > 0, got 0"),
    (dict(mlp_ratio=float("nan")), "mlp_ratio must be a finite number > 0, got nan"),
    (dict(bogus_key=1), "unknown config key(s) ['bogus_key']"),
    (dict(tokenizer="cct", tokenizer_options={"kernel": 4}), "tokenizer_options.kernel must be an odd integer > 0"),
    (dict(tokenizer="cct", tokenizer_options={"layers": 9}, img_size=64), "too small for tokenizer_options.layers=9"),
    (dict(tokenizer="cct", tokenizer_options={"channels": [8]}),
     "unknown tokenizer_options ['channels'] for tokenizer 'cct'; its options: ['layers', 'kernel', 'mid_channels']"),
    (dict(tokenizer="conv", patch_size=8, img_size=32, tokenizer_options={"channels": [8, 16]}),
     "tokenizer_options.channels=[8, 16] must be >= 3 widths for patch_size=8"),
    (dict(tokenizer_options={"layers": 2}), "unknown tokenizer_options ['layers'] for tokenizer 'patch'"),
    (dict(tokenizer_options="layers=2"), "tokenizer_options must be a mapping"),
    (dict(cct_kernel=5), "cct_kernel was renamed: use tokenizer_options={'kernel': 5}"),
])
def test_bad_config_names_value(overrides, message):
    with pytest.raises(ValueError) as err:
        vitlab.create_model(**overrides)
    assert message in str(err.value)


def test_unknown_preset_lists_available():
    with pytest.raises(ValueError, match="unknown model 'vit_huge'.*vit_small_patch16_224"):
        vitlab.create_model("vit_huge")


@pytest.mark.parametrize("tokenizer", ["patch", "conv", "cct"])
def test_bad_input_is_clear(tokenizer):
    model = vitlab.create_model(tokenizer=tokenizer, img_size=32, patch_size=8, embed_dim=32, depth=1,
                                num_heads=2)
    with pytest.raises(ValueError, match="in_chans=3, got images with 1 channels"):
        model(torch.randn(1, 1, 32, 32))
    with pytest.raises(ValueError, match=r"expects images \(B, C, H, W\)"):
        model(torch.randn(3, 32, 32))
    if tokenizer != "cct":
        with pytest.raises(ValueError, match="divisible by patch_size=8, got 30x32"):
            model(torch.randn(1, 3, 30, 32))
