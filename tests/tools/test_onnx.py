"""ONNX export: dynamic batch and image size for every tokenizer, onnxruntime parity, checkpoints, clear errors."""
import pytest
import torch
from torch import nn

import vitlab
from vitlab.models.checkpoint import load_checkpoint
from vitlab.tools.onnx_export import OnnxExportError, export_onnx, main, verify_onnx

pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")

TINY = dict(img_size=16, in_chans=3, num_classes=5, embed_dim=32, depth=1, num_heads=2, mlp_ratio=2.0)
CASES = {  # one per tokenizer, covering the three poolings and learned / sin-cos positions with prefix tokens
    "patch": dict(tokenizer="patch", patch_size=4, pool="cls", num_registers=1),
    "conv": dict(tokenizer="conv", patch_size=4, pool="avg", pos_embed="sincos"),
    "cct": dict(tokenizer="cct", tokenizer_options={"layers": 2}, pool="seq"),
}


@pytest.mark.parametrize("tokenizer", list(CASES))
def test_export_matches_eager_at_two_batches_and_sizes(tokenizer, tmp_path):
    torch.manual_seed(0)
    model = vitlab.create_model(**TINY, **CASES[tokenizer]).eval()
    path = export_onnx(model, tmp_path / "m.onnx")
    other = 16 + 2 * model.patch_embed.stride  # another token grid: learned positions resampled in the graph
    diff = verify_onnx(path, model, shapes=[(1, 16), (3, 16), (1, other), (3, other)], atol=1e-4)
    assert diff <= 1e-4


def test_checkpoint_cli_round_trip(tmp_path, capsys):
    torch.manual_seed(0)
    model = vitlab.create_model("vit_micro_patch4_28", depth=1)
    ema = vitlab.create_model("vit_micro_patch4_28", depth=1)
    state = {f"model.{k}": v for k, v in model.state_dict().items()}
    state |= {f"ema.module.{k}": v for k, v in ema.state_dict().items()}
    ckpt = tmp_path / "last.ckpt"  # what Lightning writes for ImageClassifier: hyper_parameters + state_dict
    torch.save({"hyper_parameters": {"preset": "vit_micro_patch4_28", "depth": 1, "tokenizer": None,
                                     "base_lr": 5e-4}, "state_dict": state}, ckpt)
    x = torch.randn(2, 1, 28, 28)
    with torch.no_grad():
        assert torch.equal(load_checkpoint(ckpt).model(x), ema.eval()(x))  # EMA weights by default
        assert torch.equal(load_checkpoint(ckpt, ema=False).model(x), model.eval()(x))
    assert main(["--checkpoint", str(ckpt), "--out", str(tmp_path / "m.onnx")]) == 0
    assert "onnxruntime matches eager" in capsys.readouterr().out
    with pytest.raises(ValueError, match="not a Lightning checkpoint"):
        torch.save(model.state_dict(), tmp_path / "w.ckpt")
        load_checkpoint(tmp_path / "w.ckpt")


class FixedWidth(nn.Module):
    """Reads an input size as a Python int: the graph only works at the example width."""

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(16, 2)

    def forward(self, x):
        if x.shape[-1] != 16:
            raise ValueError("width")
        return self.fc(x.mean(dim=(1, 2)))


def test_unexportable_model_gives_a_clear_error(tmp_path):
    with pytest.raises(OnnxExportError, match="only works at the example input"):
        export_onnx(FixedWidth(), tmp_path / "m.onnx", img_size=16, in_chans=3)
    assert not (tmp_path / "m.onnx").exists()
