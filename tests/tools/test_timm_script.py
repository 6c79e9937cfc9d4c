"""`vitlab timm-script`: timm-style scripts (timm.create_model by name, the model's own data config) run with the
vitlab_ models registered; what the model's pretrained_cfg says matches the model as built."""
import json

import pytest
import timm
import torch

from vitlab.cli import main

SCRIPT = '''import argparse, json, sys
import timm, torch
from timm.data import resolve_data_config
p = argparse.ArgumentParser()
p.add_argument("--model")
p.add_argument("--in-chans", type=int, default=None)
args = p.parse_args()
model = timm.create_model(args.model, in_chans=args.in_chans).eval()  # as timm's benchmark.py: by name + kwargs
cfg = resolve_data_config({}, model=model)
out = model(torch.zeros(2, *cfg["input_size"]))
print(json.dumps({"input_size": list(cfg["input_size"]), "mean": list(cfg["mean"]), "out": list(out.shape)}))
sys.exit(3 if out.shape[0] != 2 else 0)
'''


def test_timm_style_script_runs_a_vitlab_model_with_its_data_config(tmp_path, capsys):
    script = tmp_path / "bench.py"
    script.write_text(SCRIPT)
    assert main(["timm-script", str(script), "--model", "vitlab_vit_micro_patch4_28"]) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert result == {"input_size": [1, 28, 28], "mean": [0.286], "out": [2, 10]}
    # timm's benchmark.py passes in_chans=3: the data config follows the model as built (stats repeated)
    assert main(["timm-script", str(script), "--model", "vitlab_vit_micro_patch4_28", "--in-chans", "3"]) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert result["input_size"] == [3, 28, 28] and result["mean"] == [0.286] * 3


def test_missing_script_and_exit_codes(tmp_path, capsys):
    assert main(["timm-script", str(tmp_path / "validate.py")]) == 2
    assert "is not a file" in capsys.readouterr().err
    script = tmp_path / "fail.py"
    script.write_text("import sys; sys.exit(5)")
    assert main(["timm-script", str(script)]) == 5


def test_pretrained_cfg_follows_overrides():
    model = timm.create_model("vitlab_cct_micro_28", in_chans=3, img_size=(28, 56), num_classes=4)
    assert model.pretrained_cfg["input_size"] == (3, 28, 56) and model.pretrained_cfg["num_classes"] == 4
    assert model(torch.zeros(1, 3, 28, 56)).shape == (1, 4)
    with pytest.raises(ValueError, match="in_chans=3"):
        model(torch.zeros(1, 1, 28, 56))
