"""Property test over model configs: every combination either builds and runs forward and backward with finite
outputs, or raises a ValueError naming the bad value."""
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import vitlab

OUTCOMES: list[str] = []

configs = st.fixed_dictionaries({  # mostly valid values, with a bad one in each field now and then
    "tokenizer": st.sampled_from(["patch", "conv", "cct", "patch", "conv", "cct", "bogus"]),
    "pool": st.sampled_from(["cls", "avg", "seq", "cls", "avg", "seq", "max"]),
    "pos_embed": st.sampled_from(["learned", "sincos", "none", "learned", "sincos", "rope"]),
    "img_size": st.sampled_from([16, 28, 32, 32, 30, 0]),
    "patch_size": st.sampled_from([2, 4, 8, 4, 3, 0]),
    "in_chans": st.sampled_from([1, 3, 1, 3, 0]),
    "embed_dim": st.sampled_from([8, 16, 16, 32, 12, 30, 0]),
    "num_heads": st.sampled_from([1, 2, 4, 1, 2, 4, 3, 0]),
    "depth": st.sampled_from([1, 2, 1, 2, 0]),
    "mlp_ratio": st.sampled_from([0.5, 1.0, 2.0, 0.0]),
    "num_registers": st.sampled_from([0, 1, 2, 0, -1]),
    "num_classes": st.sampled_from([3, 10, 0, 3, -1]),
    "drop_path_rate": st.sampled_from([0.0, 0.2, 0.0, 1.0]),
    "layer_scale_init": st.sampled_from([None, 1e-5, None, -1.0]),
    "qk_norm": st.booleans(),
    "cct_layers": st.sampled_from([1, 2, 1, 2, 0]),  # tokenizer_options={"layers": ...} for cct
})

@settings(max_examples=150, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
@given(cfg=configs)
def test_any_config_builds_and_runs_or_names_the_bad_value(cfg):
    OUTCOMES.append("rejected")
    layers = cfg.pop("cct_layers")
    if cfg["tokenizer"] == "cct":
        cfg["tokenizer_options"] = {"layers": layers}
    try:
        model = vitlab.create_model(**cfg)
    except ValueError as err:
        message = str(err)
        named = [k for k in cfg if k in message] + [str(v) for v in cfg.values() if repr(v) in message]
        assert named, f"ValueError names no field or value of {cfg}: {message}"
        return
    OUTCOMES[-1] = "built"
    x = torch.randn(2, cfg["in_chans"], cfg["img_size"], cfg["img_size"])
    out = model(x)
    expected = cfg["num_classes"] if cfg["num_classes"] else cfg["embed_dim"]
    assert out.shape == (2, expected)
    assert torch.isfinite(out).all()
    out.float().square().mean().backward()
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)


def test_property_run_built_many_models():
    """The property test above is only worth something if a fair share of its examples build and run."""
    test_any_config_builds_and_runs_or_names_the_bad_value()
    assert OUTCOMES.count("built") >= 8, OUTCOMES.count("built")  # derandomized: the same examples every run
