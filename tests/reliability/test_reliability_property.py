"""Property test over model configs with hostile values (wrong types, None, negatives, zero, NaN, lists) in one
or two fields of a working config: the model either builds and runs forward and backward with finite outputs
and gradients, or the constructor raises a ValueError naming the field or the value. Complements
tests/models/test_property.py (mostly valid values, many fields at once); derandomized, so it is repeatable."""
import dataclasses
import math
import warnings

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import vitlab
from vitlab.models.tokenizers import get_tokenizer

BASES = [  # small working configs, one per tokenizer
    dict(tokenizer="patch", img_size=16, patch_size=4, in_chans=1, num_classes=3, embed_dim=16, depth=1, num_heads=2),
    dict(tokenizer="conv", img_size=16, patch_size=4, in_chans=3, num_classes=3, embed_dim=16, depth=1, num_heads=2),
    dict(tokenizer="cct", img_size=16, patch_size=4, in_chans=1, num_classes=0, embed_dim=16, depth=1, num_heads=2,
         pool="seq"),
]
FIELDS = ["tokenizer", "img_size", "patch_size", "in_chans", "num_classes", "embed_dim", "depth", "num_heads",
          "mlp_ratio", "pool", "num_registers", "pos_embed", "drop_rate", "attn_drop_rate", "drop_path_rate",
          "layer_scale_init", "qk_norm", "qkv_bias", "class_token", "pos_embed_prefix",
          "tokenizer_options.channels", "tokenizer_options.layers", "tokenizer_options.kernel"]
HOSTILE = [-1, 0, 1, 2, 3, 1.5, "8", "patch", True, False, None, math.nan, math.inf, -math.inf, [2], (8, 16), 1e-6]


changes = st.dictionaries(st.sampled_from(FIELDS), st.sampled_from(HOSTILE), min_size=1, max_size=2)
OUTCOMES: list[str] = []


def model_kwargs(cfg: dict) -> dict:
    """``tokenizer_options.<name>`` entries become the tokenizer's options, where its tokenizer has that option."""
    kwargs = {k: v for k, v in cfg.items() if not k.startswith("tokenizer_options.")}
    try:
        names = {f.name for f in dataclasses.fields(get_tokenizer(cfg["tokenizer"]).Options)}
    except ValueError:  # a hostile tokenizer name
        names = set()
    options = {k.split(".", 1)[1]: v for k, v in cfg.items()
               if k.startswith("tokenizer_options.") and k.split(".", 1)[1] in names}
    return {**kwargs, "tokenizer_options": options} if options else kwargs


def build_and_run(cfg: dict) -> str:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # zero-element layers (e.g. mlp_ratio 1e-6)
            model = vitlab.create_model(**model_kwargs(cfg))
    except ValueError as err:
        message = str(err)
        named = [k for k in cfg if k in message] + [v for v in map(repr, cfg.values()) if v in message]
        assert named, f"ValueError names no field or value of {cfg}: {message}"
        return "rejected"
    x = torch.randn(2, cfg["in_chans"], cfg["img_size"], cfg["img_size"])
    out = model(x)
    assert out.shape == (2, cfg["num_classes"] or cfg["embed_dim"]) and torch.isfinite(out).all(), cfg
    out.square().mean().backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None), cfg
    return "built"


@settings(max_examples=120, deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])
@given(base=st.sampled_from(BASES), change=changes)
def hostile_property(base, change):
    OUTCOMES.append(build_and_run({**base, **change}))


def test_hostile_values_build_and_run_or_name_the_bad_value():
    """The property; derandomized, so the counts are fixed, and both outcomes must occur for it to mean much."""
    OUTCOMES.clear()
    hostile_property()
    assert OUTCOMES.count("built") >= 15 and OUTCOMES.count("rejected") >= 40, (
        OUTCOMES.count("built"), OUTCOMES.count("rejected"))


@pytest.mark.parametrize("field, value", [
    ("mlp_ratio", math.nan), ("mlp_ratio", math.inf), ("layer_scale_init", math.nan), ("layer_scale_init", math.inf),
    ("drop_rate", math.nan), ("drop_path_rate", math.inf), ("tokenizer_options.channels", 16),
    ("tokenizer_options.channels", [0, 16]),
])
def test_gaps_found_by_the_property_are_rejected_by_name(field, value):
    """Values the property once found slipping through ViTConfig.validate: each a ValueError naming the field."""
    assert build_and_run({**BASES[1], field: value}) == "rejected"
