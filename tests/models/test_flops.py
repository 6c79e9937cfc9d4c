"""Analytic FLOPs and parameters against timm's published figures and a direct count."""
import pytest
import torch

import vitlab
from vitlab.models.flops import forward_macs, model_stats


@pytest.mark.parametrize("name,params_m,gmacs", [
    ("vit_tiny_patch16_224", 5.72, 1.26),
    ("vit_small_patch16_224", 22.05, 4.61),
    ("vit_base_patch16_224", 86.57, 17.58),
])
def test_matches_timm_figures(name, params_m, gmacs):
    stats = model_stats(vitlab.get_config(name))
    assert stats["params_m"] == pytest.approx(params_m, abs=0.01)
    assert stats["gmacs"] == pytest.approx(gmacs, rel=0.01)  # norms/softmax left out: within 1 %


def test_macs_counted_by_hand_for_tiny_model():
    cfg = vitlab.get_config(tokenizer="patch", img_size=8, patch_size=4, embed_dim=8, depth=1, num_heads=2,
                            mlp_ratio=2.0, num_classes=3)
    N, D = 4 + 1, 8
    expected = 4 * 3 * 16 * 8 + (N * D * 3 * D + 2 * N * N * D + N * D * D + 2 * N * D * 16) + D * 3
    assert forward_macs(cfg) == expected


@pytest.mark.parametrize("tokenizer", ["conv", "cct"])
def test_conv_macs_match_a_profiler(tokenizer):
    """The tokenizer's conv MACs equal what torch's FLOP counter sees for the same convs."""
    from torch.utils.flop_counter import FlopCounterMode

    from vitlab.models.flops import tokenizer_macs
    cfg = vitlab.get_config(tokenizer=tokenizer, img_size=32, patch_size=4, embed_dim=32, depth=1, num_heads=2)
    model = vitlab.VisionTransformer(cfg)
    with FlopCounterMode(display=False) as counter:
        model.patch_embed(torch.randn(1, 3, 32, 32))
    assert counter.get_total_flops() == 2 * tokenizer_macs(cfg)
