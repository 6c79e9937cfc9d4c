"""The fused SDPA path and the explicit softmax path agree; the explicit one returns attention weights."""
import torch

import vitlab
from vitlab.models.layers import Attention, explicit_attention


def test_sdpa_matches_explicit():
    torch.manual_seed(0)
    attn = Attention(64, 4, qk_norm=True).eval()
    x = torch.randn(3, 17, 64)
    fused = attn(x)
    attn.fused_attn = False
    explicit = attn(x)
    torch.testing.assert_close(fused, explicit, atol=1e-5, rtol=1e-5)
    out, weights = attn.forward_with_attn(x)
    assert weights.shape == (3, 4, 17, 17)
    torch.testing.assert_close(weights.sum(-1), torch.ones(3, 4, 17))
    torch.testing.assert_close(out, fused, atol=1e-5, rtol=1e-5)


def test_model_paths_agree_and_context_restores():
    model = vitlab.create_model(tokenizer="cct", pool="seq", img_size=32, embed_dim=32, depth=2, num_heads=4,
                                num_classes=5).eval()
    x = torch.randn(2, 3, 32, 32)
    fused = model(x)
    with explicit_attention(model):
        explicit = model(x)
        assert not any(m.fused_attn for m in model.modules() if isinstance(m, Attention))
    assert all(m.fused_attn for m in model.modules() if isinstance(m, Attention))
    torch.testing.assert_close(fused, explicit, atol=1e-5, rtol=1e-5)
    maps = model.attention_maps(x)
    assert len(maps) == 2 and maps[0].shape == (2, 4, 256, 256)


def test_explicit_path_only_where_it_pays():
    from vitlab.models.layers import explicit_attention_pays, set_fused_attention
    from vitlab.tools.bench import as_run
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert explicit_attention_pays(cpu, compiled=True)
    assert not explicit_attention_pays(cpu, compiled=False) and not explicit_attention_pays(cuda, compiled=True)
    model = vitlab.create_model("vit_micro_patch4_28").eval()
    fused = lambda m: {a.fused_attn for a in m.modules() if isinstance(a, Attention)}  # noqa: E731
    assert fused(as_run(model, "vitlab", True, cpu)) == {False}  # what the bench compiles on a CPU
    assert fused(as_run(model, "timm", True, cpu)) == fused(as_run(model, "vitlab", False, cpu)) == {True}
    assert fused(model) == {True}  # as_run works on a copy
    x = torch.randn(2, 1, 28, 28)
    with torch.no_grad():
        ref = model(x)
        set_fused_attention(model, False)
        torch.testing.assert_close(model(x), ref, atol=1e-5, rtol=1e-4)
