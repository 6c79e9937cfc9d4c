"""The ``vitlab`` command.

``vitlab fit|validate|test|predict -c CONFIG [-c MORE] [--key value]`` is LightningCLI over
:class:`~vitlab.training.ImageClassifier` and any :class:`~vitlab.data.base.ImageDataModule`; configs compose
(data, model, trainer; see configs/). Tool subcommands that are not Lightning runs are dispatched first,
from :data:`TOOLS`.

A run writes everything into one folder, ``<runs_dir>/<run_name>/version_N/``: TensorBoard events,
``metrics.csv``, ``config.yaml`` (the resolved config), ``checkpoints/`` (best ``val/acc1`` and ``last.ckpt``),
``learning_curves.png``, ``confusion_matrix.png``. ``validate``/``test``/``predict`` of a run's checkpoint write
next to it, into ``version_N/<subcommand>/`` (``_1``, ``_2``, ... when run again): logs, config.yaml and, for
predict, ``predictions.csv``.
"""
from __future__ import annotations

import shutil
import signal
import sys
import warnings
from pathlib import Path
from typing import Any, Callable, Optional

import torch
from lightning.pytorch import Trainer
from lightning.pytorch.callbacks import LearningRateMonitor, ModelCheckpoint
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI
from lightning.pytorch.plugins.io import CheckpointIO
from lightning.pytorch.utilities import rank_zero_only, rank_zero_warn
from lightning.pytorch.utilities.exceptions import MisconfigurationException, SIGTERMException

from vitlab.cli_errors import Parser, run_error
from vitlab.config_guard import ConfigError, check_config, install as install_config_guard
from vitlab.data import *  # noqa: F401,F403  (every data module, so `--data CIFAR10DataModule` resolves)
from vitlab.data.base import ImageDataModule
from vitlab.data.predict import check_predict_dir
from vitlab.models.data_config import data_config_of, follow_weights
from vitlab.training.callbacks import PredictionWriter, RunPlots, TrainThroughput
from vitlab.runtime import keep_freed_memory, trainer_precision
from vitlab.training.checkpointing import AtomicCheckpointIO, LastCheckpoint, NonFiniteCheckpointError, ResumeState
from vitlab.training.checkpointing import budget_reached, check_checkpoint_dirs
from vitlab.run_lock import abandon_new_folders, claim_run_folder, created_here, launching_process, release_all
from vitlab.training.module import CheckpointMismatchError, ImageClassifier, NonFiniteLossError
from vitlab.training.settings import upgrade_hparams
from vitlab.training.signals import SaveOnSignal
from vitlab.training.trainer_checks import check_ckpt_path, check_run_folders, check_trainer_values
from vitlab.run_folder import (check_checkpoint, check_run_name, default_run_name, evaluated_run, find_checkpoint,
                               is_default_logging, next_free, run_version, share_run_folder)

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
    "timm-script": _tool("timm_script"),       # timm's own train.py / validate.py / benchmark.py on vitlab_ models
    "export-hub": _tool("hub_export"),         # Hugging Face Hub folder (timm's layout, model card), --push
    "attention": _tool("attention"),           # attention-rollout overlays for images and a checkpoint
    "compare": _tool("compare"),               # patch vs conv vs cct over seeds, report folder
    "finetune-proof": _tool("finetune_proof"),  # pretrain on Fashion-MNIST, fine-tune vs scratch on digits
    "prepare": _tool("prepare"),  # litdata shards from ImageFolder / Fashion-MNIST / CIFAR
    "bench-data": _tool("bench_data"),  # loading img/s: ImageFolder vs litdata shards
}


class VitlabCLI(LightningCLI):
    """LightningCLI with vitlab's run folder, links and default callbacks.

    Reliability defaults: checkpoints are written atomically (:class:`AtomicCheckpointIO`, unless
    ``trainer.plugins`` names another CheckpointIO); ``last.ckpt`` is refreshed every ``last_every_n_steps``
    steps (or ``last_every_minutes``) and after each validation; the global random states are checkpointed;
    ``fit --ckpt_path last|best`` resumes the newest run into its own folder; checkpoints are read with
    ``weights_only=True`` and checked before the run starts. One fit at a time holds a run folder
    (:mod:`vitlab.run_lock`); a new fit never writes into a folder of another run's checkpoints; a resume whose
    budget is reached says "nothing to train".
    """

    def _run_subcommand(self, subcommand: str) -> None:
        if getattr(self, "_nothing_to_train", False):  # said so in before_instantiate_classes; nothing was built
            return
        folder = Path(self.trainer.log_dir) if self.trainer.log_dir else None
        new_folder = folder if folder is not None and (not folder.exists() or created_here(folder)) else None
        try:
            super()._run_subcommand(subcommand)
        except (NonFiniteLossError, NonFiniteCheckpointError) as e:  # a diverged run: one line, exit code 1
            sys.stderr.write(f"vitlab {subcommand}: error: {e}\n")
            raise SystemExit(1) from None
        except CheckpointMismatchError as e:  # ckpt_path does not fit the config and data: a usage error
            self._parser(subcommand).error(f"ckpt_path {self.config[subcommand].ckpt_path}: {e}")
        except SIGTERMException:  # stopped by a signal: last.ckpt is written; never report success
            stop = next((cb for cb in self.trainer.callbacks if isinstance(cb, SaveOnSignal)), None)
            signum = (stop.signum if stop is not None else None) or signal.SIGTERM
            sys.stderr.write(f"vitlab {subcommand}: stopped by {signal.Signals(signum).name} at step "
                             f"{self.trainer.global_step}; resume with --ckpt_path last\n")
            raise SystemExit(128 + int(signum)) from None
        except Exception as e:  # a corrupt image, a data tree that does not fit, a full disk: one line, no traceback
            found = run_error(e)
            if found is None:
                raise
            if new_folder is not None and new_folder.is_dir() and not (new_folder / "config.yaml").exists() \
                    and rank_zero_only.rank == 0:  # failed while setting up: leave no empty version_N behind
                shutil.rmtree(new_folder, ignore_errors=True)
            sys.stderr.write(f"vitlab {subcommand}: error: {found[1]}\n")
            raise SystemExit(found[0]) from None

    def parse_arguments(self, parser: LightningArgumentParser, args: Any) -> None:
        try:  # a config file over the bounds (vitlab.config_guard), refused while jsonargparse reads it
            super().parse_arguments(parser, args)
        except ConfigError as e:
            parser.error(str(e))

    def instantiate_classes(self) -> None:
        if getattr(self, "_nothing_to_train", False):
            return
        try:
            super().instantiate_classes()
        except (ValueError, MisconfigurationException) as e:  # a bad value the parser's types let through
            abandon_new_folders()  # a version_N claimed for this run, still empty
            self._parser(self.subcommand).error(str(e))

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.add_argument("--run_name", type=Optional[str], default=None,
                            help="Run folder name under runs_dir (default: <data>_<preset or tokenizer>).")
        parser.add_argument("--runs_dir", type=str, default="runs", help="Where run folders are made.")
        parser.add_argument("--last_every_n_steps", type=Optional[int], default=None,
                            help="Write last.ckpt (what --ckpt_path last resumes) every N training steps, "
                                 "besides after each validation; wins over last_every_minutes.")
        parser.add_argument("--last_every_minutes", type=Optional[float], default=10.0,
                            help="Write last.ckpt after this many minutes of training since the last write.")
        # the data decides what the model's input and output look like
        for key in ("num_classes", "in_chans", "img_size"):
            parser.link_arguments(f"data.{key}", f"model.arch.{key}", apply_on="instantiate")
        # best val/acc1 and the last checkpoint; configurable as checkpoint.*
        parser.add_lightning_class_args(ModelCheckpoint, "checkpoint")
        parser.set_defaults({
            "checkpoint.monitor": "val/acc1",
            "checkpoint.mode": "max",
            "checkpoint.save_last": True,
            "checkpoint.filename": "epoch{epoch:03d}-val_acc1{val/acc1:.4f}",
            "checkpoint.auto_insert_metric_name": False,  # the "/" of val/acc1 would make a folder
        })

    def _parse_ckpt_path(self) -> None:
        """Resolve ``best``/``last`` to the newest run's file and check the file (complete, no code in its pickle)
        before Lightning reads the model's hyperparameters from it."""
        subcommand = self.config.get("subcommand")
        config = self.config[subcommand] if subcommand else None
        if config is not None and config.get("ckpt_path"):
            name = config.run_name or default_run_name(config)
            if config.ckpt_path in ("best", "last"):
                try:
                    config.ckpt_path = find_checkpoint(config.runs_dir, name, config.ckpt_path)
                except ValueError as e:
                    if subcommand != "fit" or config.ckpt_path != "last":
                        self._parser(subcommand).error(str(e))
                    print(f"vitlab fit: no last.ckpt under {Path(config.runs_dir) / name}, starting from scratch",
                          file=sys.stderr)
                    config.ckpt_path = None
            if config.ckpt_path is not None:
                try:
                    check_ckpt_path(config.ckpt_path)
                    check_checkpoint(config.ckpt_path)
                except ValueError as e:
                    self._parser(subcommand).error(str(e))
        # the model's arguments come from the checkpoint (read in today's groups); how to evaluate (model.evaluation)
        # comes from this command
        if config is None or not config.get("ckpt_path") or not Path(config.ckpt_path).is_file():
            return
        hparams = torch.load(config.ckpt_path, map_location="cpu", weights_only=True, mmap=True).get(
            "hyper_parameters") or {}
        hparams = {k: v for k, v in upgrade_hparams(hparams).items() if k != "_instantiator" and k != "evaluation"}
        if hparams:
            try:
                self.config = self.parser.parse_object({subcommand: {"model": hparams}}, self.config)
            except SystemExit:
                sys.stderr.write(f"vitlab {subcommand}: the hyper-parameters of {config.ckpt_path} do not parse\n")
                raise

    def before_instantiate_classes(self) -> None:
        config = self.config[self.subcommand] if self.subcommand else self.config
        try:  # only allowed classes and no functions, before anything is built
            check_config(config)
        except ConfigError as e:
            self._parser(self.subcommand).error(str(e))
        name = config.run_name or default_run_name(config)
        try:
            check_run_name(config.runs_dir, name)
        except ValueError as e:
            self._parser(self.subcommand).error(str(e))
        steps, minutes = config.get("last_every_n_steps"), config.get("last_every_minutes")
        if steps is not None and steps < 1:
            self._parser(self.subcommand).error(f"last_every_n_steps must be an integer >= 1, got {steps!r}")
        if minutes is not None and not minutes > 0:
            self._parser(self.subcommand).error(f"last_every_minutes must be a number > 0, got {minutes!r}")
        save_dir, log_name, version = config.runs_dir, name, None
        if self.subcommand == "fit" and config.get("ckpt_path"):  # resume into the checkpoint's run folder
            version = run_version(config.ckpt_path, Path(config.runs_dir) / name)
        elif config.get("ckpt_path") and (run := evaluated_run(config.ckpt_path)) is not None:
            # validate/test/predict a run's checkpoint: results go next to it, run/<subcommand>[_k]/
            save_dir, log_name, version = str(run), "", next_free(run, self.subcommand)
        written = [Path(save_dir) / log_name / f"version_{version}", Path(save_dir) / log_name / f"version_{version}"
                   / "checkpoints"] if isinstance(version, int) else [Path(save_dir)]
        try:  # before anything is built or written
            check_trainer_values(config.trainer, self.subcommand)
            check_run_folders(config.runs_dir, written)
            if self.subcommand == "predict":
                check_predict_dir(config.data.get("init_args", {}).get("predict_dir"))
        except ValueError as e:
            self._parser(self.subcommand).error(str(e))
        precision, note = trainer_precision(config.trainer.precision, config.trainer.accelerator)
        if note:  # bf16 on a CPU that would emulate it
            rank_zero_warn(note)
            config.trainer.precision = precision
        self._follow_weights_data_config(config)
        if self.subcommand == "predict" and config.get("return_predictions") is None:
            config.return_predictions = False  # PredictionWriter writes each batch; keep none of them in memory
        if config.get("weights_only", False) is None:  # never run a checkpoint's pickle code
            config.weights_only = True
        if self.subcommand == "fit" and (why := budget_reached(config.get("ckpt_path"), config.trainer.max_steps,
                                                                config.trainer.max_epochs, config.trainer.max_time)):
            _note(f"vitlab fit: nothing to train: {why}")  # exit 0 with nothing touched, not a silent no-op
            self._nothing_to_train = True
            return
        if config.trainer.logger in (None, True) or is_default_logging(config.trainer.logger, config.runs_dir, name):
            if self.subcommand == "fit" and launching_process():  # one fit per run folder (vitlab.run_lock)
                try:
                    version = claim_run_folder(Path(save_dir) / log_name, version)
                except ValueError as e:
                    self._parser(self.subcommand).error(str(e))
            # default: TensorBoard + CSV, both in one run folder (also when a run's saved config.yaml repeats them)
            config.trainer.logger = [
                {"class_path": "lightning.pytorch.loggers.TensorBoardLogger",
                 "init_args": {"save_dir": save_dir, "name": log_name, "version": version,
                               **({"purge_step": step} if (step := self._resume_step()) else {})}},
                {"class_path": "lightning.pytorch.loggers.CSVLogger",
                 "init_args": {"save_dir": save_dir, "name": log_name}},
            ]

    def _follow_weights_data_config(self, config: Any) -> None:
        """The data's normalisation, interpolation and eval crop follow the weights' data config (the checkpoint
        being resumed or evaluated, else ``model.pretrained``) where the user left them unset; one line says what
        was taken from where. Runs before the data module is built, so config.yaml records the values used."""
        ckpt = config.get("ckpt_path")
        sources = [str(s) for s in (ckpt, config.model.get("pretrained")) if s and "://" not in str(s)]
        if not sources or "init_args" not in config.data:
            return
        try:
            found = next(((s, c) for s in sources if (c := data_config_of(s)) is not None), None)
        except ValueError as e:  # a config.json or checkpoint that cannot be read
            self._parser(self.subcommand).error(str(e))
        say = f"vitlab {self.subcommand}:"
        if found is None:
            hub = " (hf-hub: only a config.json already in the Hugging Face cache is read)" \
                if any(s.startswith("hf-hub:") for s in sources) else ""
            _note(f"{say} {' / '.join(sources)} carries no data config{hub}: the data keeps its own mean/std, "
                  f"interpolation and crop; set data.init_args.mean/std if the weights were trained otherwise")
            return
        source, weights = found
        module, _, name = str(config.data.class_path).rpartition(".")
        data_cls = getattr(sys.modules.get(module), name, None)  # imported by the parser already
        same_pipeline = source == str(ckpt)  # the checkpoint being resumed or evaluated: its eval crop too
        taken, overridden, unused = follow_weights(config.data.init_args, data_cls, weights, same_pipeline)
        parts = [f"data {', '.join(taken)} from the weights' data config ({source})"] if taken else []
        parts += [f"your {o} overrides the weights'" for o in overridden]
        parts += [f"the weights' {u} is not used; set data.init_args.{u.split()[0]} to choose" for u in unused]
        if parts:
            _note(f"{say} {'; '.join(parts)}")

    def instantiate_trainer(self, **kwargs: Any) -> Trainer:
        # always on (next to trainer.callbacks and the checkpoint); RichProgressBar is Lightning's default
        extra = [ResumeState(),  # first: it sets the resumed step before anything logs at a batch's start
                 LearningRateMonitor(logging_interval="step"), TrainThroughput(), RunPlots(), PredictionWriter(),
                 SaveOnSignal()]
        best = self._get(self.config_init, "checkpoint", default=None)
        if self._checkpointing_off():  # trainer.enable_checkpointing: false -> no checkpoint callback at all
            best = None
        if isinstance(best, ModelCheckpoint) and best.save_last:  # last.ckpt comes from LastCheckpoint instead
            best.save_last = False
            config = self.config[self.subcommand] if self.subcommand else self.config
            extra.append(LastCheckpoint(dirpath=best.dirpath, every_n_train_steps=config.get("last_every_n_steps"),
                                        every_minutes=config.get("last_every_minutes")))
        trainer_config = self._get(self.config_init, "trainer", default={})
        given = kwargs.get("callbacks", trainer_config.get("callbacks")) or []  # trainer.callbacks from the config
        kwargs["callbacks"] = (list(given) if isinstance(given, (list, tuple)) else [given]) + extra
        plugins = trainer_config.get("plugins") or []
        plugins = list(plugins) if isinstance(plugins, (list, tuple)) else [plugins]
        if not any(isinstance(p, CheckpointIO) for p in plugins):
            kwargs["plugins"] = plugins + [AtomicCheckpointIO()]
        trainer = super().instantiate_trainer(**kwargs)
        if not trainer.loggers:  # trainer.logger false: nothing to plot the learning rate into
            trainer.callbacks = [c for c in trainer.callbacks if not isinstance(c, LearningRateMonitor)]
        if self.subcommand == "fit" and launching_process():  # before metrics.csv or any checkpoint is written
            try:
                check_checkpoint_dirs(trainer, self.config[self.subcommand].get("ckpt_path"))
            except ValueError as e:
                abandon_new_folders()
                self._parser(self.subcommand).error(str(e))
        share_run_folder(trainer, resume_step=self._resume_step())
        if torch.cuda.is_available():
            torch.set_float32_matmul_precision("high")  # TF32 matmuls for the fp32 parts
        return trainer

    def _resume_step(self) -> Optional[int]:
        """The global step ``fit --ckpt_path`` resumes at (None for a new run or another subcommand)."""
        config = self.config[self.subcommand] if self.subcommand else self.config
        ckpt = config.get("ckpt_path")
        if self.subcommand != "fit" or not ckpt or "://" in str(ckpt):
            return None
        return int(torch.load(ckpt, map_location="cpu", weights_only=True, mmap=True).get("global_step", 0))

    def _checkpointing_off(self) -> bool:
        trainer_config = self._get(self.config_init, "trainer", default={}) or {}
        return trainer_config.get("enable_checkpointing") is False

    def _instantiate_trainer(self, config: dict[str, Any], callbacks: list) -> Trainer:
        if self._checkpointing_off():  # Lightning refuses a ModelCheckpoint with enable_checkpointing=False
            callbacks = [c for c in callbacks if not isinstance(c, ModelCheckpoint)]
        return super()._instantiate_trainer(config, callbacks)


def _note(text: str) -> None:
    """One line on stderr, from the first process only."""
    if rank_zero_only.rank == 0:
        print(text, file=sys.stderr)


_DESCRIPTION = ("Train, evaluate and predict with vitlab Vision Transformers. "
                "Configs compose: -c data.yaml -c model.yaml -c trainer.yaml.")


def main(args: list[str] | None = None) -> int:
    """Run ``vitlab`` with ``args`` (default: the command line); returns the exit code."""
    argv = sys.argv[1:] if args is None else list(args)
    keep_freed_memory()  # no page-fault storm from re-allocating activations on CPU (see its docstring)
    if argv and argv[0] in TOOLS:
        return TOOLS[argv[0]](argv[1:]) or 0
    # TensorBoard and CSV share the run folder on purpose; the CSV logger would warn that it is not empty
    warnings.filterwarnings("ignore", message=r"Experiment logs directory .* exists and is not empty")
    try:
        _run_cli(args)
    finally:
        _close_process_group()
        release_all()  # the run folder's lock (vitlab.run_lock) lasts as long as the command
    return 0


def _close_process_group() -> None:
    """Tear down a DDP process group before the interpreter exits.

    Left to interpreter shutdown, gloo's worker threads can still hold tensors when Python is half torn down, and
    a process then dies with ``terminate called without an active exception`` (SIGABRT) after a finished run.
    """
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()


def _run_cli(args: list[str] | None) -> None:
    """Parse ``args`` and run the LightningCLI subcommand."""
    try:  # bounded YAML and the classes a config may name (vitlab.config_guard)
        install_config_guard()
    except ConfigError as e:
        sys.stderr.write(f"vitlab: error: {e}\n")
        raise SystemExit(2) from None
    VitlabCLI(
        ImageClassifier,
        ImageDataModule,
        subclass_mode_data=True,
        auto_configure_optimizers=False,
        parser_class=Parser,  # ImageClassifier owns its optimiser and schedule
        args=args,  # None: LightningCLI reads sys.argv itself
        save_config_kwargs={"overwrite": True},
        parser_kwargs={"prog": "vitlab", "description": _DESCRIPTION + (
            f" Tools (each with its own --help): {', '.join(sorted(TOOLS))}." if TOOLS else "")},
    )


if __name__ == "__main__":
    sys.exit(main())
