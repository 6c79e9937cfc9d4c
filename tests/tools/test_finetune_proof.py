"""A short version of the fine-tuning proof: pretrain on real Fashion-MNIST, fine-tune on real digits at 32 px."""
import json

import torch

from vitlab.models.pretrained import read_state_dict
from vitlab.tools.finetune_proof import main


def test_finetune_proof_short(tmp_path, capsys):
    summary = main(["--out", str(tmp_path), "--pretrain-samples", "256", "--pretrain-epochs", "1", "--pretrain-eval-samples", "128", "--epochs", "1",
                    "--seeds", "0", "--train-subset", "128"])
    out = capsys.readouterr().out
    assert "pos_embed" in out and "grid (7, 7) -> (8, 8)" in out  # the 28 px checkpoint was adapted to 32 px
    assert "head.weight" not in out or "re-initialised" in out
    for arm in ("finetuned", "scratch"):
        assert len(summary[arm]["runs"]) == 1 and 0.0 <= summary[arm]["mean"] <= 1.0
    saved = json.loads((tmp_path / "results.json").read_text())
    assert saved["finetuned"]["runs"] == summary["finetuned"]["runs"]
    state = read_state_dict(tmp_path / "pretrained_fashion_mnist.ckpt")  # Lightning .ckpt, loaded safely
    assert state["pos_embed"].shape == (1, 50, 64) and all(torch.isfinite(v).all() for v in state.values())
