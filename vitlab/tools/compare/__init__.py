"""`vitlab compare`: tokenizers (patch, conv stem, CCT, any registered plug-in) matched by FLOPs, across training-set
sizes, optimizers and learning rates, several seeds each; one report.

    vitlab compare --data fashion_mnist --train-sizes 1000 6000 --epochs 60 20 --seeds 0 1 2 --out reports/conv
    vitlab compare --data fashion_mnist --train-sizes 6000 --epochs 20 --sweep adamw=3e-4,1e-3,3e-3,1e-2 sgd=0.03,0.1
    vitlab compare --data fashion_mnist --train-sizes 1000 --epochs 60,150     # the schedule check

Every tokenizer gets the same encoder width, heads and token grid (``Tokenizer.matching_options``); ``--match flops``
(default) also drops encoder blocks from the models whose tokenizer costs more until their forward FLOPs are at most
the patch model's (as Xiao et al. drop one block), ``--match width`` keeps the depth. The training subsets are nested
(the 1,000 images are among the 6,000). Before training it measures each tokenizer's training speed here and prints
the plan and its estimated wall-clock (``--plan-only`` stops there). Each run's results are kept in
``OUT/runs/<run id>.json`` and each epoch is checkpointed, so a rerun skips finished runs and continues an interrupted
one at its last epoch. A run id names size, schedule, optimizer, lr, tokenizer and seed; the rest of the recipe
(weight decay, warmup, label smoothing, evaluation images) is kept in its JSON, and a grid whose kept runs had another
recipe is refused before anything trains (write it into another ``--out``). Report: ``OUT/results.md`` and the plots
(``accuracy_curves.png``, ``accuracy_vs_data_size.png``, ``lr_sweep.png``), rebuilt from the kept runs on every call.
A curve that flattens only shows its schedule ended (a cosine flattens every curve); with several schedules per size
(``--epochs 60,150``) the report's schedule check says what the longer one still adds: converged when that is within
the seed spread.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

from vitlab.models.overrides import add_set_argument, parse_overrides
from vitlab.models.registry import get_config
from vitlab.models.tokenizers import list_tokenizers
from vitlab.tools.compare.plan import (DATA, RunSpec, budget, machine, make_grid, matched_configs, parse_epochs,
                                       parse_sweep, recipe, train_speed)
from vitlab.tools.compare.report import write_report

__all__ = ["main", "matched_configs", "RunSpec", "DATA"]


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="vitlab compare", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", choices=sorted(DATA), default="fashion_mnist")
    p.add_argument("--data-dir", default="data")
    p.add_argument("--model", default=None, help="preset of the patch baseline (default: per data set)")
    add_set_argument(p)  # changes to the patch baseline (e.g. --set embed_dim=32), before matching
    p.add_argument("--tokenizers", nargs="+", default=list_tokenizers(), choices=list_tokenizers(),
                   help="registered tokenizers to compare (default: all)")
    p.add_argument("--match", choices=["flops", "width"], default="flops")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--train-sizes", type=int, nargs="+", default=None,
                   help="training-set sizes (nested seeded subsets); default: the whole training split")
    p.add_argument("--train-subset", type=int, default=None, help="one training-set size (= --train-sizes N)")
    p.add_argument("--epochs", nargs="+", default=["5"], metavar="EPOCHS[,EPOCHS]",
                   help="one value, or one per train size; several schedules per size (e.g. 60,150) add the "
                        "schedule check: what the longer schedule still gains")
    p.add_argument("--sweep", nargs="+", default=None, metavar="OPT=LR[,LR...]",
                   help="optimizers (timm names) and base learning rates to sweep, e.g. adamw=3e-4,1e-3 sgd=0.1; "
                        "default: adamw at --base-lr")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--base-lr", type=float, default=4e-3, help="peak lr at global batch 512 (scaled)")
    p.add_argument("--warmup-epochs", type=float, default=0.5)
    p.add_argument("--weight-decay", type=float, default=0.05)
    p.add_argument("--label-smoothing", type=float, default=0.1)
    p.add_argument("--target", type=float, default=0.85, help="accuracy whose epochs/seconds to reach are reported")
    p.add_argument("--eval-subset", type=int, default=None, help="validation and test images (seeded subsets)")
    p.add_argument("--num-workers", type=int, default=0)
    p.add_argument("--accelerator", default="cpu")
    p.add_argument("--precision", default="32-true")
    p.add_argument("--plan-only", action="store_true", help="print the plan and its estimated time, train nothing")
    p.add_argument("--report-only", action="store_true",
                   help="rebuild the report from the finished runs, train nothing (the grid's runs still missing are named)")
    p.add_argument("--out", type=Path, default=None)
    return p


def recipe_clash(kept: dict[str, Any], args: argparse.Namespace) -> dict[str, tuple]:
    """``{setting: (kept value, this call's value)}`` where a kept run differs from this call; runs kept before the
    recipe was recorded (no ``"recipe"``) are taken as this call's."""
    now = recipe(args)
    return {k: (v, now.get(k)) for k, v in kept.get("recipe", now).items() if v != now.get(k)}


def check_done_runs(done: dict[RunSpec, Path], args: argparse.Namespace) -> None:
    """Refuse, before anything trains, a folder whose finished runs of this grid were made with another recipe:
    reusing them would report one weight decay's runs under another's."""
    for spec, path in done.items():
        if path.is_file() and (clash := recipe_clash(json.loads(path.read_text()), args)):
            told = ", ".join(f"--{k.replace('_', '-')} {b} (it was trained with {a})" for k, (a, b) in clash.items())
            raise SystemExit(f"vitlab compare: {path} is this grid's run {spec.run_id}, but this call asks {told}; "
                             f"a run id does not carry these settings, so write this grid into another --out")


def kept_runs(out: Path, configs: dict, args: argparse.Namespace) -> list[dict[str, Any]]:
    """Every finished run in ``OUT/runs`` made with these models, batch size and recipe, this call's grid or another's
    (an lr sweep beside a data-size study): the report covers the whole folder; runs of other models are left out."""
    wanted = {tok: json.loads(json.dumps(cfg.to_dict())) for tok, cfg in configs.items()}  # as kept: tuples are lists
    results = []
    for path in sorted((out / "runs").glob("*.json")):
        r = json.loads(path.read_text())
        cfg = wanted.get(r.get("tokenizer"))
        if (cfg is not None and r.get("config") == cfg and r.get("batch_size", args.batch_size) == args.batch_size
                and not recipe_clash(r, args)):
            results.append(r)
    return results


def _header(args: argparse.Namespace, configs: dict, results: list[dict[str, Any]]) -> str:
    sweep = sorted({(r["optimizer"], r["lr"]) for r in results})
    depths = ", ".join(f"{tok} {cfg.depth}" for tok, cfg in configs.items())
    match = "equal FLOPs: tokenizers that cost more lose blocks" if args.match == "flops" else "equal width and depth"
    changes = f" with {', '.join(args.set)}" if args.set else ""
    return (f"Data: {args.data}; baseline {args.model or DATA[args.data][1]}{changes}; seeds {args.seeds}; matched by **{args.match}** ({match}; depths: {depths}); "
            f"batch {args.batch_size}; lrs are peak lrs at batch 512 (scaled); sweep: "
            + ", ".join(f"{o} {lr:g}" for o, lr in sweep) + ".")


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = _parser().parse_args(argv)
    out = args.out or Path("reports") / f"compare_{args.data}"
    sizes = args.train_sizes or [args.train_subset]
    sweep = parse_sweep(args.sweep) if args.sweep else [("adamw", args.base_lr)]
    base = get_config(args.model or DATA[args.data][1], **parse_overrides(args.set))
    configs = matched_configs(base, args.tokenizers, args.match)
    grid = make_grid(sizes, parse_epochs(args.epochs), sweep, args.tokenizers, args.seeds)
    (out / "runs").mkdir(parents=True, exist_ok=True)
    done = {spec: out / "runs" / f"{spec.run_id}.json" for spec in grid}
    check_done_runs(done, args)
    todo = [spec for spec in grid if not done[spec].is_file()]

    if args.report_only:
        missing = ", ".join(spec.run_id for spec in todo)
        print(f"report only: {len(grid) - len(todo)} of {len(grid)} runs finished" + (f"; missing: {missing}" if todo
                                                                                       else ""))
        results = kept_runs(out, configs, args)
        markdown = write_report(results, out, args, _header(args, configs, results))
        print(markdown)
        return {"results": results, "markdown": markdown, "out": str(out), "todo": todo}

    speeds: dict[str, float] = {}
    for _ in range(2):  # two interleaved rounds, the faster of each: the first round also pays one-time set-up
        for tok, cfg in configs.items():
            speeds[tok] = max(speeds.get(tok, 0.0), train_speed(cfg.replace(num_classes=10), args.batch_size))
    full, evals = DATA[args.data][2], args.eval_subset or 5_000
    print(f"plan: {len(grid)} runs ({len(grid) - len(todo)} done before), {len(todo)} to train; measured training "
          f"speed on {machine()}: " + ", ".join(f"{t} {s:.0f} img/s" for t, s in speeds.items()))
    print(f"plan: estimated {budget(todo, speeds, full, evals) / 3600:.2f} h for the runs left "
          f"(all {len(grid)}: {budget(grid, speeds, full, evals) / 3600:.2f} h)", flush=True)
    if args.plan_only:
        return {"results": [], "grid": grid, "todo": todo, "speeds": speeds, "out": str(out)}

    for i, spec in enumerate(todo, 1):
        print(f"[{i}/{len(todo)}] {spec.run_id}: training {spec.epochs} epochs (depth {configs[spec.tokenizer].depth})",
              flush=True)
        from vitlab.tools.compare.run import run_one
        start = time.time()
        result = run_one(configs[spec.tokenizer], spec, args, out / "ckpt")
        tmp = done[spec].with_suffix(".tmp")
        tmp.write_text(json.dumps(result, indent=1))
        tmp.replace(done[spec])  # a kill never leaves a half-written result
        print(f"[{i}/{len(todo)}] {spec.run_id}: test acc1 {result['test_acc1']:.4f} ({time.time() - start:.0f} s)",
              flush=True)
    results = kept_runs(out, configs, args)
    markdown = write_report(results, out, args, _header(args, configs, results))
    print(markdown)
    print(f"report: {out / 'results.md'}, plots: {out}/*.png")
    return {"results": results, "markdown": markdown, "out": str(out)}
