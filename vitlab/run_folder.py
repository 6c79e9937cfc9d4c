"""The run folder of ``vitlab`` commands: ``<runs_dir>/<run_name>/version_N/`` and what is found or written there
(checkpoints by ``best``/``last``, the evaluation folders next to a run, the loggers sharing one folder)."""
from __future__ import annotations

import csv
import os
import re
from pathlib import Path
from typing import Any, Optional, Sequence

import torch
from lightning.pytorch import Trainer
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger


def check_run_name(runs_dir: str, name: str) -> None:
    """Raise ``ValueError`` (one line) unless ``runs_dir/name`` stays inside ``runs_dir``: an absolute name, ``..``
    or a symlink out would make a run write elsewhere."""
    if not name or os.path.isabs(name) or ".." in Path(name).parts:
        raise ValueError(f"run_name {name!r} must be a relative name inside runs_dir (no '..', not absolute)")
    root = Path(runs_dir).resolve()
    if root not in (root / name).resolve().parents:
        raise ValueError(f"run_name {name!r} leads outside runs_dir {runs_dir!r}")


def check_checkpoint(path: str) -> None:
    """Raise ``ValueError`` (one line, naming the file) unless ``path`` is a complete checkpoint that
    ``torch.load(weights_only=True)`` reads: a truncated file, or a pickle that would run code, stops here."""
    if "://" in str(path):
        return  # remote: Lightning loads it with weights_only=True
    if not os.path.isfile(path):
        raise ValueError(f"ckpt_path {path!r} does not exist")
    try:
        torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception as err:  # UnpicklingError, a truncated zip, ...: never retried with weights_only=False
        reason = (str(err).strip().splitlines() or [type(err).__name__])[0]
        raise ValueError(f"refusing checkpoint {path!r}: torch.load(weights_only=True) cannot read it, so it is "
                         f"truncated, not a checkpoint, or its pickle would run code (nothing was executed): "
                         f"{reason}") from None


def run_version(ckpt_path: str, run_root: Path) -> Optional[int]:
    """N when ``ckpt_path`` is ``run_root/version_N/checkpoints/*.ckpt``, else None (a new version)."""
    folder = Path(ckpt_path).resolve().parent.parent
    if folder.parent == run_root.resolve() and re.fullmatch(r"version_\d+", folder.name):
        return int(folder.name.split("_")[1])
    return None


def is_default_logging(logger: Any, runs_dir: str, name: str) -> bool:
    """Whether ``trainer.logger`` is the TensorBoard + CSV pair vitlab sets up (as a run's config.yaml records it)."""
    if not isinstance(logger, list) or len(logger) != 2:
        return False
    kinds = {"lightning.pytorch.loggers.TensorBoardLogger", "lightning.pytorch.loggers.CSVLogger"}
    for entry in logger:
        get = entry.get if isinstance(entry, dict) else lambda k, d=None: getattr(entry, k, d)
        args = get("init_args") or {}
        args_get = args.get if isinstance(args, dict) else lambda k, d=None: getattr(args, k, d)
        if get("class_path") not in kinds or str(args_get("save_dir")) != str(runs_dir) or args_get("name") != name:
            return False
    return True


def evaluated_run(ckpt_path: str) -> Optional[Path]:
    """The run folder ``.../version_N`` of a checkpoint in its ``checkpoints/`` (a run's config.yaml beside it),
    else None (a checkpoint from elsewhere: the evaluation gets a run folder of its own)."""
    if "://" in str(ckpt_path):
        return None
    folder = Path(ckpt_path).resolve().parent.parent
    if Path(ckpt_path).resolve().parent.name == "checkpoints" and re.fullmatch(r"version_\d+", folder.name) \
            and (folder / "config.yaml").is_file():
        return folder
    return None


def next_free(run: Path, stage: str) -> str:
    """``stage``, else ``stage_1``, ``stage_2``, ...: the first name not yet used in ``run`` (nothing is replaced)."""
    k = 0
    while (run / (stage if k == 0 else f"{stage}_{k}")).exists():
        k += 1
    return stage if k == 0 else f"{stage}_{k}"


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


def same_file(a: str | Path, b: str | Path) -> bool:
    """Whether ``a`` and ``b`` are one file: the same path once symlinks are resolved, or hard links of one inode."""
    a, b = Path(a), Path(b)
    if a.resolve() == b.resolve():
        return True
    try:
        return a.exists() and b.exists() and a.samefile(b)
    except OSError:
        return False


def check_outputs(outs: Sequence[str | Path], inputs: Sequence[Optional[str | Path]], overwrite: bool) -> None:
    """Raise ``ValueError`` (one line) before a tool writes ``outs``: always when one of them is one of its ``inputs``
    (the checkpoint or image it reads would be lost; a symlink or a hard link to it too), and when one exists unless
    ``overwrite``. Each input is resolved once, so thousands of images and outputs cost one pass."""
    sources = [s for s in inputs if s and "://" not in str(s)]
    by_path = {Path(s).resolve(): s for s in sources}
    by_inode = {(st.st_dev, st.st_ino): s for s in sources if (st := _stat(s)) is not None}
    for out in outs:
        source = by_path.get(Path(out).resolve())
        if source is None and (st := _stat(out)) is not None:
            source = by_inode.get((st.st_dev, st.st_ino))
        if source is not None:
            raise ValueError(f"{out} is the input {source} itself: refusing to write over it, even with --overwrite")
        if os.path.lexists(out) and not overwrite:
            raise ValueError(f"{out} exists: pass --overwrite to replace it")


def _stat(path: str | Path) -> Optional[os.stat_result]:
    try:
        return os.stat(path)
    except OSError:
        return None


def default_run_name(config: Any) -> str:
    data = str(config.data.class_path).rsplit(".", 1)[-1].removesuffix("DataModule")
    data = re.sub(r"(?<=[a-z0-9])(?=[A-Z])", "_", data).lower()  # FashionMNIST -> fashion_mnist
    model = config.model.get("timm_model") or config.model.preset or config.model.arch.tokenizer or "vit"
    return f"{data}_{model}"


def share_run_folder(trainer: Trainer, resume_step: Optional[int] = None) -> None:
    """Give a CSV logger that names the same folder as the TensorBoard logger the same version, so both
    write into ``<runs_dir>/<name>/version_N`` (each would otherwise pick the next free number itself). A run resumed
    at ``resume_step`` keeps its metrics.csv history (:func:`keep_csv_history`)."""
    tb = next((lg for lg in trainer.loggers if isinstance(lg, TensorBoardLogger)), None)
    if tb is None:
        return
    loggers = []
    for lg in trainer.loggers:
        if isinstance(lg, CSVLogger) and (lg.save_dir, lg.name) == (tb.save_dir, tb.name) and lg._version is None:
            lg = CSVLogger(save_dir=tb.save_dir, name=tb.name, version=tb.version, prefix=lg._prefix,
                           flush_logs_every_n_steps=lg._flush_logs_every_n_steps)
            keep_csv_history(lg, resume_step)
        loggers.append(lg)
    trainer.loggers = loggers


def keep_csv_history(logger: CSVLogger, resume_step: Optional[int] = None) -> None:
    """A resumed run appends to its metrics.csv instead of losing it: Lightning's CSV writer deletes an existing
    metrics.csv when it starts, so the rows are read first and written back. Rows the resumed run will log again (step
    >= ``resume_step``, except that step's validation rows, written before the checkpoint) are left out, so no step
    appears twice. The writer starts from the file's columns, so adding a column keeps every old one."""
    path = os.path.join(logger.log_dir, "metrics.csv")
    if not os.path.isfile(path):
        return
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
        header = list(rows[0].keys()) if rows else []
    if resume_step is not None:
        rows = [r for r in rows if not r.get("step") or int(float(r["step"])) < resume_step
                or (int(float(r["step"])) == resume_step and any(r.get(k) for k in r if k.startswith("val/")))]
    writer = logger.experiment  # deletes the file (Lightning's ExperimentWriter), so it is written back now
    tmp = path + ".tmp"
    with open(tmp, "w", newline="") as f:
        out = csv.DictWriter(f, fieldnames=header)
        out.writeheader()
        out.writerows(rows)
    os.replace(tmp, path)
    writer.metrics_keys = sorted(set(header))


__all__ = ["check_run_name", "check_checkpoint", "run_version", "is_default_logging", "evaluated_run", "next_free", "find_checkpoint",
           "default_run_name", "share_run_folder", "keep_csv_history", "same_file", "check_outputs"]
