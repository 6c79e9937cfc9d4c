"""`vitlab compare` on real data (scikit-learn digits), tiny: report, plots, per-run results, resume (between runs
and inside a killed run), the data-size and learning-rate axes, the plan printed before training."""
import argparse
import json
import os
import signal
import subprocess
import sys
import time

import pytest

import vitlab
from vitlab.models.flops import forward_macs
from vitlab.tools.compare import main, matched_configs
from vitlab.tools.compare.plan import RunSpec, make_grid, parse_epochs, parse_sweep
from vitlab.tools.compare.report import last_quarter_gain, write_report

TINY = ["--data", "digits", "--batch-size", "32", "--eval-subset", "64", "--model", "vit_micro_patch4_28"]


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


def test_grid_and_sweep_parsing():
    sweep = parse_sweep(["adamw=3e-4,1e-3", "sgd=0.1"])
    assert sweep == [("adamw", 3e-4), ("adamw", 1e-3), ("sgd", 0.1)]
    grid = make_grid([100, 1000], [[30], [10]], sweep, ["patch", "conv"], [0, 1])
    assert len(grid) == 2 * 3 * 2 * 2 and grid[0] == RunSpec(100, 30, "adamw", 3e-4, "patch", 0)
    assert {s.epochs for s in grid if s.size == 1000} == {10}
    assert grid[0].run_id == "n100_e30_adamw_lr0.0003_patch_seed0"
    for bad, named in [(["adamw"], "OPTIMIZER=LR"), (["nope=0.1"], "'nope'"), (["sgd=x"], "'x'"),
                       (["sgd=-1"], "must be > 0")]:
        with pytest.raises(ValueError, match=named):
            parse_sweep(bad)
    with pytest.raises(ValueError, match="one per train size"):
        make_grid([100, 1000], [[3], [4], [5]], sweep, ["patch"], [0])
    # several schedules per size: the schedule check, shortest first within a seed
    grid = make_grid([1000], parse_epochs(["150,60"]), [("adamw", 1e-3)], ["patch"], [0, 1])
    assert [(s.epochs, s.seed) for s in grid] == [(60, 0), (150, 0), (60, 1), (150, 1)]
    for bad, named in [(["60,x"], "'60,x'"), (["0"], "must be > 0"), (["60,60"], "not repeated")]:
        with pytest.raises(ValueError, match=named):
            parse_epochs(bad)


def fake_run(tok: str, seed: int, epochs: int, lr: float, acc: float) -> dict:
    """A kept run's results as `vitlab compare` writes them (for the report, without training)."""
    history = [{"epoch": e, "val_acc1": acc * e / epochs, "seconds": 2.0 * e} for e in range(1, epochs + 1)]
    return {"tokenizer": tok, "seed": seed, "size": 1000, "epochs": epochs, "optimizer": "adamw", "lr": lr,
            "train_images": 1000, "depth": 6, "params_m": 0.2, "gflops": 0.0236, "history": history,
            "test_acc1": acc, "final_val_acc1": acc, "best_val_acc1": acc, "train_img_s": 300.0,
            "infer_img_s": 1000.0, "machine": "test CPU"}


def test_the_schedule_check_reports_what_the_longer_schedule_adds(tmp_path):
    results = [fake_run("patch", s, 60, 8e-3, a) for s, a in [(0, 0.70), (1, 0.72)]]
    results += [fake_run("patch", s, 150, 8e-3, a) for s, a in [(0, 0.76), (1, 0.78)]]
    results += [fake_run("cct", s, e, 8e-3, 0.79) for s in (0, 1) for e in (60, 150)]
    results += [fake_run("patch", s, 60, 2e-3, 0.61) for s in (0, 1)]  # an lr sweep at the short schedule only
    results += [fake_run("conv", s, 60, 8e-3, 0.75) for s in (0, 1)] + [fake_run("conv", 0, 150, 8e-3, 0.801)]
    args = argparse.Namespace(target=0.75)
    table = write_report(results, tmp_path, args, "header")
    assert "### 1,000 training images, adamw lr 0.008, 60 epochs" in table
    assert "### 1,000 training images, adamw lr 0.008, 150 epochs" in table
    check = table.split("### Schedule check")[1]
    assert "| 1,000 | adamw 0.008 | patch | 60 epochs: 71 ± 1.4 (2 seeds), 150 epochs: 77 ± 1.4 (2 seeds) | +6.00 |" \
        in check
    assert "| conv | 60 epochs: 75 ± 0 (2 seeds), 150 epochs: 80.1 (1 seed) | +5.10 |" in check  # no spread to show
    assert "| cct |" in check and "+0.00 |" in check and "adamw 0.002" not in check  # one schedule: no check
    stability = table.split("### Learning-rate stability")[1].split("###")[0]
    assert "| 1,000 | 60 | adamw | patch |" in stability and "| 150 |" not in stability  # one lr at 150 epochs
    for name in ("accuracy_curves.png", "accuracy_vs_data_size.png", "lr_sweep.png"):
        assert (tmp_path / name).stat().st_size > 0


def test_report_names_each_machine_that_timed_runs(tmp_path):
    one = [fake_run("patch", s, 10, 8e-3, 0.7) for s in (0, 1)]
    assert "on test CPU." in write_report(one, tmp_path, argparse.Namespace(target=0.5), "header")
    other = fake_run("cct", 0, 10, 8e-3, 0.8) | {"machine": "other CPU"}
    table = write_report(one + [other], tmp_path, argparse.Namespace(target=0.5), "header")
    assert "test CPU (2 runs); other CPU (1 run)" in table
    assert "10 epochs (timed on 2 machines: seconds not comparable)" in table


def test_data_size_points_never_mix_schedules():
    from vitlab.tools.compare.plots import data_size_points
    from vitlab.tools.compare.report import cell_of

    runs = [fake_run(t, 0, 60, 8e-3, a) for t, a in [("patch", 0.70), ("cct", 0.78)]]
    runs.append(fake_run("patch", 0, 150, 8e-3, 0.76))  # only patch ran the longer schedule
    cells: dict = {}
    for r in runs:
        cells.setdefault(cell_of(r), {}).setdefault(r["tokenizer"], []).append(r)
    points = data_size_points(cells)[("adamw", 8e-3)]
    assert points["patch"][1000] == pytest.approx([70.0]) and points["cct"][1000] == pytest.approx([78.0])
    runs.append(fake_run("cct", 0, 150, 8e-3, 0.81))  # now both did: the longer schedule is the point
    cells.setdefault(cell_of(runs[-1]), {}).setdefault("cct", []).append(runs[-1])
    points = data_size_points(cells)[("adamw", 8e-3)]
    assert points["patch"][1000] == pytest.approx([76.0]) and points["cct"][1000] == pytest.approx([81.0])
    for t, a in [("patch", 0.72), ("cct", 0.80)]:  # a second seed at 60 epochs: 150 (one seed each) is unfinished
        runs.append(fake_run(t, 1, 60, 8e-3, a))
        cells[cell_of(runs[-1])][t].append(runs[-1])
    points = data_size_points(cells)[("adamw", 8e-3)]
    assert points["patch"][1000] == pytest.approx([70.0, 72.0]) and points["cct"][1000] == pytest.approx([78.0, 80.0])


def test_each_tokenizer_keeps_its_colour_in_every_curve_panel(tmp_path, monkeypatch):
    """A cell only patchify ran (a schedule check) must not draw patchify in another tokenizer's colour."""
    from vitlab.tools.compare import plots

    drawn: list[tuple[str, str]] = []
    monkeypatch.setattr(plots, "_band", lambda ax, x, ys, label, color=None: drawn.append((label, color)))
    runs = [fake_run(t, 0, 60, 8e-3, a) for t, a in [("patch", 0.70), ("cct", 0.78), ("conv", 0.75)]]
    runs.append(fake_run("patch", 0, 150, 8e-3, 0.76))
    plots.plot_all(runs, tmp_path)
    assert len(drawn) == 8  # two panels per cell: 3 tokenizers at 60 epochs, patch alone at 150
    assert {label: {c for lab, c in drawn if lab == label} for label, _ in drawn} == {
        "cct": {"C0"}, "conv": {"C1"}, "patch": {"C2"}}


def test_data_size_plot_keeps_each_points_own_seeds():
    """A size run with one seed (still being run) must not cut the other sizes' points down to that seed."""
    from vitlab.tools.compare.plots import point_stats

    xs, mean, lo, hi = point_stats({54000: [91.6], 1000: [81.7, 81.0, 80.3], 6000: [89.1, 88.9, 88.9]})
    assert xs.tolist() == [1000, 6000, 54000]
    assert mean == pytest.approx([81.0, 88.9667, 91.6], abs=1e-3)
    assert lo.tolist() == pytest.approx([80.3, 88.9, 91.6]) and hi.tolist() == pytest.approx([81.7, 89.1, 91.6])


def test_last_quarter_gain_tells_flat_from_rising():
    rising = [{"val_acc1": a} for a in (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8)]
    flat = [{"val_acc1": a} for a in (0.1, 0.5, 0.7, 0.80, 0.80, 0.801, 0.80, 0.799)]
    assert last_quarter_gain(rising) == pytest.approx(20.0)
    assert last_quarter_gain(flat) == pytest.approx(0.0, abs=0.11)


def test_compare_runs_reports_and_resumes(tmp_path, capsys):
    args = TINY + ["--tokenizers", "patch", "cct", "--seeds", "0", "1", "--epochs", "2", "--train-subset", "128",
                   "--target", "0.05", "--out", str(tmp_path)]
    first = main(args)
    out = capsys.readouterr().out
    assert "plan: 4 runs (0 done before), 4 to train" in out and "img/s" in out and "estimated" in out
    assert len(first["results"]) == 4
    for name in ("results.md", "accuracy_curves.png", "accuracy_vs_data_size.png", "lr_sweep.png"):
        assert (tmp_path / name).stat().st_size > 0
    table = (tmp_path / "results.md").read_text()
    assert "| patch |" in table and "| cct |" in table and "matched by **flops**" in table
    run = json.loads((tmp_path / "runs" / "n128_e2_adamw_lr0.004_cct_seed1.json").read_text())
    assert len(run["history"]) == 2 and 0 <= run["test_acc1"] <= 1 and run["train_img_s"] > 0
    assert run["train_images"] == 128 and run["machine"]
    assert run["recipe"] == {"weight_decay": 0.05, "warmup_epochs": 0.5, "label_smoothing": 0.1, "eval_subset": 64}
    seconds = [h["seconds"] for h in run["history"]]
    assert 0 < seconds[0] < seconds[1]  # training time up to each validation, first epoch included
    assert "epochs to 5 %" in table and "(0/2 runs)" not in table.split("| patch |")[1].split("\n")[0]
    assert not any((tmp_path / "ckpt").iterdir())  # a finished run's epoch checkpoints are removed
    # an interrupted comparison resumes: delete one run, rerun, only that one trains again
    (tmp_path / "runs" / "n128_e2_adamw_lr0.004_patch_seed1.json").unlink()
    main(args)
    out = capsys.readouterr().out
    assert "plan: 4 runs (3 done before), 1 to train" in out and "[1/1] n128_e2_adamw_lr0.004_patch_seed1" in out
    # --report-only rebuilds the report from what is finished, names what is not, trains nothing
    (tmp_path / "runs" / "n128_e2_adamw_lr0.004_patch_seed1.json").unlink()
    only = main(args + ["--report-only"])
    out = capsys.readouterr().out
    assert "3 of 4 runs finished; missing: n128_e2_adamw_lr0.004_patch_seed1" in out and len(only["results"]) == 3
    assert not (tmp_path / "runs" / "n128_e2_adamw_lr0.004_patch_seed1.json").exists()
    assert "| patch | 6 | 0.0236 | 1 |" in (tmp_path / "results.md").read_text()  # one seed left for patch


def test_data_size_and_lr_axes(tmp_path, capsys):
    result = main(TINY + ["--tokenizers", "conv", "--seeds", "0", "--train-sizes", "64", "256",
                          "--epochs", "2", "1", "--sweep", "adamw=1e-3,4e-3", "--out", str(tmp_path)])
    assert len(result["results"]) == 2 * 2  # sizes x lrs (the tokenizer axis: test_compare_runs_reports_and_resumes)
    by_id = {(r["size"], r["lr"], r["tokenizer"]): r for r in result["results"]}
    assert by_id[(64, 1e-3, "conv")]["train_images"] == 64 and len(by_id[(64, 1e-3, "conv")]["history"]) == 2
    assert len(by_id[(256, 4e-3, "conv")]["history"]) == 1
    table = (tmp_path / "results.md").read_text()
    assert "### 64 training images, adamw lr 0.001" in table and "### 256 training images, adamw lr 0.004" in table
    assert "### Learning-rate stability" in table and "best − worst" in table
    assert table.count("| 256 | 1 | adamw | conv |") == 1  # one row per (size, schedule, optimizer, tokenizer)
    # another command into the same folder (one cell of that grid) still reports every kept run of these models,
    # and leaves out a run of another model
    other = json.loads((tmp_path / "runs" / "n64_e2_adamw_lr0.001_conv_seed0.json").read_text())
    other["config"]["embed_dim"] = 2 * other["config"]["embed_dim"]
    (tmp_path / "runs" / "n64_e2_adamw_lr0.001_conv_seed9.json").write_text(json.dumps(other | {"seed": 9}))
    # ... and a run of these models made with another weight decay (a run id does not name it)
    wd = json.loads((tmp_path / "runs" / "n64_e2_adamw_lr0.001_conv_seed0.json").read_text())
    wd["recipe"]["weight_decay"] = 1e-4
    (tmp_path / "runs" / "n64_e2_adamw_lr0.001_conv_seed8.json").write_text(json.dumps(wd | {"seed": 8}))
    only = main(TINY + ["--tokenizers", "conv", "--seeds", "0", "--train-sizes", "64", "--epochs", "2",
                        "--sweep", "adamw=1e-3", "--out", str(tmp_path), "--report-only"])
    assert "1 of 1 runs finished" in capsys.readouterr().out
    assert len(only["results"]) == 4 and all(r["seed"] == 0 for r in only["results"])
    table = (tmp_path / "results.md").read_text()
    assert "### 256 training images, adamw lr 0.004" in table and "### Learning-rate stability" in table
    assert "sweep: adamw 0.001, adamw 0.004" in table


def test_plan_only_trains_nothing(tmp_path, capsys):
    result = main(TINY + ["--tokenizers", "patch", "--seeds", "0", "1", "--train-sizes", "100", "1000",
                          "--epochs", "3", "--plan-only", "--out", str(tmp_path)])
    assert len(result["todo"]) == 4 and not any((tmp_path / "runs").iterdir())
    assert "estimated" in capsys.readouterr().out


def test_a_killed_run_resumes_at_its_last_epoch(tmp_path):
    """A real `vitlab compare` process killed after its first epoch's checkpoint goes on from it when rerun."""
    args = [sys.executable, "-m", "vitlab", "compare"] + TINY + [
        "--tokenizers", "patch", "--seeds", "0", "--train-subset", "512", "--epochs", "4", "--out", str(tmp_path)]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    log = tmp_path / "first.log"
    with open(log, "w") as out:  # a file, not a pipe nobody reads while it runs
        proc = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT, env=env, text=True)
    ckpt = tmp_path / "ckpt" / "n512_e4_adamw_lr0.004_patch_seed0" / "last.ckpt"
    deadline = time.time() + 600
    while not ckpt.is_file() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.2)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert ckpt.is_file(), log.read_text()
    done = subprocess.run(args, capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "resuming from" in done.stdout
    run = json.loads((tmp_path / "runs" / "n512_e4_adamw_lr0.004_patch_seed0.json").read_text())
    assert [h["epoch"] for h in run["history"]] == [1, 2, 3, 4]  # epoch 1 from before the kill, the rest after


def test_a_grid_whose_kept_runs_had_another_recipe_is_refused(tmp_path):
    """Run ids do not name the weight decay: rerunning a grid into its folder with another one must not reuse (and
    report) the old runs as if they were the new recipe's; it stops before training, naming the file and values."""
    (tmp_path / "runs").mkdir()
    kept = tmp_path / "runs" / "n1000_e2_sgd_lr0.4_patch_seed0.json"
    run = fake_run("patch", 0, 2, 0.4, 0.5) | {"optimizer": "sgd", "recipe": {
        "weight_decay": 0.05, "warmup_epochs": 0.5, "label_smoothing": 0.1, "eval_subset": 64}}
    kept.write_text(json.dumps(run))
    args = TINY + ["--tokenizers", "patch", "--seeds", "0", "--train-sizes", "1000", "--epochs", "2",
                   "--sweep", "sgd=0.4", "--out", str(tmp_path)]
    with pytest.raises(SystemExit, match=r"n1000_e2_sgd_lr0.4_patch_seed0.json.*--weight-decay 0.0001 \(it was "
                                         r"trained with 0.05\).*another --out"):
        main(args + ["--weight-decay", "1e-4", "--report-only"])
    assert json.loads(kept.read_text()) == run  # nothing kept is lost
    assert len(main(args + ["--report-only"])["results"]) == 0  # same recipe: accepted (its fake config is not ours)
