"""ONNX export (``vitlab export``): dynamic batch and image size for every tokenizer and pooling.

The graph comes from ``torch.export`` (the dynamo ONNX exporter, opset 18), so shapes stay symbolic: the token
grid is computed from the input's height and width inside the graph, and a learned position table is resampled
(bicubic, antialiased, as timm's ``resample_abs_pos_embed``) to that grid in the graph too. ``verify_onnx`` runs
the file with onnxruntime against the eager model. The file's ``metadata_props`` hold the data config (input size,
mean, std, interpolation, crop_pct) and the class names of the checkpoint or weights, as JSON values.

    vitlab export --model vit_micro_patch4_28 --weights model.safetensors --out model.onnx
    vitlab export --checkpoint runs/fashion_mnist/version_0/checkpoints/last.ckpt --out model.onnx
    vitlab export --checkpoint ... --out model.onnx --overwrite   # replace model.onnx (never the checkpoint)
"""
from __future__ import annotations

import argparse
import contextlib
import io
import warnings
from pathlib import Path
from typing import Any, Sequence

import torch
from torch import nn

from vitlab.models.checkpoint import load_checkpoint
from vitlab.models.config import ViTConfig
from vitlab.models.overrides import add_set_argument, parse_overrides
from vitlab.models.registry import create_model
from vitlab.models.vit import VisionTransformer
from vitlab.run_folder import check_outputs

DYNAMIC_AXES = {0: "batch", 2: "height", 3: "width"}


class OnnxExportError(RuntimeError):
    """The model could not be exported with dynamic shapes; the message says why and what to change."""


# what the export needs beyond vitlab's own dependencies (the extra vitlab[onnx]); onnxruntime only to verify
ONNX_PACKAGES = ("onnx", "onnxscript", "onnxruntime")
INSTALL = "pip install onnx onnxscript onnxruntime"


def missing_packages(verify: bool = True) -> list[str]:
    """The packages of :data:`ONNX_PACKAGES` that do not import (``onnxruntime`` only when ``verify``)."""
    import importlib

    missing = []
    for name in ONNX_PACKAGES if verify else ONNX_PACKAGES[:2]:
        try:
            importlib.import_module(name)
        except ImportError:
            missing.append(name)
    return missing


def missing_message(missing: Sequence[str]) -> str:
    """One line naming the missing packages and the command that installs them."""
    names = ", ".join(repr(m) for m in missing)
    return (f"ONNX export needs the package{'s' if len(missing) > 1 else ''} {names}, not installed: {INSTALL} "
            f"(or pip install -e \".[onnx]\" in a vitlab checkout)")


# ----------------------------------------------------------------------------------------------- export
def export_onnx(model: nn.Module, path: str | Path, img_size: int | None = None, in_chans: int | None = None,
                opset: int = 18, batch_size: int = 2) -> Path:
    """Export ``model`` to ONNX with dynamic batch, height and width; returns the path.

    Args:
        model: A vitlab ``VisionTransformer`` (or any module taking ``(B, C, H, W)`` images).
        path: Output ``.onnx`` file (large models also write ``<path>.data``).
        img_size: Side of the example input; default the model's ``cfg.img_size``.
        in_chans: Channels of the example input; default the model's ``cfg.in_chans``.
        opset: ONNX opset; 18 or newer keeps antialiased bicubic resampling of learned positions in the graph.
        batch_size: Batch of the example input (not 0 or 1, which torch.export would specialise).

    Raises:
        OnnxExportError: the exporter failed, or the graph came out with a fixed batch, height or width.
    """
    cfg: ViTConfig | None = getattr(model, "cfg", None)
    img_size = img_size or (cfg.img_size if cfg else None)
    in_chans = in_chans or (cfg.in_chans if cfg else None)
    if not img_size or not in_chans:
        raise ValueError("img_size and in_chans are needed for a model without a vitlab cfg")
    if batch_size < 2:
        raise ValueError(f"batch_size must be >= 2 (torch.export specialises sizes 0 and 1), got {batch_size}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    param = next(model.parameters(), None)
    example = torch.randn(batch_size, in_chans, img_size, img_size,
                          device=param.device if param is not None else "cpu")
    auto = torch.export.Dim.AUTO
    was_training = model.training
    model.eval()
    log = io.StringIO()
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(log):
            warnings.simplefilter("ignore")
            program = torch.onnx.export(
                model, (example,), dynamo=True, opset_version=opset, verbose=False,
                input_names=["images"], output_names=["logits"],
                dynamic_shapes=({0: auto, 2: auto, 3: auto},))
            program.save(str(path))
    except ImportError as err:  # onnxscript (torch's exporter imports it): not the model's fault
        raise OnnxExportError(missing_message([err.name or str(err)])) from err
    except Exception as err:
        first = (str(err).strip().splitlines() or [type(err).__name__])[0]
        raise OnnxExportError(
            f"could not export {type(model).__name__} to ONNX: {type(err).__name__}: {first[:500]}. "
            f"torch.export needs a forward without Python branches on tensor values or on shapes it cannot "
            f"keep symbolic.") from err
    finally:
        model.train(was_training)
    problem = _fixed_axes(path) or _run_elsewhere(path, batch_size + 1, in_chans, img_size + 2 * _stride(model))
    if problem:
        path.unlink(missing_ok=True)
        Path(f"{path}.data").unlink(missing_ok=True)
        raise OnnxExportError(
            f"the ONNX graph of {type(model).__name__} only works at the example input's size: {problem}. A Python "
            f"branch on an input size (e.g. `if H == 224`, `int(x.shape[-1])`) in forward specialised it; make the "
            f"shape code symbolic (see timm.layers.is_exporting)")
    return path


def _stride(model: nn.Module) -> int:
    """Pixels per token of a vitlab tokenizer (another valid image size is a multiple of it away), else 8."""
    return int(getattr(getattr(model, "patch_embed", None), "stride", 8))


def _fixed_axes(path: Path) -> str:
    """Which dynamic axes came out as fixed numbers in the graph's input ('' when none)."""
    import onnx

    dims = onnx.load(str(path), load_external_data=False).graph.input[0].type.tensor_type.shape.dim
    fixed = [f"{name} = {dims[axis].dim_value}" for axis, name in DYNAMIC_AXES.items()
             if dims[axis].HasField("dim_value")]
    return f"fixed {', '.join(fixed)}" if fixed else ""


def _run_elsewhere(path: Path, batch: int, in_chans: int, side: int) -> str:
    """Run the graph with onnxruntime at another batch and image size; '' when it works, else why not.

    torch.export keeps a specialised shape symbolic in the graph's input and drops the guard, so a fixed size
    shows only when the graph runs at another one.
    """
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.log_severity_level = 4  # the failure is reported in the error below, not logged
    session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    x = torch.randn(batch, in_chans, side, side).numpy()
    try:
        out = session.run(None, {session.get_inputs()[0].name: x})[0]
    except Exception as err:
        return f"at input {tuple(x.shape)} onnxruntime fails: {(str(err).splitlines() or [''])[0][:300]}"
    return "" if out.shape[0] == batch else f"batch {batch} gave outputs of batch {out.shape[0]}"


def verify_onnx(path: str | Path, model: nn.Module, shapes: Sequence[tuple[int, int]] = ((1, 0), (3, 0)),
                atol: float = 1e-4, seed: int = 0, mean: Sequence[float] | None = None,
                std: Sequence[float] | None = None) -> float:
    """Largest |onnxruntime - eager| over random inputs of each ``(batch, image side)``; raises if > ``atol``.

    An image side of 0 means the model's ``cfg.img_size``. With ``mean``/``std`` the inputs are random images in
    [0, 1] normalised by them (what the model is fed); without, standard normal noise.
    """
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    cfg = getattr(model, "cfg", None)
    g = torch.Generator().manual_seed(seed)
    was_training = model.training
    model.eval()
    worst = 0.0
    try:
        for batch, side in shapes:
            side = side or cfg.img_size
            C = cfg.in_chans if cfg else 3
            if mean is not None and std is not None:
                m, s = (torch.tensor(v, dtype=torch.float32).view(1, -1, 1, 1) for v in (mean, std))
                x = (torch.rand(batch, C, side, side, generator=g) - m) / s
            else:
                x = torch.randn(batch, C, side, side, generator=g)
            with torch.no_grad():
                ref = model.to("cpu")(x).float()
            out = torch.from_numpy(session.run(None, {name: x.numpy()})[0])
            if out.shape != ref.shape:
                raise AssertionError(f"onnxruntime gave shape {tuple(out.shape)}, eager {tuple(ref.shape)} "
                                     f"for input {tuple(x.shape)}")
            diff = float((out - ref).abs().max())
            if diff > atol:
                raise AssertionError(f"onnxruntime and eager differ by {diff:.3g} > {atol} for input "
                                     f"{tuple(x.shape)}")
            worst = max(worst, diff)
    finally:
        model.train(was_training)
    return worst


def add_metadata(path: str | Path, data_config: dict[str, Any] | None, class_names: Sequence[str] | None) -> dict:
    """Store the data config (``input_size``, ``mean``, ``std``, ``interpolation``, ``crop_pct``) and the class
    names in the ONNX file's ``metadata_props``, each value as JSON, so a runtime user normalises as training did.
    Returns what was stored."""
    import json

    import onnx

    props = {k: json.dumps(list(v) if isinstance(v, tuple) else v) for k, v in (data_config or {}).items()}
    if class_names:
        props["class_names"] = json.dumps(list(class_names))
    if props:
        proto = onnx.load(str(path), load_external_data=False)  # external weights stay where they are
        for key, value in props.items():
            entry = proto.metadata_props.add()
            entry.key, entry.value = key, value
        onnx.save(proto, str(path))
    return props


# ----------------------------------------------------------------------------------------------- loading
def build_model(checkpoint: str | None = None, model: str | None = None, overrides: dict[str, Any] | None = None,
                weights: str | None = None, ema: bool = True) -> VisionTransformer:
    """A model from a Lightning checkpoint, or from a preset + overrides (+ a weights file)."""
    if checkpoint:
        if Path(checkpoint).suffix == ".ckpt":  # architecture and weights from the checkpoint
            return load_checkpoint(checkpoint, ema=ema, overrides=overrides).model
        weights = weights or checkpoint  # a plain weights file: the architecture comes from --model/--set
    return create_model(model, pretrained=weights, **(overrides or {})).eval()


# ----------------------------------------------------------------------------------------------- CLI
def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="vitlab export", description="Export a vitlab model to ONNX with dynamic "
                                "batch and image size, and check it against eager with onnxruntime.")
    src = p.add_argument_group("model")
    src.add_argument("--checkpoint", help="Lightning .ckpt of `vitlab fit` (architecture from its "
                     "hyper_parameters), or a weights file (.safetensors/.pth) for --model")
    src.add_argument("--model", help="preset name (vitlab.list_models())")
    add_set_argument(src)
    src.add_argument("--weights", help="weights file or folder for --model (see vitlab.models.pretrained)")
    src.add_argument("--no-ema", action="store_true", help="export the trained weights, not the EMA copy")
    p.add_argument("--out", required=True, help="output .onnx file (never the input; an existing one only with "
                   "--overwrite)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out file")
    p.add_argument("--img-size", type=int, help="side of the example input (default: the model's img_size)")
    p.add_argument("--opset", type=int, default=18)
    p.add_argument("--no-verify", action="store_true", help="skip the onnxruntime check")
    return p


def main(argv: list[str] | None = None) -> int:
    """``vitlab export``; returns the exit code."""
    from vitlab.data.stats import values_for_channels
    from vitlab.models.data_config import class_names_of, data_config_of

    parser = build_parser()
    args = parser.parse_args(argv)
    try:  # before anything is built: nothing is written over a file that was there
        check_outputs([args.out], [args.checkpoint, args.weights], args.overwrite)
    except ValueError as err:
        parser.error(f"--out: {err}")
    missing = missing_packages(verify=not args.no_verify)
    if missing:  # before the model is built: say what to install, never blame the model
        parser.exit(2, f"vitlab export: error: {missing_message(missing)}\n")
    model = build_model(args.checkpoint, args.model, parse_overrides(args.set), args.weights, ema=not args.no_ema)
    path = export_onnx(model, args.out, img_size=args.img_size, opset=args.opset)
    source = args.checkpoint or args.weights  # a vitlab .ckpt, or weights with a config.json beside them
    data_config = data_config_of(source)
    if data_config:  # the model's channels (a gray model from RGB weights: luma-weighted statistics)
        C = model.cfg.in_chans
        data_config.update(mean=values_for_channels(data_config["mean"], C),
                           std=values_for_channels(data_config["std"], C))
        data_config["input_size"] = [C, *data_config["input_size"][1:]]
    stored = add_metadata(path, data_config, class_names_of(source))
    print(f"wrote {path} (dynamic batch, height, width; opset {args.opset}"
          + (f"; metadata: {', '.join(stored)})" if stored else "; no data config found for its metadata)"))
    if not args.no_verify:
        side = model.cfg.img_size
        other = side + 2 * model.patch_embed.stride  # another grid: positions resampled in the graph
        mean, std = (data_config["mean"], data_config["std"]) if data_config else (None, None)
        diff = verify_onnx(path, model, shapes=((1, side), (3, side), (2, other)), mean=mean, std=std)
        print(f"onnxruntime matches eager at batch 1 and 3, {side} and {other} px: max |diff| = {diff:.2e}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
