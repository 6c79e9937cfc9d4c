"""The report of `vitlab compare`, built from the kept per-run results only (a rerun with another ``--target`` just
rewrites it): one table per (train size, optimizer, lr) cell, the learning-rate stability table, and the plots
(accuracy vs data size, accuracy vs epochs and vs wall-clock per size, accuracy vs lr; bands over seeds)."""
from __future__ import annotations

import argparse
import statistics
from collections import defaultdict
from pathlib import Path
from typing import Any, Optional

Result = dict[str, Any]
FLAT_POINTS = 0.5  # a curve has flattened when its last quarter adds less than this many points of val acc1


def mean_std(xs: list[float], digits: int = 4) -> str:
    """``"mean ± std"`` over seeds (std 0 for one seed), ``-`` for none."""
    if not xs:
        return "-"
    sd = statistics.stdev(xs) if len(xs) > 1 else 0.0
    mean = statistics.mean(xs)
    if abs(mean) >= 10 ** digits:  # counts (images): no exponent
        return f"{mean:,.0f} ± {sd:,.0f}"
    return f"{mean:.{digits}g} ± {sd:.2g}"


def pct(xs: list[float]) -> str:
    return mean_std([100 * x for x in xs])


def reach(history: list[dict[str, float]], target: float) -> Optional[dict[str, float]]:
    """The first epoch record whose validation accuracy is at least ``target``, else None."""
    return next((h for h in history if h["val_acc1"] >= target), None)


def last_quarter_gain(history: list[dict[str, float]]) -> Optional[float]:
    """Points of val acc1 the last quarter of the epochs added over the best before it: ~0 once a curve is flat."""
    accs = [100 * h["val_acc1"] for h in history]
    cut = len(accs) - max(1, len(accs) // 4)
    if cut < 1:
        return None
    return max(accs[cut:]) - max(accs[:cut])


def cell_of(r: Result) -> tuple:
    """The grid cell a run belongs to (all but tokenizer and seed): (size, optimizer, lr, epochs)."""
    return (r.get("size"), r.get("optimizer", "adamw"), r.get("lr"), r.get("epochs"))


def cell_order(cell: tuple) -> tuple:
    """Sort key of a cell: the whole split last."""
    size, opt, lr, epochs = cell
    return (size or 1e12, opt, lr, epochs)


def size_label(size: Optional[int]) -> str:
    return "all" if size is None else f"{size:,}"


def cell_table(rows: dict[str, list[Result]], target: float) -> list[str]:
    """Markdown rows of one cell: a line per tokenizer, mean ± std over its seeds."""
    t = f"{100 * target:g} %"
    lines = [f"| tokenizer | depth | GFLOPs/img | seeds | test acc1 (%) | best val acc1 (%) | last-quarter gain "
             f"(points) | epochs to {t} | images to {t} | seconds to {t} | train img/s |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for tok, rs in rows.items():
        hits = [(h, r) for r in rs if (h := reach(r["history"], target)) is not None]
        note = f" ({len(hits)}/{len(rs)} runs)" if len(hits) < len(rs) else ""
        gains = [g for r in rs if (g := last_quarter_gain(r["history"])) is not None]
        lines.append(
            f"| {tok} | {rs[0]['depth']} | {rs[0]['gflops']:.4f} | {len(rs)} | {pct([r['test_acc1'] for r in rs])} | "
            f"{pct([r['best_val_acc1'] for r in rs])} | {mean_std(gains, 2)} | "
            f"{mean_std([h['epoch'] for h, _ in hits])}{note} | "
            f"{mean_std([h['epoch'] * r.get('train_images', 0) for h, r in hits])}{note} | "
            f"{mean_std([h['seconds'] for h, _ in hits])}{note} | {mean_std([r['train_img_s'] for r in rs])} |")
    return lines


def lr_table(results: list[Result]) -> list[str]:
    """Learning-rate stability (Xiao et al.): test acc1 per (size, optimizer, tokenizer) across the swept lrs, and
    the spread between the best and the worst lr's mean: smaller = less sensitive to the lr."""
    grid: dict[tuple, dict[float, list[float]]] = defaultdict(lambda: defaultdict(list))
    for r in results:
        key = (r.get("size"), r["epochs"], r.get("optimizer", "adamw"), r["tokenizer"])
        grid[key][r["lr"]].append(100 * r["test_acc1"])
    lrs = sorted({r["lr"] for r in results})
    lines = ["| train images | epochs | optimizer | tokenizer | " + " | ".join(f"lr {lr:g}" for lr in lrs)
             + " | best − worst (points) |", "|---|---|---|---|" + "---|" * (len(lrs) + 1)]
    for (size, epochs, opt, tok), by_lr in grid.items():
        if len(by_lr) < 2:
            continue  # one lr: nothing to compare (e.g. the longer schedule of a schedule check)
        means = [statistics.mean(v) for v in by_lr.values()]
        cells = [mean_std(by_lr[lr]) if lr in by_lr else "" for lr in lrs]
        lines.append(f"| {size_label(size)} | {epochs} | {opt} | {tok} | " + " | ".join(cells)
                     + f" | {max(means) - min(means):.2f} |")
    return lines


def _seeds_cell(xs: list[float]) -> str:
    """``"mean ± std (k seeds)"``; one seed has no spread to show: ``"89.1 (1 seed)"``."""
    return f"{xs[0]:.4g} (1 seed)" if len(xs) == 1 else f"{mean_std(xs)} ({len(xs)} seeds)"


def schedule_table(results: list[Result]) -> list[str]:
    """The schedule check: test acc1 per (size, optimizer, lr, tokenizer) at each schedule run, and what the longest
    adds over the shortest. A cosine schedule flattens every curve at its end, so a flat curve alone does not show
    convergence; a longer schedule that adds no more than the seed spread does. Empty with one schedule per size."""
    grid: dict[tuple, dict[int, list[float]]] = defaultdict(lambda: defaultdict(list))
    for r in results:
        grid[(r.get("size"), r.get("optimizer", "adamw"), r["lr"], r["tokenizer"])][r["epochs"]].append(
            100 * r["test_acc1"])
    checked = {k: v for k, v in grid.items() if len(v) > 1}
    if not checked:
        return []
    lines = ["| train images | optimizer, lr | tokenizer | test acc1 (%) per schedule | longest − shortest "
             "(points) |", "|---|---|---|---|---|"]
    for (size, opt, lr, tok), by_epochs in sorted(checked.items(), key=lambda kv: (kv[0][0] or 1e12,) + kv[0][1:]):
        epochs = sorted(by_epochs)
        cells = ", ".join(f"{e} epochs: {_seeds_cell(by_epochs[e])}" for e in epochs)
        gain = statistics.mean(by_epochs[epochs[-1]]) - statistics.mean(by_epochs[epochs[0]])
        lines.append(f"| {size_label(size)} | {opt} {lr:g} | {tok} | {cells} | {gain:+.2f} |")
    return lines


def machines_note(results: list[Result]) -> str:
    """Which machine timed the runs: one, or each with its run count (seconds compare only within one machine)."""
    counts: dict[str, int] = defaultdict(int)
    for r in results:
        counts[r.get("machine", "unknown")] += 1
    if len(counts) == 1:
        return f"Seconds are training wall-clock (validation excluded) on {next(iter(counts))}."
    runs = "; ".join(f"{m} ({n} run{'s' if n != 1 else ''})" for m, n in sorted(counts.items(), key=lambda kv: -kv[1]))
    return (f"Seconds are training wall-clock (validation excluded) on the machine each run recorded: {runs}; compare "
            f"seconds only within a cell timed on one machine (cells timed on several say so).")


def write_report(results: list[Result], out: Path, args: argparse.Namespace, header: str) -> str:
    """results.md and the PNG plots from ``results``; returns the Markdown."""
    cells: dict[tuple, dict[str, list[Result]]] = defaultdict(lambda: defaultdict(list))
    for r in sorted(results, key=lambda r: cell_order(cell_of(r))):
        cells[cell_of(r)][r["tokenizer"]].append(r)
    lines = [header, ""]
    for (size, opt, lr, epochs), rows in cells.items():
        timed_on = {r.get("machine") for rs in rows.values() for r in rs}
        mixed = f" (timed on {len(timed_on)} machines: seconds not comparable)" if len(timed_on) > 1 else ""
        lines += [f"### {size_label(size)} training images, {opt} lr {lr:g}, {epochs} epochs{mixed}", ""]
        lines += cell_table(rows, args.target) + [""]
    if len({r["lr"] for r in results}) > 1:
        lines += ["### Learning-rate stability", ""] + lr_table(results) + [""]
    if schedule := schedule_table(results):
        lines += ["### Schedule check: what a longer schedule still adds", ""] + schedule + [""]
    lines += [f"A curve has flattened when the last quarter of its epochs adds < {FLAT_POINTS} points (last-quarter "
              f"gain); a cosine schedule flattens every curve at its end, so convergence is what the schedule check "
              f"shows (`--epochs 60,150`). " + machines_note(results)
              if results else "No finished runs yet."]
    markdown = "\n".join(lines) + "\n"
    (out / "results.md").write_text(markdown)
    if results:
        from vitlab.tools.compare.plots import plot_all
        plot_all(results, out)
    return markdown
