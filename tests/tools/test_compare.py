"""`vitlab compare` on real data (scikit-learn digits), tiny: report, plots, per-run results, resume."""
import json

import pytest

import vitlab
from vitlab.models.flops import forward_macs
from vitlab.tools.compare import main, matched_configs


def test_matched_configs_share_grid_and_match_flops():
    base = vitlab.get_config("vit_micro_patch4_28")
    width = matched_configs(base, ["patch", "conv", "cct"], "width")
    grids = {t: vitlab.VisionTransformer(c).grid for t, c in width.items()}
    assert set(grids.values()) == {(7, 7)}
    assert {c.depth for c in width.values()} == {6}
    flops = matched_configs(base, ["patch", "conv", "cct"], "flops")
    assert all(forward_macs(c) <= forward_macs(flops["patch"]) for c in flops.values())
    assert flops["conv"].depth < 6  # the conv stem costs blocks, as in Xiao et al.
    with pytest.raises(ValueError, match="unknown match 'tokens'"):
        matched_configs(base, ["patch"], "tokens")


def test_compare_runs_reports_and_resumes(tmp_path, capsys):
    args = ["--data", "digits", "--tokenizers", "patch", "cct", "--seeds", "0", "1", "--epochs", "2",
            "--train-subset", "128", "--eval-subset", "64", "--batch-size", "32", "--target", "0.05",
            "--model", "vit_micro_patch4_28", "--out", str(tmp_path)]
    first = main(args)
    assert len(first["results"]) == 4
    for name in ("results.md", "accuracy_curves.png", "accuracy_vs_gflops.png"):
        assert (tmp_path / name).stat().st_size > 0
    table = (tmp_path / "results.md").read_text()
    assert "| patch |" in table and "| cct |" in table and "matched by **flops**" in table
    run = json.loads((tmp_path / "runs" / "cct_seed1.json").read_text())
    assert len(run["history"]) == 2 and 0 <= run["test_acc1"] <= 1 and run["train_img_s"] > 0
    seconds = [h["seconds"] for h in run["history"]]
    assert 0 < seconds[0] < seconds[1]  # training time up to each validation, first epoch included
    assert "epochs to 5 %" in table and "(0/2 runs)" not in table.split("| patch |")[1].split("\n")[0]
    # an interrupted comparison resumes: delete one run, rerun, only that one trains again
    (tmp_path / "runs" / "patch_seed1.json").unlink()
    capsys.readouterr()
    main(args)
    out = capsys.readouterr().out
    assert out.count("done before, kept") == 3 and "patch seed 1: training" in out
