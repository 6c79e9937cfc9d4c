"""``vitlab attention``: attention-rollout overlays (image + heat map PNGs) for image files and a trained model.

The algorithms live in ``vitlab.interpret`` (rollout, token relevance, receptive fields, overlays); this command
loads the model (``vitlab.models.checkpoint`` for a ``.ckpt``, a preset + ``--set`` + ``--weights`` otherwise),
finds the normalisation and class names, reads the images and writes the PNGs.

    vitlab attention --checkpoint runs/fm/version_0/checkpoints/last.ckpt --images a.png b.png --per-layer
    vitlab attention --model vit_micro_conv4_28 --weights model.safetensors --image-dir imgs/ --out maps/
"""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import Sequence

import torch
from torch import nn

from vitlab.interpret import save_overlays
from vitlab.interpret.overlay import per_channel
from vitlab.models import checkpoint
from vitlab.models.overrides import add_set_argument, parse_overrides
from vitlab.run_folder import check_outputs


def load_checkpoint(path: str | Path) -> tuple[nn.Module, dict]:
    """A model from a ``.ckpt`` written by ``vitlab fit`` (``vitlab.models.checkpoint.load_checkpoint``: the EMA
    weights when there are any), and the data info found with it.

    Returns:
        ``(model, data)``: ``data`` may hold ``mean``, ``std``, ``interpolation``, ``crop_pct`` and ``classes``: the
        checkpoint's own ``data_config`` and ``class_names`` (written by ``vitlab fit``), else what
        :func:`_data_info` finds for older checkpoints.
    """
    path = Path(path)
    loaded = checkpoint.load_checkpoint(path)
    info = _data_info(loaded.datamodule_hparams, path, loaded.config.in_chans)
    stored = loaded.data_config or {}
    info.update({k: stored[k] for k in ("mean", "std", "interpolation", "crop_pct") if stored.get(k) is not None})
    if loaded.class_names:
        info["classes"] = loaded.class_names
    return loaded.model, info


def _data_info(dm: dict, path: Path, in_chans: int) -> dict:
    """Normalisation and class names of the data a checkpoint was trained on, where they can be found.

    The data module's class comes from the checkpoint's ``datamodule_hyper_parameters["_class_path"]``
    (LightningCLI stores it), else from the run folder's ``config.yaml`` (``data.class_path``; the checkpoint in
    ``runs/<name>/version_N/checkpoints/``). Only classes of ``vitlab.data`` are looked up (nothing named in a
    file gets imported); their native statistics, converted to ``in_chans``, and their class names (where they
    are fixed, not read from a folder) are returned. ``mean``/``std``/``classes`` stored in the data module's
    hyper-parameters win. Returns ``{}`` when nothing is found.
    """
    import vitlab.data
    from vitlab.data.stats import stats_for_channels

    class_path = dm.get("_class_path")
    if not class_path:
        for cfg_path in (path.parent.parent / "config.yaml", path.parent / "config.yaml"):
            if cfg_path.is_file():
                try:
                    import yaml
                    class_path = ((yaml.safe_load(cfg_path.read_text()) or {}).get("data") or {}).get("class_path")
                except Exception:  # unreadable or foreign config: no data info
                    pass
                break
    info: dict = {}
    cls = getattr(vitlab.data, str(class_path or "").rpartition(".")[2], None)
    if isinstance(cls, type) and issubclass(cls, vitlab.data.ImageDataModule) and cls.native_mean:
        info["mean"], info["std"] = stats_for_channels(cls.native_mean, cls.native_std, in_chans)
        try:
            info["classes"] = list(cls.classes.fget(None))
        except Exception:  # classes read from the data folder at runtime: leave them out
            pass
    info.update({k: dm[k] for k in ("mean", "std", "classes") if dm.get(k) is not None})
    return info


def read_images(paths: Sequence[str | Path], img_size: int, in_chans: int, mean: Sequence[float],
                std: Sequence[float], interpolation: str = "bilinear", crop_pct: float = 1.0) -> torch.Tensor:
    """Image files -> normalised (B, in_chans, img_size, img_size): short side resized to ``img_size / crop_pct``
    with ``interpolation``, centre-cropped."""
    from vitlab.data.image_io import load_image
    from vitlab.data.transforms import small_image_predict_transform

    transform = small_image_predict_transform(native_chans=in_chans, img_size=img_size, in_chans=in_chans,
                                              mean=tuple(mean), std=tuple(std), interpolation=interpolation,
                                              crop_pct=crop_pct)
    mode = "L" if in_chans == 1 else "RGB"
    return torch.stack([transform(load_image(p, mode)) for p in paths])


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="vitlab attention",
        description="Attention-rollout overlays (image + heat map PNGs) for image files and a trained model.")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--checkpoint", help="Lightning .ckpt written by `vitlab fit`")
    src.add_argument("--model", help="preset name (vitlab.list_models()); with --set and --weights")
    add_set_argument(p)  # with --model
    p.add_argument("--weights", help="weights file/folder for --model (vitlab.create_model(pretrained=...))")
    imgs = p.add_mutually_exclusive_group(required=True)
    imgs.add_argument("--images", nargs="+", help="image files")
    imgs.add_argument("--image-dir", help="folder of image files (not recursive)")
    p.add_argument("--out", default="attention", help="output folder for the PNGs (default: attention); a PNG "
                   "already there is replaced only with --overwrite, an input image never")
    p.add_argument("--overwrite", action="store_true", help="replace PNGs of an earlier run in --out")
    p.add_argument("--mean", type=float, nargs="+", help="normalisation mean (default: from the checkpoint, "
                                                          "else 0.5)")
    p.add_argument("--std", type=float, nargs="+", help="normalisation std (default: as --mean)")
    p.add_argument("--discard-ratio", type=float, default=0.0, help="rollout: weakest fraction of weights dropped")
    p.add_argument("--head-fusion", choices=["mean", "max", "min"], default="mean")
    p.add_argument("--per-layer", action="store_true", help="also write <name>_layers.png (rollout per depth)")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--device", default="cpu", help="torch device (default: cpu)")
    return p


def main(argv: list[str] | None = None) -> int:
    """``vitlab attention``: load a model, read images, write overlay PNGs; prints the written paths."""
    from vitlab.data.image_io import IMG_EXTENSIONS

    parser = build_parser()
    args = parser.parse_args(argv)
    if args.checkpoint:
        if args.set or args.weights:
            raise SystemExit("--set and --weights go with --model, not --checkpoint")
        model, info = load_checkpoint(args.checkpoint)
    else:
        from vitlab.models.registry import create_model
        model, info = create_model(args.model, pretrained=args.weights, **parse_overrides(args.set)), {}
        if not args.weights:
            print("warning: no --weights given, the model is randomly initialised")
        else:
            from vitlab.models.data_config import class_names_of, data_config_of
            info = dict(data_config_of(args.weights) or {})
            info["classes"] = class_names_of(args.weights)
    C, size = model.cfg.in_chans, model.cfg.img_size
    mean = args.mean or info.get("mean") or (0.5,)
    std = args.std or info.get("std") or (0.5,)
    mean, std = _channels(mean, C), _channels(std, C)
    interpolation, crop_pct = info.get("interpolation", "bilinear"), info.get("crop_pct", 1.0)
    if interpolation not in ("nearest", "bilinear", "bicubic"):  # PIL-only (lanczos, box, hamming): the closest
        interpolation = "bicubic"

    if args.image_dir:
        files = sorted(f for f in Path(args.image_dir).iterdir() if f.suffix.lower() in IMG_EXTENSIONS)
        if not files:
            raise SystemExit(f"no image files ({', '.join(IMG_EXTENSIONS)}) in {args.image_dir}")
    else:
        files = [Path(f) for f in args.images]
    stems = _unique_stems(files)
    suffixes = (".png", "_layers.png") if args.per_layer else (".png",)
    try:  # before any PNG is written: an earlier run's maps, or an input image, are never written over silently
        check_outputs([Path(args.out) / f"{stem}{suffix}" for stem in stems for suffix in suffixes], files,
                      args.overwrite)
    except ValueError as err:
        parser.error(f"--out: {err}")
    model = model.to(args.device).eval()
    written = []
    for i in range(0, len(files), args.batch_size):
        batch = read_images(files[i:i + args.batch_size], size, C, mean, std, interpolation, crop_pct)
        written += save_overlays(model, batch, args.out, mean, std, names=stems[i:i + args.batch_size],
                                 per_layer=args.per_layer, classes=info.get("classes"),
                                 discard_ratio=args.discard_ratio, head_fusion=args.head_fusion)
    for path in written:
        print(path)
    return 0


def _channels(v: Sequence[float], C: int) -> list[float]:
    """Statistics for ``C`` channels: one value repeated, RGB -> gray by luma (as the data modules convert)."""
    from vitlab.data.stats import values_for_channels

    v = [float(a) for a in v]
    return list(values_for_channels(tuple(v), C)) if len(v) == 3 and C == 1 else per_channel(v, C)


def _unique_stems(files: Sequence[Path]) -> list[str]:
    """File stems, made unique (``a``, ``a_1``) so two ``a.png`` from different folders don't overwrite."""
    seen: dict[str, int] = {}
    out = []
    for f in files:
        n = seen.get(f.stem, 0)
        seen[f.stem] = n + 1
        out.append(f.stem if n == 0 else f"{f.stem}_{n}")
    return out


if __name__ == "__main__":
    raise SystemExit(main())
