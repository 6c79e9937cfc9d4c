"""Plots of `vitlab compare` (matplotlib, PNG): the bands are the min-max over seeds, the lines their mean.

- ``accuracy_curves.png``: per grid cell, validation acc1 vs epochs and vs training wall-clock (do the curves
  flatten?);
- ``accuracy_vs_data_size.png``: test acc1 vs training images, a line per tokenizer (per optimizer/lr; a size's
  longest schedule every tokenizer ran);
- ``lr_sweep.png``: test acc1 vs learning rate, a line per tokenizer and optimizer (per train size and schedule).
"""
from __future__ import annotations

from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np

from vitlab.tools.compare.report import cell_of, cell_order, size_label

Result = dict[str, Any]


def _line_band(ax: Any, x: np.ndarray, mean: np.ndarray, lo: np.ndarray, hi: np.ndarray, label: str,
               color: str | None = None) -> None:
    """A mean line with its min-max band, all of shape (points,)."""
    line, = ax.plot(x, mean, marker="o", markersize=3, label=label, color=color)
    ax.fill_between(x, lo, hi, alpha=0.2, color=line.get_color())


def _band(ax: Any, x: np.ndarray, ys: np.ndarray, label: str, color: str | None = None) -> None:
    """Mean line of ``ys`` (seeds, points) with its min-max band."""
    _line_band(ax, x, ys.mean(0), ys.min(0), ys.max(0), label, color)


def plot_all(results: list[Result], out: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cells: dict[tuple, dict[str, list[Result]]] = defaultdict(lambda: defaultdict(list))
    for r in results:
        cells[cell_of(r)][r["tokenizer"]].append(r)
    keys = sorted(cells, key=cell_order)
    colors = {tok: f"C{i}" for i, tok in enumerate(sorted({r["tokenizer"] for r in results}))}  # one per tokenizer

    fig, axes = plt.subplots(len(keys), 2, figsize=(11, 3.6 * len(keys)), squeeze=False)
    for row, key in zip(axes, keys):
        for tok, rs in sorted(cells[key].items()):  # a cell only some tokenizers ran keeps their colours
            n = min(len(r["history"]) for r in rs)
            if n == 0:
                continue
            acc = np.array([[100 * h["val_acc1"] for h in r["history"][:n]] for r in rs])  # (seeds, epochs)
            secs = np.array([[h["seconds"] for h in r["history"][:n]] for r in rs])
            _band(row[0], np.array([h["epoch"] for h in rs[0]["history"][:n]]), acc, tok, colors[tok])
            _band(row[1], secs.mean(0), acc, tok, colors[tok])
        title = f"{size_label(key[0])} images, {key[1]} lr {key[2]:g}, {key[3]} epochs"
        row[0].set(xlabel="epoch", ylabel="val acc1 (%)", title=f"{title}: vs epochs")
        row[1].set(xlabel="training wall-clock (s)", ylabel="val acc1 (%)", title=f"{title}: vs wall-clock")
    _finish(fig, axes.ravel(), out / "accuracy_curves.png")

    by_size: dict[Any, dict[str, dict[float, list[float]]]] = defaultdict(lambda: defaultdict(dict))
    for (size, opt, lr, epochs), rows in sorted(cells.items(), key=lambda kv: cell_order(kv[0])):
        for tok, rs in rows.items():
            by_size[(size, epochs)][f"{tok} ({opt})"][lr] = [100 * r["test_acc1"] for r in rs]
    by_recipe = data_size_points(cells)
    panels = [(f"accuracy vs data size ({opt} lr {lr:g})", lines) for (opt, lr), lines in sorted(by_recipe.items())]
    _x_plot(panels, "training images", out / "accuracy_vs_data_size.png")
    panels = [(f"lr stability, {size_label(size)} images, {epochs} epochs", lines)
              for (size, epochs), lines in sorted(by_size.items(), key=lambda kv: (kv[0][0] or 1e12, kv[0][1]))]
    swept = [p for p in panels if len({lr for line in p[1].values() for lr in line}) > 1]
    _x_plot(swept or panels, "base learning rate", out / "lr_sweep.png")  # the panels with an lr axis, if any


def data_size_points(cells: dict[tuple, dict[str, list[Result]]]) -> dict[tuple, dict[str, dict[int, list[float]]]]:
    """Test acc1 (%) per (optimizer, lr) -> tokenizer -> training images, over seeds: for each size the longest
    schedule that every tokenizer of that size ran, so one size's points never mix schedules; among those, a schedule
    with as many seeds for every tokenizer as the size's best-seeded one wins, so a schedule still being run (a seed
    or two) does not replace a finished one."""
    tokenizers: dict[tuple, set[str]] = defaultdict(set)
    for (size, opt, lr, _), rows in cells.items():
        tokenizers[(size, opt, lr)] |= set(rows)
    schedules: dict[tuple, list[dict[str, list[Result]]]] = defaultdict(list)  # per size, shortest first
    for (size, opt, lr, epochs), rows in sorted(cells.items(), key=lambda kv: cell_order(kv[0])):
        if set(rows) == tokenizers[(size, opt, lr)]:  # not a schedule only some tokenizers ran (a schedule check)
            schedules[(size, opt, lr)].append(rows)
    points: dict[tuple, dict[str, dict[int, list[float]]]] = defaultdict(lambda: defaultdict(dict))
    for (_, opt, lr), candidates in schedules.items():
        seeds = max(len(rs) for rows in candidates for rs in rows.values())
        finished = [rows for rows in candidates if min(map(len, rows.values())) == seeds]
        for tok, rs in (finished or candidates)[-1].items():
            points[(opt, lr)][tok][rs[0]["train_images"]] = [100 * r["test_acc1"] for r in rs]
    return points


def point_stats(points: dict[float, list[float]]) -> tuple[np.ndarray, ...]:
    """``{x: accuracies over seeds}`` -> (x, mean, min, max), each of shape (points,) and sorted by x: every point
    over all of its own seeds, so a point with fewer seeds (a size still being run) leaves the others' seeds alone."""
    xs = sorted(points)
    ys = [np.asarray(points[x], dtype=float) for x in xs]  # per point: (seeds,)
    return (np.array(xs, dtype=float), np.array([y.mean() for y in ys]), np.array([y.min() for y in ys]),
            np.array([y.max() for y in ys]))


def _x_plot(panels: list[tuple[str, dict[str, dict[float, list[float]]]]], xlabel: str, path: Path) -> None:
    """One panel per ``(title, {label: {x: test accuracies over seeds}})``: a band per label, log x."""
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(panels), figsize=(5.5 * len(panels), 4), squeeze=False)
    for ax, (title, lines) in zip(axes[0], panels):
        for label, points in lines.items():
            _line_band(ax, *point_stats(points), label)
        ax.set(xscale="log", xlabel=xlabel, ylabel="test acc1 (%)", title=title)
    _finish(fig, axes.ravel(), path)


def _finish(fig: Any, axes: Any, path: Path) -> None:
    import matplotlib.pyplot as plt

    for ax in axes:
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
