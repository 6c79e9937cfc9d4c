"""The grid `vitlab compare` runs (train sizes x optimizer/lr x tokenizers x seeds), the FLOPs-matched configs, and
the budget printed before anything trains (each tokenizer's training speed measured on this machine first)."""
from __future__ import annotations

import argparse
import statistics
import time
from dataclasses import dataclass
from typing import Any, Optional

import torch

from vitlab.models.config import ViTConfig
from vitlab.models.flops import forward_macs, num_tokens
from vitlab.models.tokenizers import get_tokenizer
from vitlab.runtime import cpu_label

DATA = {  # name -> (data module class path, default preset of the patch baseline, training images)
    "fashion_mnist": ("vitlab.data.FashionMNISTDataModule", "vit_micro_patch4_28", 54_000),
    "cifar10": ("vitlab.data.CIFAR10DataModule", "vit_lite_7_patch4_32", 45_000),
    "cifar100": ("vitlab.data.CIFAR100DataModule", "vit_lite_7_patch4_32", 45_000),
    "digits": ("vitlab.data.DigitsDataModule", "vit_micro_patch4_28", 1_617),
}


def matched_configs(base: ViTConfig, tokenizers: list[str], match: str) -> dict[str, ViTConfig]:
    """One config per tokenizer: same width, heads and token grid; with ``match='flops'`` fewer blocks for the
    tokenizers that cost more, until their forward FLOPs are at most the patch model's."""
    if match not in ("flops", "width"):
        raise ValueError(f"unknown match {match!r}; choose 'flops' or 'width'")
    patch = base.replace(tokenizer="patch")
    out = {}
    for tok in tokenizers:
        cfg = patch.replace(tokenizer=tok, tokenizer_options=get_tokenizer(tok).matching_options(patch))
        if num_tokens(cfg) != num_tokens(patch):
            raise ValueError(f"tokenizer {tok!r} makes {num_tokens(cfg)} tokens, the patch model {num_tokens(patch)}: "
                             f"its matching_options do not reach the patch grid")
        if match == "flops":
            while cfg.depth > 1 and forward_macs(cfg) > forward_macs(patch):
                cfg = cfg.replace(depth=cfg.depth - 1)
        out[tok] = cfg
    return out


@dataclass(frozen=True)
class RunSpec:
    """One training run of the grid. ``size`` None = the whole training split."""
    size: Optional[int]
    epochs: int
    optimizer: str
    lr: float
    tokenizer: str
    seed: int

    @property
    def run_id(self) -> str:
        """The file name of its results: ``n6000_e30_adamw_lr0.001_conv_seed2``."""
        return f"n{self.size or 'all'}_e{self.epochs}_{self.optimizer}_lr{self.lr:g}_{self.tokenizer}_seed{self.seed}"


def recipe(args: argparse.Namespace) -> dict[str, Any]:
    """The settings a run id does not name but its result depends on; kept in each run's JSON."""
    return {"weight_decay": args.weight_decay, "warmup_epochs": args.warmup_epochs,
            "label_smoothing": args.label_smoothing, "eval_subset": args.eval_subset}


def parse_sweep(items: list[str]) -> list[tuple[str, float]]:
    """``["adamw=3e-4,1e-3", "sgd=0.1"]`` -> ``[("adamw", 3e-4), ("adamw", 1e-3), ("sgd", 0.1)]``."""
    from timm.optim import list_optimizers

    out = []
    for item in items:
        name, sep, lrs = item.partition("=")
        if not sep or not lrs:
            raise ValueError(f"--sweep {item!r}: write OPTIMIZER=LR[,LR...], e.g. adamw=3e-4,1e-3")
        if name not in list_optimizers():
            raise ValueError(f"--sweep {item!r}: {name!r} is not one of timm's optimizers")
        for lr in lrs.split(","):
            try:
                value = float(lr)
            except ValueError:
                raise ValueError(f"--sweep {item!r}: learning rate {lr!r} is not a number") from None
            if not value > 0:
                raise ValueError(f"--sweep {item!r}: learning rate {lr!r} must be > 0")
            out.append((name, value))
    return out


def parse_epochs(items: list[str]) -> list[list[int]]:
    """``["60,150", "30"]`` -> ``[[60, 150], [30]]``: per train size, one schedule or several (the schedule check:
    does a longer schedule still raise the end point?)."""
    out = []
    for item in items:
        try:
            values = [int(e) for e in str(item).split(",")]
        except ValueError:
            raise ValueError(f"--epochs {item!r}: write EPOCHS or EPOCHS,EPOCHS (whole numbers), e.g. 60,150") from None
        if not all(e > 0 for e in values) or len(set(values)) < len(values):
            raise ValueError(f"--epochs {item!r}: epochs must be > 0 and not repeated")
        out.append(values)
    return out


def make_grid(sizes: list[Optional[int]], epochs: list[list[int]], sweep: list[tuple[str, float]],
              tokenizers: list[str], seeds: list[int]) -> list[RunSpec]:
    """Every run, seeds outermost (a partial comparison has every cell at a few seeds), smallest size and shortest
    schedule first. ``epochs``: one list of schedules for all sizes, or one per size."""
    if len(epochs) not in (1, len(sizes)):
        raise ValueError(f"--epochs takes one value or one per train size ({len(sizes)}), got {len(epochs)}")
    per_size = dict(zip(sizes, epochs if len(epochs) == len(sizes) else epochs * len(sizes)))
    return [RunSpec(size, e, opt, lr, tok, seed)
            for seed in seeds for size in sizes for e in sorted(per_size[size]) for opt, lr in sweep
            for tok in tokenizers]


def train_speed(cfg: ViTConfig, batch_size: int, steps: int = 4) -> float:
    """Training images per second (forward, backward, AdamW step) of ``cfg`` on random images, median of
    ``steps`` after one warm-up step: the rate the budget is estimated with."""
    from vitlab.models.vit import VisionTransformer

    model = VisionTransformer(cfg).train()
    opt = torch.optim.AdamW(model.parameters())
    x = torch.randn(batch_size, cfg.in_chans, cfg.img_size, cfg.img_size)  # (B, C, H, W)
    y = torch.randint(0, cfg.num_classes, (batch_size,))
    times = []
    for _ in range(steps + 1):
        t = time.perf_counter()
        torch.nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
        opt.zero_grad()
        times.append(time.perf_counter() - t)
    return batch_size / statistics.median(times[1:])


def budget(todo: list[RunSpec], speeds: dict[str, float], full_size: int, eval_images: int) -> float:
    """Estimated seconds for ``todo``: training images / measured rate, plus one validation pass per epoch (taken
    as a third of a training image's cost)."""
    total = 0.0
    for run in todo:
        n = min(run.size or full_size, full_size)
        total += run.epochs * (n + eval_images / 3) / speeds[run.tokenizer]
    return total


def machine() -> str:
    """CPU model (or GPU name) and torch threads, recorded with every run: wall-clock depends on it."""
    cpu = cpu_label()
    gpu = f", {torch.cuda.get_device_name()}" if torch.cuda.is_available() else ""
    return f"{cpu}, {torch.get_num_threads()} torch threads{gpu}"
