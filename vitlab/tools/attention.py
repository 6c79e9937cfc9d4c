"""Attention maps: rollout through the layers, token relevance, mapped back to input pixels, overlay PNGs.

The steps, in the order ``vitlab attention`` runs them:

1. ``model.attention_maps(x)``: every block's softmax weights (B, heads, T, T), T = P prefix + N image tokens.
   Training uses fused SDPA, which never forms the weights; the model switches its explicit path on for that
   call only (``vitlab.models.layers.explicit_attention``), so the model is left as it was.
2. :func:`attention_rollout` (Abnar & Zuidema 2020): fuse the heads, add the identity for the residual
   connection, renormalise rows, multiply through the layers -> (B, T, T).
3. :func:`token_relevance`: how much each image token feeds the pooled output -> (B, gh, gw).
4. :func:`to_pixels`: spread each token's relevance over the pixels it sees (its receptive field, exact for the
   overlapping conv and CCT tokenizers too) -> (B, H, W).
5. :func:`save_overlays`: image + heat map PNGs; :func:`main` is the command line.
"""
from __future__ import annotations

import argparse
import math
from pathlib import Path
from typing import Literal, Sequence

import torch
import torch.nn.functional as F
from torch import nn

HeadFusion = Literal["mean", "max", "min"]


# ----------------------------------------------------------------------------------------------- rollout
def attention_rollout(maps: Sequence[torch.Tensor], discard_ratio: float = 0.0,
                      head_fusion: HeadFusion = "mean") -> torch.Tensor:
    """Attention rollout (Abnar & Zuidema 2020) through all layers.

    Per layer: fuse the heads, optionally zero the weakest ``discard_ratio`` of each row's weights, add the
    identity (the residual connection), renormalise every row to sum 1; then multiply the layers, last on the
    left: ``R = A_L @ ... @ A_1``. Row i of R says how much of each input token ends up in output token i.

    Args:
        maps: One (B, heads, T, T) tensor per layer, first layer first (``model.attention_maps(x)``).
        discard_ratio: Fraction in [0, 1) of each row's smallest fused weights set to 0 before adding the
            identity (the "discard ratio" of Gildenblat's vit-explain, applied per row); 0 keeps everything.
        head_fusion: How heads are combined: their mean, max or min.

    Returns:
        (B, T, T) rollout, rows summing to 1.
    """
    return rollout_per_layer(maps, discard_ratio, head_fusion)[-1]


def rollout_per_layer(maps: Sequence[torch.Tensor], discard_ratio: float = 0.0,
                      head_fusion: HeadFusion = "mean") -> list[torch.Tensor]:
    """The rollout through the first 1, 2, ..., L layers: L tensors (B, T, T); arguments as
    :func:`attention_rollout`."""
    if not maps:
        raise ValueError("attention_rollout needs at least one layer of attention maps, got none")
    if not 0.0 <= discard_ratio < 1.0:
        raise ValueError(f"discard_ratio must be in [0, 1), got {discard_ratio!r}")
    fuse = {"mean": lambda a: a.mean(dim=1), "max": lambda a: a.amax(dim=1), "min": lambda a: a.amin(dim=1)}
    if head_fusion not in fuse:
        raise ValueError(f"head_fusion must be one of {list(fuse)}, got {head_fusion!r}")
    B, _, T, _ = maps[0].shape
    eye = torch.eye(T, dtype=torch.float32, device=maps[0].device)
    rollout, out = eye.expand(B, T, T), []
    for attn in maps:
        if attn.ndim != 4 or attn.shape[0] != B or attn.shape[-2:] != (T, T):
            raise ValueError(f"every attention map must be (B={B}, heads, {T}, {T}), got {tuple(attn.shape)}")
        a = fuse[head_fusion](attn.float())  # (B, T, T)
        k = int(T * discard_ratio)
        if k:
            weakest = a.topk(k, dim=-1, largest=False).indices  # (B, T, k)
            a = a.scatter(-1, weakest, 0.0)
        a = a + eye
        a = a / a.sum(dim=-1, keepdim=True)  # rows sum to 1
        rollout = a @ rollout  # (B, T, T)
        out.append(rollout)
    return out


def pooled_row_weights(model: nn.Module, x: torch.Tensor) -> torch.Tensor | None:
    """How the pooled output combines the image tokens' rollout rows: None for the class token, else
    (B, N, 1) weights summing to 1 over the tokens (uniform for ``avg``, the sequence-pooling softmax of
    this very input for ``seq``)."""
    if model.cfg.pool == "cls":
        return None
    P = model.num_prefix_tokens
    N = math.prod(model.patch_embed.grid(*x.shape[-2:]))
    if model.cfg.pool == "avg":
        return torch.full((x.shape[0], N, 1), 1.0 / N, device=x.device)
    with torch.no_grad():
        tokens = model.forward_features(x)[:, P:]  # (B, N, D), normalised as SeqPool sees them
        return model.seq_pool.attention(tokens).softmax(dim=1).float()  # (B, N, 1)


def _relevance_from_rollout(rollout: torch.Tensor, P: int, weights: torch.Tensor | None) -> torch.Tensor:
    """(B, T, T) rollout -> (B, N) image-token relevance of the pooled output."""
    if weights is None:
        return rollout[:, 0, P:]  # the class token's row
    return (weights * rollout[:, P:, P:]).sum(dim=1)  # weighted image-token rows


def token_relevance(model: nn.Module, x: torch.Tensor, discard_ratio: float = 0.0,
                    head_fusion: HeadFusion = "mean", per_layer: bool = False) -> torch.Tensor:
    """Relevance of each image token to the model's pooled output, from the attention rollout.

    Which rollout row(s), following what the head actually reads (``cfg.pool``):

    * ``cls``: the class token's row.
    * ``avg``: the mean of the image tokens' rows (the pooled vector is the mean of the image tokens, so its
      rollout row is the mean of theirs). A model with a class token but ``avg`` pooling uses this too,
      since its head never reads the class token.
    * ``seq``: the image tokens' rows weighted by the sequence-pooling weights softmax(Linear(x)) of this
      very input (from an ordinary forward pass), as the pooled vector is that weighted sum.

    Only the image-token columns are kept (class and register tokens have no place in the image); values are
    rollout mass, not renormalised (each map sums to at most 1).

    Args:
        model: A vitlab ``VisionTransformer``.
        x: Normalised images (B, C, H, W).
        discard_ratio, head_fusion: As :func:`attention_rollout`.
        per_layer: Return the relevance of the rollout through the first 1, 2, ..., L layers.

    Returns:
        (B, gh, gw) relevance on the token grid of ``x``; (B, L, gh, gw) with ``per_layer``.
    """
    P = model.num_prefix_tokens
    gh, gw = model.patch_embed.grid(*x.shape[-2:])
    rollouts = rollout_per_layer(model.attention_maps(x), discard_ratio, head_fusion)
    weights = pooled_row_weights(model, x)
    if not per_layer:
        rollouts = rollouts[-1:]
    rel = torch.stack([_relevance_from_rollout(r, P, weights) for r in rollouts], dim=1)  # (B, L, N)
    rel = rel.reshape(x.shape[0], -1, gh, gw)
    return rel if per_layer else rel[:, 0]


# ----------------------------------------------------------------------------------------------- pixels
def receptive_field_geometry(tokenizer: nn.Module) -> tuple[int, int, int]:
    """``(stride, receptive_field, offset)`` of a tokenizer along one image axis.

    Token i sees pixels ``[offset + i * stride, offset + i * stride + receptive_field)``. The stride and size
    are the tokenizer's own ``stride`` and ``receptive_field``; the offset comes from walking its Conv2d and
    MaxPool2d layers in order (``start -= padding * jump`` for each layer). It is 0 for patches and negative
    for padded convs: a 3x3 stride-2 padding-1 conv centres output 0 on pixel 0, so the conv stem's token 0
    sees pixels -3..3 (patch 4) and CCT-2's token 0 sees -6..6.

    Raises:
        ValueError: The walk finds no conv/pool layers or disagrees with the tokenizer's stride or
            receptive_field (a tokenizer whose layers do not run in registration order).
    """
    rf, jump, start = 1, 1, 0
    found = False
    for m in tokenizer.modules():
        if isinstance(m, (nn.Conv2d, nn.MaxPool2d, nn.AvgPool2d)):
            k, s, p, d = (_first(getattr(m, a, 1)) for a in ("kernel_size", "stride", "padding", "dilation"))
            start -= p * jump
            rf += (k - 1) * d * jump
            jump *= s
            found = True
    if not found:
        raise ValueError(f"{type(tokenizer).__name__} has no Conv2d/MaxPool2d layers to find its receptive field")
    if (jump, rf) != (tokenizer.stride, tokenizer.receptive_field):
        raise ValueError(f"{type(tokenizer).__name__}: its layers give stride {jump} and receptive field {rf}, but "
                         f"it declares stride {tokenizer.stride} and receptive_field {tokenizer.receptive_field}")
    return jump, rf, start


def _first(v) -> int:
    return int(v[0] if isinstance(v, (tuple, list)) else v)


def to_pixels(relevance: torch.Tensor, tokenizer: nn.Module, img_hw: tuple[int, int]) -> torch.Tensor:
    """Spread token relevance (B, gh, gw) over the input pixels each token sees -> (B, H, W).

    A transposed conv with a ones kernel of the receptive field's size and the tokenizer's stride adds each
    token's value to every pixel of its receptive field; the result is shifted by the tokenizer's offset
    (see :func:`receptive_field_geometry`), cropped to the image, and divided by the number of tokens that
    see each pixel. So patch tokens give exact p x p tiles and the overlapping conv-stem and CCT tokens
    give smooth maps; a pixel no token sees gets 0.

    Args:
        relevance: (B, gh, gw) or (gh, gw) per-token values.
        tokenizer: The model's tokenizer (``model.patch_embed``).
        img_hw: (H, W) of the input images.

    Returns:
        (B, H, W) per-pixel relevance (the mean over the tokens that see each pixel).
    """
    if relevance.ndim == 2:
        relevance = relevance[None]
    H, W = img_hw
    if tuple(relevance.shape[-2:]) != tuple(tokenizer.grid(H, W)):
        raise ValueError(f"relevance grid {tuple(relevance.shape[-2:])} does not match the tokenizer's grid "
                         f"{tuple(tokenizer.grid(H, W))} for {H}x{W} images")
    stride, rf, offset = receptive_field_geometry(tokenizer)
    rel = relevance.float()[:, None]  # (B, 1, gh, gw)
    ones = torch.ones(1, 1, rf, rf, dtype=rel.dtype, device=rel.device)
    spread = F.conv_transpose2d(rel, ones, stride=stride)  # (B, 1, (gh-1)s+rf, (gw-1)s+rf), [0, 0] = pixel offset
    count = F.conv_transpose2d(torch.ones_like(rel[:1]), ones, stride=stride)  # tokens seeing each pixel
    h, w = spread.shape[-2:]
    pads = (offset, W - offset - w, offset, H - offset - h)  # left, right, top, bottom; negative pads crop
    spread, count = F.pad(spread, pads), F.pad(count, pads)  # (B, 1, H, W): [0, 0] = pixel 0
    return (spread / count.clamp(min=1))[:, 0]  # (B, H, W)


def pixel_relevance(model: nn.Module, x: torch.Tensor, discard_ratio: float = 0.0,
                    head_fusion: HeadFusion = "mean", per_layer: bool = False) -> torch.Tensor:
    """:func:`token_relevance` mapped to pixels with :func:`to_pixels`: (B, C, H, W) -> (B, H, W), or
    (B, L, H, W) with ``per_layer``."""
    rel = token_relevance(model, x, discard_ratio, head_fusion, per_layer=per_layer)
    if not per_layer:
        return to_pixels(rel, model.patch_embed, tuple(x.shape[-2:]))
    B, L = rel.shape[:2]
    pix = to_pixels(rel.flatten(0, 1), model.patch_embed, tuple(x.shape[-2:]))  # (B * L, H, W)
    return pix.reshape(B, L, *pix.shape[-2:])


# ----------------------------------------------------------------------------------------------- overlays
def denormalize(images: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """Undo ``Normalize(mean, std)``: (B, C, H, W) -> (B, H, W, C) in [0, 1] for display."""
    C = images.shape[1]
    m = torch.as_tensor(_per_channel(mean, C), dtype=images.dtype).view(1, C, 1, 1)
    s = torch.as_tensor(_per_channel(std, C), dtype=images.dtype).view(1, C, 1, 1)
    return (images.detach().cpu() * s + m).clamp(0, 1).permute(0, 2, 3, 1)


def _per_channel(v: float | Sequence[float], C: int) -> list[float]:
    v = [float(v)] if isinstance(v, (int, float)) else [float(a) for a in v]
    if len(v) == 1:
        return v * C
    if len(v) != C:
        raise ValueError(f"mean/std have {len(v)} values but the images have {C} channels")
    return v


def _normalise_map(m: torch.Tensor) -> torch.Tensor:
    m = m - m.min()
    return m / m.max() if m.max() > 0 else m


def show_overlay(ax, image: torch.Tensor, heat: torch.Tensor, alpha: float = 0.5, title: str | None = None) -> None:
    """Draw an image (H, W, C) in [0, 1] with a heat map (H, W) on top, on a matplotlib axis."""
    img = image.numpy()
    ax.imshow(img[..., 0] if img.shape[-1] == 1 else img, cmap="gray", vmin=0, vmax=1)
    ax.imshow(_normalise_map(heat.float().cpu()).numpy(), cmap="jet", alpha=alpha, vmin=0, vmax=1)
    ax.set_axis_off()
    if title:
        ax.set_title(title, fontsize=8)


def save_overlays(model: nn.Module, images: torch.Tensor, out_dir: str | Path, mean: Sequence[float] | float,
                  std: Sequence[float] | float, names: Sequence[str] | None = None, per_layer: bool = False,
                  classes: Sequence[str] | None = None, discard_ratio: float = 0.0,
                  head_fusion: HeadFusion = "mean") -> list[Path]:
    """Write one PNG per image: the image, the rollout heat map over it, and the heat map alone.

    Args:
        model: A vitlab ``VisionTransformer`` (put in eval mode here).
        images: Normalised images (B, C, H, W) as the model takes them.
        out_dir: Folder for the PNGs (created).
        mean, std: The normalisation of ``images`` (one value or one per channel), to show them undone.
        names: File stems, one per image; default ``image_000``, ...
        per_layer: Also write ``<name>_layers.png``: the rollout through the first 1, 2, ..., L layers.
        classes: Class names for the predicted class in the title (default: the class index).
        discard_ratio, head_fusion: As :func:`attention_rollout`.

    Returns:
        The written paths: for each image its overlay, followed by its layer grid when ``per_layer``.
    """
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    B = images.shape[0]
    names = list(names) if names is not None else [f"image_{i:03d}" for i in range(B)]
    if len(names) != B:
        raise ValueError(f"got {len(names)} names for {B} images")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    model.eval()
    device = next(model.parameters()).device
    x = images.to(device)
    heat = pixel_relevance(model, x, discard_ratio, head_fusion, per_layer=True).cpu()  # (B, L, H, W)
    layers, heat = (heat if per_layer else None), heat[:, -1]  # all layers, the full rollout
    with torch.no_grad():
        logits = model(x).float().cpu() if model.num_classes > 0 else None
    shown = denormalize(images, mean, std)  # (B, H, W, C)

    paths = []
    for i, name in enumerate(names):
        title = ""
        if logits is not None:
            p, k = logits[i].softmax(-1).max(-1)
            label = classes[k] if classes is not None else str(int(k))
            title = f"pred {label} ({p:.2f})"
        fig, axes = plt.subplots(1, 3, figsize=(7.5, 2.8))
        img = shown[i].numpy()
        axes[0].imshow(img[..., 0] if img.shape[-1] == 1 else img, cmap="gray", vmin=0, vmax=1)
        axes[0].set_title(name, fontsize=8)
        axes[0].set_axis_off()
        show_overlay(axes[1], shown[i], heat[i], title=f"rollout {title}".strip())
        axes[2].imshow(_normalise_map(heat[i]).numpy(), cmap="jet", vmin=0, vmax=1)
        axes[2].set_title(f"{model.cfg.tokenizer} tokenizer, pool {model.cfg.pool}", fontsize=8)
        axes[2].set_axis_off()
        fig.tight_layout()
        path = out_dir / f"{name}.png"
        fig.savefig(path, dpi=100)
        plt.close(fig)
        paths.append(path)
        if layers is not None:
            L = layers.shape[1]
            cols = min(L, 6)
            rows = math.ceil(L / cols)
            fig, axes = plt.subplots(rows, cols, figsize=(1.8 * cols, 1.9 * rows), squeeze=False)
            for ax in axes.flat:
                ax.set_axis_off()
            for l in range(L):
                label = "block 1" if l == 0 else f"blocks 1-{l + 1}"
                show_overlay(axes.flat[l], shown[i], layers[i, l], title=label)
            fig.tight_layout()
            path = out_dir / f"{name}_layers.png"
            fig.savefig(path, dpi=100)
            plt.close(fig)
            paths.append(path)
    return paths


# ----------------------------------------------------------------------------------------------- loading
def load_checkpoint(path: str | Path) -> tuple[nn.Module, dict]:
    """A model from a Lightning ``.ckpt`` written by ``vitlab fit``, and the data info found with it.

    The architecture comes from the checkpoint's ``hyper_parameters`` (``preset`` plus any ``ViTConfig``
    field that is not None, as ``ImageClassifier`` takes them); the weights from ``state_dict``: the EMA copy
    (``ema.module.*``) when there is one, as validation used it, else ``model.*``. The file is read with
    ``torch.load(weights_only=True)``, so nothing in it runs.

    Returns:
        ``(model, data)``: ``data`` may hold ``mean``, ``std``, ``interpolation``, ``crop_pct`` and ``classes``: the
        checkpoint's own ``data_config`` and ``class_names`` (written by ``vitlab fit``), else what
        :func:`_data_info` finds for older checkpoints.
    """
    from vitlab.models.config import ViTConfig
    from vitlab.models.pretrained import load_state_dict_checked, upgrade_config_fields
    from vitlab.models.registry import get_config
    from vitlab.models.vit import VisionTransformer

    path = Path(path)
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        raise ValueError(f"cannot read checkpoint {path} with torch.load(weights_only=True): {err}") from None
    if not isinstance(ckpt, dict) or "state_dict" not in ckpt:
        raise ValueError(f"{path} is not a Lightning checkpoint (no 'state_dict'); for a plain weights file use "
                         f"--model PRESET --weights FILE")
    hp = dict(ckpt.get("hyper_parameters") or {})
    fields = ViTConfig.field_names()
    overrides = {k: v for k, v in upgrade_config_fields(hp, hp.get("preset")).items() if k in fields and v is not None}
    model = VisionTransformer(get_config(hp.get("preset"), **overrides))
    state = ckpt["state_dict"]
    prefix = "ema.module." if any(k.startswith("ema.module.") for k in state) else "model."
    weights = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
    if not weights:
        raise ValueError(f"{path}: state_dict has no '{prefix}*' weights of a vitlab model")
    load_state_dict_checked(model, weights, str(path))
    info = _data_info(ckpt, path, model.cfg.in_chans)
    stored = ckpt.get("data_config") or {}
    info.update({k: stored[k] for k in ("mean", "std", "interpolation", "crop_pct") if stored.get(k) is not None})
    if ckpt.get("class_names"):
        info["classes"] = list(ckpt["class_names"])
    return model, info


def _data_info(ckpt: dict, path: Path, in_chans: int) -> dict:
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

    dm = ckpt.get("datamodule_hyper_parameters") or {}
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


def _parse_value(text: str):
    """``--set`` values: ints, floats, booleans, null, comma-separated tuples and YAML mappings
    (``tokenizer_options={layers: 3}``), else the string."""
    if text.startswith("{"):
        import yaml
        return yaml.safe_load(text)
    low = text.lower()
    if low in ("true", "false"):
        return low == "true"
    if low in ("none", "null"):
        return None
    if "," in text:
        return tuple(_parse_value(t) for t in text.split(",") if t)
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    return text


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="vitlab attention",
        description="Attention-rollout overlays (image + heat map PNGs) for image files and a trained model.")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--checkpoint", help="Lightning .ckpt written by `vitlab fit`")
    src.add_argument("--model", help="preset name (vitlab.list_models()); with --set and --weights")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="ViTConfig override for --model, repeatable (e.g. --set tokenizer=conv)")
    p.add_argument("--weights", help="weights file/folder for --model (vitlab.create_model(pretrained=...))")
    imgs = p.add_mutually_exclusive_group(required=True)
    imgs.add_argument("--images", nargs="+", help="image files")
    imgs.add_argument("--image-dir", help="folder of image files (not recursive)")
    p.add_argument("--out", default="attention", help="output folder for the PNGs (default: attention)")
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

    args = build_parser().parse_args(argv)
    if args.checkpoint:
        if args.set or args.weights:
            raise SystemExit("--set and --weights go with --model, not --checkpoint")
        model, info = load_checkpoint(args.checkpoint)
    else:
        from vitlab.models.registry import create_model
        overrides = {}
        for item in args.set:
            key, eq, value = item.partition("=")
            if not eq:
                raise SystemExit(f"--set expects KEY=VALUE, got {item!r}")
            overrides[key.strip()] = _parse_value(value.strip())
        model, info = create_model(args.model, pretrained=args.weights, **overrides), {}
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
    return list(values_for_channels(tuple(v), C)) if len(v) == 3 and C == 1 else _per_channel(v, C)


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
