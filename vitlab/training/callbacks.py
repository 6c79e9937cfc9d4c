"""Callbacks that show a user their run: learning curves and a confusion matrix at the end of fit, and a
prediction writer that saves and prints top-k labels.

Figures are drawn with matplotlib's object API on the Agg canvas, so nothing touches pyplot's global backend.
"""
from __future__ import annotations

import csv
import os
from collections import defaultdict
from typing import Any, Sequence

import lightning as L
import torch
from lightning.pytorch.callbacks import BasePredictionWriter, Callback
from lightning.pytorch.loggers import CSVLogger
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator
from torchmetrics.classification import MulticlassConfusionMatrix


# ---------------------------------------------------------------------------------------------- reading logs
def read_epoch_metrics(path: str) -> dict[str, dict[int, float]]:
    """A CSVLogger ``metrics.csv`` as ``{key: {epoch: value}}``, the last value logged in each epoch."""
    series: dict[str, dict[int, float]] = defaultdict(dict)
    with open(path, newline="") as f:
        for row in csv.DictReader(f):
            if not row.get("epoch"):
                continue
            epoch = int(float(row["epoch"]))
            for key, value in row.items():
                if key not in ("epoch", "step") and value not in (None, ""):
                    series[key][epoch] = float(value)
    return dict(series)


def plot_learning_curves(metrics: dict[str, dict[int, float]], path: str) -> str | None:
    """Loss (train/val) and val top-1 accuracy against epoch, as a PNG; None when nothing was logged."""
    losses = [k for k in ("train/loss", "val/loss") if metrics.get(k)]
    accs = [k for k in ("train/acc1", "val/acc1") if metrics.get(k)]
    if not losses and not accs:
        return None
    fig = Figure(figsize=(10, 4), layout="constrained")
    FigureCanvasAgg(fig)
    for ax, keys, title in zip(fig.subplots(1, 2), (losses, accs), ("loss", "top-1 accuracy")):
        for key in keys:
            epochs = sorted(metrics[key])
            ax.plot([e + 1 for e in epochs], [metrics[key][e] for e in epochs], marker="o", markersize=3,
                    label=key)
        ax.set(xlabel="epoch", title=title)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
        if keys:
            ax.legend()
    fig.savefig(path, dpi=120)
    return path


def plot_confusion_matrix(matrix: torch.Tensor, classes: Sequence[str], path: str, title: str = "") -> str:
    """A (K, K) count matrix (rows = true class) as a PNG, coloured by row-normalised rate."""
    K = matrix.shape[0]
    counts = matrix.cpu().double()
    rates = counts / counts.sum(1, keepdim=True).clamp(min=1)
    side = min(24.0, max(5.0, 0.45 * K + 2))
    fig = Figure(figsize=(side, side), layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.subplots()
    im = ax.imshow(rates.numpy(), cmap="Blues", vmin=0, vmax=1)
    fig.colorbar(im, ax=ax, shrink=0.8, label="fraction of the true class")
    if K <= 30:  # labels and counts stay readable
        ax.set_xticks(range(K), classes, rotation=90 if K > 10 else 45, ha="right" if K <= 10 else "center")
        ax.set_yticks(range(K), classes)
        for i in range(K):
            for j in range(K):
                if counts[i, j]:
                    ax.text(j, i, int(counts[i, j]), ha="center", va="center", fontsize=7,
                            color="white" if rates[i, j] > 0.5 else "black")
    ax.set(xlabel="predicted", ylabel="true", title=title)
    fig.savefig(path, dpi=120)
    return path


# ---------------------------------------------------------------------------------------------- plots
class RunPlots(Callback):
    """At the end of fit, write ``learning_curves.png`` (from the CSV logger) and ``confusion_matrix.png``
    (of the last validation epoch, over every process's data) into ``trainer.log_dir``."""

    def __init__(self) -> None:
        self.confmat: MulticlassConfusionMatrix | None = None
        self.last_matrix: torch.Tensor | None = None
        self.last_epoch = -1

    def on_validation_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking:
            return
        if self.confmat is None:
            self.confmat = MulticlassConfusionMatrix(num_classes=pl_module.cfg.num_classes)
        self.confmat = self.confmat.to(pl_module.device)
        self.confmat.reset()

    def on_validation_batch_end(self, trainer, pl_module, outputs: Any, batch: Any, batch_idx: int,
                                dataloader_idx: int = 0) -> None:
        if trainer.sanity_checking or self.confmat is None or not isinstance(outputs, dict):
            return
        self.confmat.update(outputs["preds"], outputs["target"])

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking or self.confmat is None or not self.confmat.update_called:
            return
        self.last_matrix = self.confmat.compute()  # all-reduced across processes
        self.last_epoch = trainer.current_epoch

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        run_dir = trainer.log_dir  # a broadcast under DDP: every process asks
        if run_dir is None or not trainer.is_global_zero:
            return
        os.makedirs(run_dir, exist_ok=True)
        written = []
        csv_logger = next((lg for lg in trainer.loggers if isinstance(lg, CSVLogger)), None)
        if csv_logger is not None:
            csv_logger.save()  # flush buffered rows
            path = csv_logger.experiment.metrics_file_path
            if os.path.isfile(path):
                written.append(plot_learning_curves(read_epoch_metrics(path),
                                                    os.path.join(run_dir, "learning_curves.png")))
        else:
            rank_zero_warn("RunPlots: no CSVLogger, so no learning_curves.png")
        if self.last_matrix is not None:
            classes = getattr(trainer.datamodule, "classes", None) or [str(i) for i in range(len(self.last_matrix))]
            acc = (self.last_matrix.diag().sum() / self.last_matrix.sum().clamp(min=1)).item()
            written.append(plot_confusion_matrix(
                self.last_matrix, classes, os.path.join(run_dir, "confusion_matrix.png"),
                title=f"validation, epoch {self.last_epoch + 1} (top-1 {acc:.2%})"))
        for path in filter(None, written):
            rank_zero_info(f"wrote {path}")


# ---------------------------------------------------------------------------------------------- predictions
class PredictionWriter(BasePredictionWriter):
    """Write ``predictions.csv`` (file, then label/probability per rank) and print it as a table.

    Args:
        output: The CSV path; None = ``predictions.csv`` in ``trainer.log_dir`` (or the working directory).
        print_rows: Rows printed to the console (the CSV has all of them); 0 = none.
    """

    def __init__(self, output: str | None = None, print_rows: int = 50) -> None:
        super().__init__(write_interval="epoch")
        self.output = output
        self.print_rows = print_rows
        self.path: str | None = None

    def write_on_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, predictions: Sequence[Any],
                           batch_indices: Sequence[Any]) -> None:
        rows = [p for p in predictions if p is not None]
        if rows and isinstance(rows[0], list):  # several predict loaders: flatten
            rows = [p for group in rows for p in group if p is not None]
        index = torch.cat([r["index"].cpu() for r in rows]) if rows else torch.empty(0, dtype=torch.long)
        classes = torch.cat([r["classes"].cpu() for r in rows]) if rows else torch.empty(0, 0, dtype=torch.long)
        probs = torch.cat([r["probs"].float().cpu() for r in rows]) if rows else torch.empty(0, 0)
        if trainer.world_size > 1:  # every process predicted a share: gather them on rank 0
            gathered = [None] * trainer.world_size
            torch.distributed.all_gather_object(gathered, (index, classes, probs))
            index = torch.cat([g[0] for g in gathered])
            classes = torch.cat([g[1] for g in gathered])
            probs = torch.cat([g[2] for g in gathered])
        run_dir = trainer.log_dir  # a broadcast under DDP: every process asks
        if trainer.is_global_zero:
            self._write(trainer, run_dir, index, classes, probs, class_names(pl_module, trainer.datamodule))

    def _write(self, trainer: L.Trainer, run_dir: str | None, index: torch.Tensor, classes: torch.Tensor,
               probs: torch.Tensor, names: list[str]) -> None:
        files = list(getattr(trainer.datamodule, "predict_files", []) or [])
        order = {}  # dataset index -> row; drops the duplicates a distributed sampler pads with
        for row, i in enumerate(index.tolist()):
            order.setdefault(i, row)
        k = classes.shape[1] if classes.ndim == 2 else 0
        header = ["file"] + [c for r in range(1, k + 1) for c in (f"class{r}", f"class_id{r}", f"prob{r}")]
        table = []
        for i in sorted(order):
            row = order[i]
            line = [files[i] if i < len(files) else str(i)]
            for c, p in zip(classes[row].tolist(), probs[row].tolist()):
                line += [names[c] if c < len(names) else str(c), c, f"{p:.4f}"]
            table.append(line)
        self.path = self.output or os.path.join(run_dir or ".", "predictions.csv")
        os.makedirs(os.path.dirname(os.path.abspath(self.path)), exist_ok=True)
        with open(self.path, "w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(header)
            writer.writerows(table)
        skipped = len(files) - len(table)
        if self.print_rows:
            _print_table(header, table[: self.print_rows], title=f"{len(table)} predictions -> {self.path}"
                         + (f" ({skipped} unreadable files skipped)" if skipped > 0 else ""))
        else:
            rank_zero_info(f"wrote {len(table)} predictions to {self.path}")


def class_names(pl_module: L.LightningModule, datamodule: Any) -> list[str]:
    """What the model's outputs mean: the class names its checkpoint stored (the data it was trained on), else
    the data module's; a warning when the two disagree."""
    stored = list(getattr(pl_module, "class_names", None) or [])
    current = list(getattr(datamodule, "classes", None) or [])
    if stored and current and stored != current:
        rank_zero_warn(f"the checkpoint's class names ({', '.join(stored[:5])}, ...) differ from the data's "
                       f"({', '.join(current[:5])}, ...): predictions are labelled with the checkpoint's")
    return stored or current


def _print_table(header: list[str], rows: list[list[Any]], title: str) -> None:
    from rich.console import Console
    from rich.table import Table

    top3 = {f"{name}{r}" for name in ("class", "prob") for r in (1, 2, 3)}  # the CSV has all k
    shown = [0] + [i for i, h in enumerate(header) if h in top3]
    table = Table(title=title, title_justify="left")
    for i in shown:
        table.add_column(header[i], justify="right" if header[i].startswith("prob") else "left",
                         no_wrap=i == 0)
    for row in rows:
        table.add_row(*[os.path.basename(row[0]) if i == 0 else str(row[i]) for i in shown])
    Console().print(table)


__all__ = ["RunPlots", "PredictionWriter", "class_names", "read_epoch_metrics", "plot_learning_curves",
           "plot_confusion_matrix"]
