"""The ``vitlab`` command.

``vitlab fit|validate|test|predict -c CONFIG [-c MORE] [--key value]`` is LightningCLI over
:class:`~vitlab.training.ImageClassifier` and any :class:`~vitlab.data.base.ImageDataModule`; configs compose
(data, model, trainer; see configs/). Tool subcommands that are not Lightning runs are dispatched first,
from :data:`TOOLS`.

A run writes everything into one folder, ``<runs_dir>/<run_name>/version_N/``: TensorBoard events,
``metrics.csv``, ``config.yaml`` (the resolved config), ``checkpoints/`` (best ``val/acc1`` and ``last.ckpt``),
``learning_curves.png``, ``confusion_matrix.png`` and, for predict, ``predictions.csv``.
"""
from __future__ import annotations

import re
import sys
import warnings
from pathlib import Path
from typing import Any, Callable, Optional

import torch
from lightning.pytorch import Trainer
from lightning.pytorch.callbacks import LearningRateMonitor, ModelCheckpoint
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger

import vitlab.data  # noqa: F401  (imports every data module, so `--data CIFAR10DataModule` resolves)
from vitlab.data.base import ImageDataModule
from vitlab.training.callbacks import PredictionWriter, RunPlots
from vitlab.training.module import ImageClassifier

# Non-Lightning subcommands: name -> function(argv) -> exit code. Later: compare, bench, export, attention.
def _tool(module: str) -> Callable[[list[str]], Optional[int]]:
    """A subcommand that imports ``vitlab.tools.<module>`` only when it runs; its ``main(argv)`` result is not
    an exit code (bench/compare return their results), so success is 0."""
    def run(argv: list[str]) -> int:
        from importlib import import_module
        result = import_module(f"vitlab.tools.{module}").main(argv)
        return result if isinstance(result, int) and not isinstance(result, bool) else 0
    return run


TOOLS: dict[str, Callable[[list[str]], Optional[int]]] = {
    "bench": _tool("bench"),                   # vitlab vs timm throughput, FLOPs, MFU, Lightning overhead
    "export": _tool("onnx_export"),            # ONNX with dynamic batch and image size
    "attention": _tool("attention"),           # attention-rollout overlays for images and a checkpoint
    "compare": _tool("compare"),               # patch vs conv vs cct over seeds, report folder
    "finetune-proof": _tool("finetune_proof"),  # pretrain on Fashion-MNIST, fine-tune vs scratch on digits
}


class _Parser(LightningArgumentParser):
    """On a bad argument, one usage line (not the hundred-line usage of every option) before jsonargparse's
    ``error: ...`` line; ``--help`` is unchanged."""

    def print_usage(self, file: Any = None) -> None:
        prog = self.prog.replace(" [options]", "")
        (file or sys.stderr).write(f"usage: {prog} [-h] [-c CONFIG ...] [--KEY VALUE ...]\n")


class VitlabCLI(LightningCLI):
    """LightningCLI with vitlab's run folder, links and default callbacks."""

    def instantiate_classes(self) -> None:
        try:
            super().instantiate_classes()
        except ValueError as e:  # a bad value the parser's types let through (e.g. base_lr: -1)
            self._parser(self.subcommand).error(str(e))

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.add_argument("--run_name", type=Optional[str], default=None,
                            help="Run folder name under runs_dir (default: <data>_<preset or tokenizer>).")
        parser.add_argument("--runs_dir", type=str, default="runs", help="Where run folders are made.")
        # the data decides what the model's input and output look like
        for key in ("num_classes", "in_chans", "img_size"):
            parser.link_arguments(f"data.{key}", f"model.{key}", apply_on="instantiate")
        # best val/acc1 and the last checkpoint; configurable as checkpoint.*
        parser.add_lightning_class_args(ModelCheckpoint, "checkpoint")
        parser.set_defaults({
            "checkpoint.monitor": "val/acc1",
            "checkpoint.mode": "max",
            "checkpoint.save_last": True,
            "checkpoint.filename": "epoch{epoch:03d}-val_acc1{val/acc1:.4f}",
            "checkpoint.auto_insert_metric_name": False,  # the "/" of val/acc1 would make a folder
        })

    def before_instantiate_classes(self) -> None:
        config = self.config[self.subcommand] if self.subcommand else self.config
        name = config.run_name or _default_run_name(config)
        if self.subcommand in ("validate", "test", "predict") and config.ckpt_path in ("best", "last"):
            try:
                config.ckpt_path = find_checkpoint(config.runs_dir, name, config.ckpt_path)
            except ValueError as e:
                self._parser(self.subcommand).error(str(e))
        if config.trainer.logger in (None, True):  # default: TensorBoard + CSV, both in one run folder
            config.trainer.logger = [
                {"class_path": "lightning.pytorch.loggers.TensorBoardLogger",
                 "init_args": {"save_dir": config.runs_dir, "name": name}},
                {"class_path": "lightning.pytorch.loggers.CSVLogger",
                 "init_args": {"save_dir": config.runs_dir, "name": name}},
            ]

    def instantiate_trainer(self, **kwargs: Any) -> Trainer:
        # always on (next to trainer.callbacks and the checkpoint); RichProgressBar is Lightning's default
        extra = [LearningRateMonitor(logging_interval="step"), RunPlots(), PredictionWriter()]
        kwargs["callbacks"] = list(kwargs.get("callbacks") or []) + extra
        trainer = super().instantiate_trainer(**kwargs)
        if not trainer.loggers:  # trainer.logger false: nothing to plot the learning rate into
            trainer.callbacks = [c for c in trainer.callbacks if not isinstance(c, LearningRateMonitor)]
        _share_run_folder(trainer)
        if torch.cuda.is_available():
            torch.set_float32_matmul_precision("high")  # TF32 matmuls for the fp32 parts
        return trainer


def find_checkpoint(runs_dir: str, name: str, which: str) -> str:
    """``last.ckpt`` or the best ``val/acc1`` checkpoint of the newest ``runs_dir/name/version_N`` that has
    checkpoints, so ``vitlab test -c CONFIG --ckpt_path best`` works in a new process after ``vitlab fit``."""
    root = Path(runs_dir) / name
    versions = sorted(root.glob("version_*/checkpoints"), key=lambda p: int(p.parent.name.split("_")[-1]))
    for folder in reversed(versions):
        if which == "last" and (folder / "last.ckpt").is_file():
            return str(folder / "last.ckpt")
        scored = [(float(m.group(1)), p) for p in folder.glob("*.ckpt")
                  if (m := re.search(r"val_acc1(\d+\.\d+)", p.name))]
        if which == "best" and scored:
            return str(max(scored)[1])
    raise ValueError(f"ckpt_path={which!r}: no {which} checkpoint under {root}/version_*/checkpoints/ "
                     f"(run `vitlab fit` with the same run_name and runs_dir first, or give a path)")


def _default_run_name(config: Any) -> str:
    data = str(config.data.class_path).rsplit(".", 1)[-1].removesuffix("DataModule")
    data = re.sub(r"(?<=[a-z0-9])(?=[A-Z])", "_", data).lower()  # FashionMNIST -> fashion_mnist
    model = config.model.preset or config.model.tokenizer or "vit"
    return f"{data}_{model}"


def _share_run_folder(trainer: Trainer) -> None:
    """Give a CSV logger that names the same folder as the TensorBoard logger the same version, so both
    write into ``<runs_dir>/<name>/version_N`` (each would otherwise pick the next free number itself)."""
    tb = next((lg for lg in trainer.loggers if isinstance(lg, TensorBoardLogger)), None)
    if tb is None:
        return
    loggers = []
    for lg in trainer.loggers:
        if isinstance(lg, CSVLogger) and (lg.save_dir, lg.name) == (tb.save_dir, tb.name) and lg._version is None:
            lg = CSVLogger(save_dir=tb.save_dir, name=tb.name, version=tb.version, prefix=lg._prefix,
                           flush_logs_every_n_steps=lg._flush_logs_every_n_steps)
        loggers.append(lg)
    trainer.loggers = loggers


_DESCRIPTION = ("Train, evaluate and predict with vitlab Vision Transformers. "
                "Configs compose: -c data.yaml -c model.yaml -c trainer.yaml.")


def main(args: list[str] | None = None) -> int:
    """Run ``vitlab`` with ``args`` (default: the command line); returns the exit code."""
    argv = sys.argv[1:] if args is None else list(args)
    if argv and argv[0] in TOOLS:
        return TOOLS[argv[0]](argv[1:]) or 0
    # TensorBoard and CSV share the run folder on purpose; the CSV logger would warn that it is not empty
    warnings.filterwarnings("ignore", message=r"Experiment logs directory .* exists and is not empty")
    VitlabCLI(
        ImageClassifier,
        ImageDataModule,
        subclass_mode_data=True,
        auto_configure_optimizers=False,
        parser_class=_Parser,  # ImageClassifier owns its optimiser and schedule
        args=args,  # None: LightningCLI reads sys.argv itself
        save_config_kwargs={"overwrite": True},
        parser_kwargs={"prog": "vitlab", "description": _DESCRIPTION + (
            f" Tools (each with its own --help): {', '.join(sorted(TOOLS))}." if TOOLS else "")},
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
