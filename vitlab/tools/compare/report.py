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
    """The grid cell a run belongs to (all but tokenizer and seed)."""
    return (r.get("size"), r.get("optimizer", "adamw"), r.get("lr"))


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
        grid[(r.get("size"), r.get("optimizer", "adamw"), r["tokenizer"])][r["lr"]].append(100 * r["test_acc1"])
    lrs = sorted({r["lr"] for r in results})
    lines = ["| train images | optimizer | tokenizer | " + " | ".join(f"lr {lr:g}" for lr in lrs)
             + " | best − worst (points) |", "|---|---|---|" + "---|" * (len(lrs) + 1)]
    for (size, opt, tok), by_lr in grid.items():
        means = [statistics.mean(v) for v in by_lr.values()]
        cells = [mean_std(by_lr[lr]) if lr in by_lr else "" for lr in lrs]
        lines.append(f"| {size_label(size)} | {opt} | {tok} | " + " | ".join(cells)
                     + f" | {max(means) - min(means):.2f} |")
    return lines


def write_report(results: list[Result], out: Path, args: argparse.Namespace, header: str) -> str:
    """results.md and the PNG plots from ``results``; returns the Markdown."""
    cells: dict[tuple, dict[str, list[Result]]] = defaultdict(lambda: defaultdict(list))
    for r in sorted(results, key=lambda r: (r.get("size") or 1e12, r.get("optimizer", ""), r["lr"])):
        cells[cell_of(r)][r["tokenizer"]].append(r)
    lines = [header, ""]
    for (size, opt, lr), rows in cells.items():
        epochs = sorted({r["epochs"] for rs in rows.values() for r in rs})
        lines += [f"### {size_label(size)} training images, {opt} lr {lr:g}, {'/'.join(map(str, epochs))} epochs",
                  ""] + cell_table(rows, args.target) + [""]
    if len({r["lr"] for r in results}) > 1:
        lines += ["### Learning-rate stability", ""] + lr_table(results) + [""]
    lines += [f"A curve has flattened when the last quarter of its epochs adds < {FLAT_POINTS} points (last-quarter "
              f"gain). Seconds are this machine's training wall-clock (validation excluded): {results[0]['machine']}."
              if results else "No finished runs yet."]
    markdown = "\n".join(lines) + "\n"
    (out / "results.md").write_text(markdown)
    if results:
        from vitlab.tools.compare.plots import plot_all
        plot_all(results, out)
    return markdown
