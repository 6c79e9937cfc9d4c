"""Overlay pictures: an image with its attention-rollout heat map, on a matplotlib axis or as PNG files."""
from __future__ import annotations

import math
from pathlib import Path
from typing import Sequence

import torch
from torch import nn

from .rollout import HeadFusion, pixel_relevance


def denormalize(images: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """Undo ``Normalize(mean, std)``: (B, C, H, W) -> (B, H, W, C) in [0, 1] for display."""
    C = images.shape[1]
    m = torch.as_tensor(per_channel(mean, C), dtype=images.dtype).view(1, C, 1, 1)
    s = torch.as_tensor(per_channel(std, C), dtype=images.dtype).view(1, C, 1, 1)
    return (images.detach().cpu() * s + m).clamp(0, 1).permute(0, 2, 3, 1)


def per_channel(v: float | Sequence[float], C: int) -> list[float]:
    """One value per channel: a single value repeated ``C`` times, else exactly ``C`` values."""
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
