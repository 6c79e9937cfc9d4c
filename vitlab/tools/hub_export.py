"""``vitlab export-hub``: a trained run's checkpoint as a Hugging Face Hub folder, optionally pushed.

The folder is timm's hub layout (config.json with ``pretrained_cfg``, model.safetensors) plus a model card with the
run's test metrics and the commands that made it (see ``vitlab.models.hub``). The data config and class names
come from the checkpoint when it stores them, else from the preset's timm ``pretrained_cfg``, else defaults; the
card says which.

    vitlab export-hub runs/fm/version_0/checkpoints/last.ckpt hub/fm-micro
    vitlab export-hub runs/fm/version_0/checkpoints/last.ckpt hub/fm-micro --overwrite --push my-org/fm-micro
"""
from __future__ import annotations

import argparse
import shlex
from pathlib import Path
from typing import Any, Optional

import yaml

from vitlab.models.checkpoint import TRAINING_FIELDS, load_checkpoint
from vitlab.models.config import ViTConfig
from vitlab.run_folder import same_file
from vitlab.models.hub import CARD, CONFIG, WEIGHTS, push_to_hub, save_hub_folder


def _preset_data_config(preset: Optional[str]) -> Optional[dict[str, Any]]:
    """The data config timm has registered for ``vitlab_<preset>``, or None."""
    from timm.models import get_pretrained_cfg

    try:
        cfg = get_pretrained_cfg(f"vitlab_{preset}") if preset else None
    except Exception:  # unknown to timm's registry
        return None
    return cfg.to_dict() if cfg is not None and cfg.mean else None


def _test_runs(ckpt: Path) -> list[Path]:
    """Folders that hold results of ``ckpt``, newest first: the run's ``test``, ``test_1``, ... (where ``vitlab
    test`` writes), the versions of the same run whose config.yaml names it as ``ckpt_path`` (runs made before
    evaluations went into the run folder), then the fit's own folder."""
    run = ckpt.parent.parent
    found = sorted(run.glob("test*/metrics.csv"), key=lambda p: p.stat().st_mtime, reverse=True)
    found = [p.parent for p in found if _names(p.parent, ckpt)]
    versions = [p for p in run.parent.glob("version_*") if p.name[len("version_"):].isdigit()]
    for folder in sorted(versions, key=lambda p: -int(p.name[len("version_"):])):
        if folder != run and _names(folder, ckpt):
            found.append(folder)
    return found + [run]


def _names(folder: Path, ckpt: Path) -> bool:
    """Whether ``folder``'s config.yaml ran on ``ckpt`` (its ``ckpt_path``)."""
    try:
        given = (yaml.safe_load((folder / "config.yaml").read_text()) or {}).get("ckpt_path")
    except (OSError, yaml.YAMLError, AttributeError):
        return False
    return bool(given) and Path(given).resolve() == ckpt.resolve()


def find_test_metrics(ckpt: Path) -> tuple[dict[str, float], Optional[Path]]:
    """The ``test/*`` metrics logged for ``ckpt`` (Lightning's CSVLogger metrics.csv) and the folder they are in."""
    from vitlab.training.callbacks import read_epoch_metrics

    for folder in _test_runs(ckpt):
        csv = folder / "metrics.csv"
        if not csv.is_file():
            continue
        series = read_epoch_metrics(str(csv))
        metrics = {k: v[max(v)] for k, v in sorted(series.items()) if k.startswith("test/") and v}
        if metrics:
            return metrics, folder
    return {}, None


def export(ckpt: str | Path, out: str | Path, *, overwrite: bool = False, ema: bool = True,
           command: Optional[str] = None, repo_id: Optional[str] = None) -> Path:
    """Write the hub folder of a vitlab ``.ckpt``; returns the folder."""
    ckpt, out = Path(ckpt), Path(out)
    if not ckpt.is_file():
        raise ValueError(f"checkpoint {str(ckpt)!r} does not exist")
    written = [out] + [out / name for name in (WEIGHTS, CONFIG, CARD)]
    if any(same_file(ckpt, path) for path in written):  # even with --overwrite: the input would be lost
        raise ValueError(f"the output {out} would replace the checkpoint {ckpt} it is made from: choose another "
                         f"output folder")
    if out.exists() and (not out.is_dir() or any(out.iterdir())) and not overwrite:
        raise ValueError(f"{out} exists and is not empty; pass --overwrite to replace its files")
    # torch.load(weights_only=True): nothing in the file runs; the training-only fields (dropout, ...) at defaults
    loaded = load_checkpoint(ckpt, ema=ema, overrides={k: getattr(ViTConfig(), k) for k in TRAINING_FIELDS})
    model, preset = loaded.model, loaded.preset
    notes = []
    data_config = loaded.data_config
    if data_config:
        notes.append("Data config: stored in the checkpoint (what training and test used).")
    elif (data_config := _preset_data_config(preset)) is not None:
        notes.append(f"Data config: the checkpoint stores none; the preset's (vitlab_{preset}).")
    else:
        notes.append("Data config: the checkpoint stores none; defaults (bicubic, crop 1.0, mean/std 0.5).")
    C = model.cfg.in_chans
    if data_config and data_config.get("mean") and len(data_config["mean"]) != C:  # e.g. RGB statistics, gray model
        from vitlab.data.stats import stats_for_channels
        mean, std = stats_for_channels(tuple(data_config["mean"]), tuple(data_config["std"]), C)
        data_config = {**data_config, "mean": list(mean), "std": list(std)}
    class_names = loaded.class_names
    if not class_names:
        notes.append("Class names: the checkpoint stores none.")
    metrics, test_run = find_test_metrics(ckpt)
    notes.append(f"Test metrics: from {test_run / 'metrics.csv'}." if metrics else
                 f"Test metrics: none found; run `vitlab test -c {ckpt.parent.parent / 'config.yaml'} "
                 f"--ckpt_path {ckpt}` first.")
    fit_config = ckpt.parent.parent / "config.yaml"
    lines = []
    if fit_config.is_file():
        lines.append(f"vitlab fit -c {fit_config}  # the run's resolved config, below")
    if test_run is not None and test_run != ckpt.parent.parent:
        lines.append(f"vitlab test -c {test_run / 'config.yaml'}")
    if command:
        lines.append(command)
    return save_hub_folder(model, out, data_config=data_config, class_names=class_names, metrics=metrics,
                           command="\n".join(lines) or None, overwrite=overwrite, preset=preset,
                           run_config=fit_config.read_text() if fit_config.is_file() else None, notes=notes,
                           repo_id=repo_id)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="vitlab export-hub", description="Write a trained vitlab checkpoint as a "
                                "Hugging Face Hub folder (timm's layout + a model card); --push uploads it.")
    p.add_argument("checkpoint", help="a .ckpt written by `vitlab fit`")
    p.add_argument("out", help="output folder (created; must be empty unless --overwrite)")
    p.add_argument("--push", metavar="ORG/NAME", help="upload the folder to this hub repository (created if missing)")
    p.add_argument("--private", action="store_true", help="create the hub repository private")
    p.add_argument("--overwrite", action="store_true", help="replace the files of an existing output folder")
    p.add_argument("--no-ema", action="store_true", help="export the trained weights, not their EMA copy")
    return p


def main(argv: list[str] | None = None) -> int:
    """``vitlab export-hub``; returns the exit code (2: a bad argument, 1: the hub refused or was unreachable)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    command = "vitlab export-hub " + " ".join(shlex.quote(a) for a in (argv or []))
    try:
        folder = export(args.checkpoint, args.out, overwrite=args.overwrite, ema=not args.no_ema, command=command,
                        repo_id=args.push)
    except (ValueError, FileNotFoundError) as err:
        parser.exit(2, f"vitlab export-hub: error: {' '.join(str(err).split())}\n")
    print(f"wrote {folder}: config.json, model.safetensors, README.md")
    if args.push:
        try:
            url = push_to_hub(folder, args.push, private=args.private)
        except ValueError as err:
            parser.exit(1, f"vitlab export-hub: error: {err}\n")
        print(f"pushed to {url}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
