"""Callbacks that show a user their run: learning curves and a confusion matrix at the end of fit, and a
prediction writer that saves and prints top-k labels.

Figures are drawn with matplotlib's object API on the Agg canvas, so nothing touches pyplot's global backend.
"""
from __future__ import annotations

import csv
import heapq
import os
import time
from collections import defaultdict
from contextlib import ExitStack
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
    """Write ``predictions.csv`` (file, then label/probability per rank) batch by batch, and print its head.

    Each process appends its batches' rows to a part file as they come (nothing is held in memory); at the end the
    first process merges the parts in data set order (a distributed sampler deals indices round-robin, so each part
    is already sorted: a streaming merge), drops the duplicates the sampler padded with, and renames the result
    into place, so a crash never leaves a half-written predictions.csv.

    Args:
        output: The CSV path; None = ``predictions.csv`` in ``trainer.log_dir`` (or the working directory).
        print_rows: Rows printed to the console (the CSV has all of them); 0 = none.
    """

    def __init__(self, output: str | None = None, print_rows: int = 50) -> None:
        super().__init__(write_interval="batch")
        self.output = output
        self.print_rows = print_rows
        self.path: str | None = None
        self._part: Any = None  # this process's open part file
        self._k = 0

    def _part_path(self, rank: int) -> str:
        return f"{self.path}.part{rank}"

    def on_predict_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        run_dir = trainer.log_dir  # a broadcast under DDP: every process asks
        self.path = self.output or os.path.join(run_dir or ".", "predictions.csv")
        os.makedirs(os.path.dirname(os.path.abspath(self.path)), exist_ok=True)
        self._part = open(self._part_path(trainer.global_rank), "w", newline="")

    def write_on_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, prediction: Any,
                           batch_indices: Sequence[int] | None, batch: Any, batch_idx: int,
                           dataloader_idx: int = 0) -> None:
        if prediction is None:  # every file of this batch failed to decode
            return
        index = prediction["index"].tolist()
        classes, probs = prediction["classes"].tolist(), prediction["probs"].float().tolist()
        self._k = len(classes[0]) if classes else self._k
        writer = csv.writer(self._part)
        for i, cs, ps in zip(index, classes, probs):
            writer.writerow([i] + [v for c, p in zip(cs, ps) for v in (c, f"{p:.4f}")])

    def on_predict_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._part.close()
        k = max(trainer.strategy.all_gather(torch.tensor(self._k)).reshape(-1).tolist()) if \
            trainer.world_size > 1 else self._k
        trainer.strategy.barrier("predictions")  # every part is complete
        if trainer.is_global_zero:
            self._merge(trainer, pl_module, k)
        trainer.strategy.barrier("predictions merged")

    def _merge(self, trainer: L.Trainer, pl_module: L.LightningModule, k: int) -> None:
        files = list(getattr(trainer.datamodule, "predict_files", []) or [])
        names = class_names(pl_module, trainer.datamodule)
        parts = [self._part_path(r) for r in range(trainer.world_size)]
        header = ["file"] + [c for r in range(1, k + 1) for c in (f"class{r}", f"class_id{r}", f"prob{r}")]
        shown, written, last = [], 0, None
        tmp = f"{self.path}.tmp"
        with ExitStack() as stack, open(tmp, "w", newline="") as f:
            readers = [csv.reader(stack.enter_context(open(p, newline=""))) for p in parts]
            rows = heapq.merge(*readers, key=lambda row: int(row[0]))  # streaming: the parts are each sorted
            writer = csv.writer(f)
            writer.writerow(header)
            for row in rows:
                i = int(row[0])
                if i == last:  # a duplicate the distributed sampler padded with
                    continue
                last = i
                line = [files[i] if i < len(files) else str(i)]
                for c, p in zip(row[1::2], row[2::2]):
                    line += [names[int(c)] if int(c) < len(names) else c, int(c), p]
                writer.writerow(line)
                written += 1
                if len(shown) < self.print_rows:
                    shown.append(line)
        os.replace(tmp, self.path)
        for p in parts:
            os.remove(p)
        skipped = len(files) - written
        if self.print_rows:
            _print_table(header, shown, title=f"{written} predictions -> {self.path}"
                         + (f" ({skipped} unreadable files skipped)" if skipped > 0 else ""))
        else:
            rank_zero_info(f"wrote {written} predictions to {self.path}")


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


# ---------------------------------------------------------------------------------------------- throughput
class TrainThroughput(Callback):
    """Images/s, FLOP/s and MFU of training, logged with the other metrics (``train/device/samples_per_sec``,
    ``train/device/flops_per_sec``, ``train/device/mfu`` where Lightning knows the device's peak).

    Lightning's ``Throughput`` does the arithmetic; unlike its ``ThroughputMonitor`` callback this one waits for
    the device only on the steps that log (the monitor synchronises CUDA after every batch), measuring between two
    logging steps. FLOPs are the module's analytic ``train_flops_per_sample`` (attention included, 3 x forward).
    """

    def __init__(self) -> None:
        self._throughput: Any = None
        self._samples = self._batches = self._counted = 0
        self._t0 = 0.0

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        from lightning.fabric.utilities.throughput import Throughput, _plugin_to_compute_dtype, get_available_flops

        peak = get_available_flops(trainer.strategy.root_device, _plugin_to_compute_dtype(trainer.precision_plugin))
        self._throughput = Throughput(available_flops=peak, world_size=trainer.world_size, window_size=2)
        self._samples = self._batches = self._counted = 0
        self._t0 = time.perf_counter()

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        self._samples += len(batch[0])
        self._batches += 1
        if not trainer._logger_connector.should_update_logs or not trainer.loggers:
            return
        if trainer.strategy.root_device.type == "cuda":
            torch.cuda.synchronize()  # only here: the time must include the queued work
        per_sample = getattr(pl_module, "train_flops_per_sample", None)
        flops = None if per_sample is None else per_sample * (self._samples - self._counted)  # since the last update
        self._counted = self._samples
        self._throughput.update(time=time.perf_counter() - self._t0, batches=self._batches, samples=self._samples,
                                flops=flops)
        metrics = {f"train/{k}": v for k, v in self._throughput.compute().items() if k.startswith("device")}
        if metrics:
            trainer._logger_connector.log_metrics(metrics, step=trainer.global_step)
