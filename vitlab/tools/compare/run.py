"""`vitlab compare`: tokenizers (patch, conv stem, CCT, any registered plug-in) under one recipe, several seeds,
one report.

    vitlab compare --data fashion_mnist --seeds 0 1 2 --epochs 5 --out reports/compare_fashion_mnist

Every tokenizer gets the same encoder width, heads, token grid (each is set up to reach the patch model's grid:
``Tokenizer.matching_options``) and the same recipe; ``--match flops`` also drops encoder blocks from the models
whose tokenizer costs more until their forward FLOPs are at most the patch model's (as Xiao et al. drop one
block), ``--match width`` keeps the depth. Each run's results are kept in ``OUT/runs/<tokenizer>_seed<k>.json``:
a rerun skips finished runs, so an interrupted comparison resumes. The report: ``OUT/results.md`` (params, GFLOPs,
img/s, accuracy mean ± std over seeds, epochs and wall-clock to a target accuracy) and PNG plots.
"""
from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path
from typing import Any

import lightning as L
import torch

from vitlab.models.config import ViTConfig
from vitlab.models.flops import forward_macs, model_stats, num_tokens
from vitlab.models.registry import get_config
from vitlab.models.tokenizers import get_tokenizer, list_tokenizers

DATA = {  # name -> (data module class path, default preset of the patch baseline)
    "fashion_mnist": ("vitlab.data.FashionMNISTDataModule", "vit_micro_patch4_28"),
    "cifar10": ("vitlab.data.CIFAR10DataModule", "vit_lite_7_patch4_32"),
    "cifar100": ("vitlab.data.CIFAR100DataModule", "vit_lite_7_patch4_32"),
    "digits": ("vitlab.data.DigitsDataModule", "vit_micro_patch4_28"),
}


# ----------------------------------------------------------------------------------------------- configs
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


# ----------------------------------------------------------------------------------------------- one run
class EpochRecorder(L.Callback):
    """Validation acc1 after every epoch, with the training wall-clock spent so far (validation excluded)."""

    def __init__(self) -> None:
        self.history: list[dict[str, float]] = []
        self.train_seconds = 0.0
        self.train_samples = 0
        self._t0 = 0.0

    def _add_train_time(self) -> None:
        now = time.perf_counter()
        self.train_seconds += now - self._t0
        self._t0 = now

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._t0 = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.train_samples += len(batch[0])

    def on_validation_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not trainer.sanity_checking:
            self._add_train_time()  # validation runs inside the training epoch, before on_train_epoch_end

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking or "val/acc1" not in trainer.callback_metrics:
            return
        self.history.append({"epoch": trainer.current_epoch + 1, "seconds": self.train_seconds,
                             "val_acc1": float(trainer.callback_metrics["val/acc1"])})
        self._t0 = time.perf_counter()  # the validation time is not training time

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._add_train_time()


@torch.no_grad()
def inference_speed(model: torch.nn.Module, shape: tuple[int, ...], repeats: int = 5) -> float:
    """Eval-mode images per second on one batch of ``shape`` (median of ``repeats``)."""
    model.eval()
    x = torch.randn(shape)
    model(x)
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        model(x)
        times.append(time.perf_counter() - t)
    return shape[0] / statistics.median(times)


def run_one(cfg: ViTConfig, data_name: str, seed: int, args: argparse.Namespace) -> dict[str, Any]:
    """Train one tokenizer with one seed; returns its results (history, accuracies, speeds)."""
    from importlib import import_module

    from vitlab.training.module import ImageClassifier

    L.seed_everything(seed, verbose=False)
    module_path, cls_name = DATA[data_name][0].rsplit(".", 1)
    data = getattr(import_module(module_path), cls_name)(
        data_dir=args.data_dir, batch_size=args.batch_size, seed=0, num_workers=args.num_workers,
        train_subset=args.train_subset, eval_subset=args.eval_subset, img_size=cfg.img_size, in_chans=cfg.in_chans)
    model = ImageClassifier(arch=cfg.replace(num_classes=data.num_classes),
                            optim={"base_lr": args.base_lr, "weight_decay": args.weight_decay},
                            schedule={"warmup_epochs": args.warmup_epochs},
                            regularization={"label_smoothing": args.label_smoothing})
    recorder = EpochRecorder()
    trainer = L.Trainer(max_epochs=args.epochs, accelerator=args.accelerator, devices=1, logger=False,
                        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                        num_sanity_val_steps=0, callbacks=[recorder], precision=args.precision)
    trainer.fit(model, datamodule=data)
    test_acc = trainer.test(model, datamodule=data, verbose=False)[0]["test/acc1"]
    accs = [h["val_acc1"] for h in recorder.history]
    stats = model_stats(cfg)
    return {
        "tokenizer": cfg.tokenizer, "seed": seed, "depth": cfg.depth, "params_m": stats["params_m"],
        "gflops": stats["gflops"], "history": recorder.history, "test_acc1": test_acc,
        "final_val_acc1": accs[-1] if accs else None, "best_val_acc1": max(accs) if accs else None,
        "train_img_s": recorder.train_samples / max(recorder.train_seconds, 1e-9),
        "infer_img_s": inference_speed(model.model.cpu(), (args.batch_size, cfg.in_chans, cfg.img_size,
                                                            cfg.img_size)),
        "config": cfg.to_dict(),
    }


# ----------------------------------------------------------------------------------------------- report
def _mean_std(xs: list[float]) -> str:
    if not xs:
        return "-"
    sd = statistics.stdev(xs) if len(xs) > 1 else 0.0
    return f"{statistics.mean(xs):.4g} ± {sd:.2g}"


def _pct(xs: list[float]) -> str:
    return _mean_std([100 * x for x in xs])


def reach(history: list[dict[str, float]], target: float) -> dict[str, float] | None:
    """The first epoch record whose validation accuracy is at least ``target``, else None."""
    return next((h for h in history if h["val_acc1"] >= target), None)


def write_report(results: list[dict[str, Any]], out: Path, args: argparse.Namespace) -> str:
    """results.md (table) and the PNG plots; returns the Markdown. The target accuracy is applied here, to the
    kept histories, so a rerun with another ``--target`` only rewrites the report."""
    by_tok: dict[str, list[dict]] = {}
    for r in results:
        by_tok.setdefault(r["tokenizer"], []).append(r)
    target = f"{100 * args.target:g} %"
    lines = [
        f"Data: {args.data}, {args.epochs} epochs, seeds {args.seeds}, matched by **{args.match}** "
        f"({'equal FLOPs: conv tokenizers lose blocks' if args.match == 'flops' else 'equal width, depth and tokens'}"
        f"), batch {args.batch_size}, base_lr {args.base_lr}.",
        "",
        f"| tokenizer | depth | params (M) | GFLOPs/img | train img/s | infer img/s | test acc1 (%) | best val acc1 (%) "
        f"| epochs to {target} | seconds to {target} |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for tok, rs in by_tok.items():
        reached = [h for h in (reach(r["history"], args.target) for r in rs) if h is not None]
        reach_note = f" ({len(reached)}/{len(rs)} runs)" if len(reached) < len(rs) else ""
        lines.append(
            f"| {tok} | {rs[0]['depth']} | {rs[0]['params_m']:.3f} | {rs[0]['gflops']:.4f} | "
            f"{_mean_std([r['train_img_s'] for r in rs])} | {_mean_std([r['infer_img_s'] for r in rs])} | "
            f"{_pct([r['test_acc1'] for r in rs])} | {_pct([r['best_val_acc1'] for r in rs])} | "
            f"{_mean_std([h['epoch'] for h in reached])}{reach_note} | "
            f"{_mean_std([h['seconds'] for h in reached])}{reach_note} |")
    markdown = "\n".join(lines) + "\n"
    (out / "results.md").write_text(markdown)
    _plots(by_tok, out)
    return markdown


def _plots(by_tok: dict[str, list[dict]], out: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for tok, rs in by_tok.items():
        n = min(len(r["history"]) for r in rs)
        if n == 0:
            continue
        acc = np.array([[100 * h["val_acc1"] for h in r["history"][:n]] for r in rs])  # (seeds, epochs)
        secs = np.array([[h["seconds"] for h in r["history"][:n]] for r in rs])
        epochs = np.arange(1, n + 1)
        for ax, x in ((axes[0], epochs), (axes[1], secs.mean(0))):
            line, = ax.plot(x, acc.mean(0), marker="o", label=tok)
            ax.fill_between(x, acc.min(0), acc.max(0), alpha=0.2, color=line.get_color())
    axes[0].set(xlabel="epoch", ylabel="val acc1 (%)", title="accuracy vs epochs (band: min-max over seeds)")
    axes[1].set(xlabel="training wall-clock (s)", ylabel="val acc1 (%)", title="accuracy vs wall-clock")
    for ax in axes:
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(out / "accuracy_curves.png", dpi=120)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(5, 4))
    for tok, rs in by_tok.items():
        accs = [100 * r["test_acc1"] for r in rs]
        ax.bar(f"{tok}\n{rs[0]['gflops']:.3f} GFLOPs", np.mean(accs), yerr=np.std(accs), capsize=4)
    ax.set(ylabel="test acc1 (%)", title="accuracy vs GFLOPs per image")
    lo = min(100 * r["test_acc1"] for rs in by_tok.values() for r in rs)
    ax.set_ylim(max(0, lo - 5), 100)
    fig.tight_layout()
    fig.savefig(out / "accuracy_vs_gflops.png", dpi=120)
    plt.close(fig)


# ----------------------------------------------------------------------------------------------- main
def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(prog="vitlab compare", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", choices=sorted(DATA), default="fashion_mnist")
    p.add_argument("--data-dir", default="data")
    p.add_argument("--model", default=None, help="preset of the patch baseline (default: per data set)")
    p.add_argument("--tokenizers", nargs="+", default=list_tokenizers(), choices=list_tokenizers(),
                   help="registered tokenizers to compare (default: all)")
    p.add_argument("--match", choices=["flops", "width"], default="flops")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--epochs", type=int, default=5)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--base-lr", type=float, default=4e-3, help="peak lr at global batch 512 (scaled)")
    p.add_argument("--warmup-epochs", type=float, default=0.5)
    p.add_argument("--weight-decay", type=float, default=0.05)
    p.add_argument("--label-smoothing", type=float, default=0.1)
    p.add_argument("--target", type=float, default=0.85, help="accuracy whose epochs/seconds to reach are reported")
    p.add_argument("--train-subset", type=int, default=None)
    p.add_argument("--eval-subset", type=int, default=None)
    p.add_argument("--num-workers", type=int, default=0)
    p.add_argument("--accelerator", default="cpu")
    p.add_argument("--precision", default="32-true")
    p.add_argument("--out", type=Path, default=None)
    args = p.parse_args(argv)
    out = args.out or Path("reports") / f"compare_{args.data}"
    (out / "runs").mkdir(parents=True, exist_ok=True)

    base = get_config(args.model or DATA[args.data][1])
    configs = matched_configs(base, args.tokenizers, args.match)
    todo = [(tok, seed) for seed in args.seeds for tok in args.tokenizers]
    results = []
    for i, (tok, seed) in enumerate(todo, 1):
        path = out / "runs" / f"{tok}_seed{seed}.json"
        if path.is_file():
            print(f"[{i}/{len(todo)}] {tok} seed {seed}: done before, kept ({path})")
            results.append(json.loads(path.read_text()))
            continue
        print(f"[{i}/{len(todo)}] {tok} seed {seed}: training (depth {configs[tok].depth}) ...", flush=True)
        start = time.time()
        result = run_one(configs[tok], args.data, seed, args)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(result, indent=1))
        tmp.replace(path)  # a kill never leaves a half-written result
        results.append(result)
        print(f"[{i}/{len(todo)}] {tok} seed {seed}: test acc1 {result['test_acc1']:.4f} "
              f"({time.time() - start:.0f} s)", flush=True)
    markdown = write_report(results, out, args)
    print(markdown)
    print(f"report: {out / 'results.md'}, {out / 'accuracy_curves.png'}, {out / 'accuracy_vs_gflops.png'}")
    return {"results": results, "markdown": markdown, "out": str(out)}


if __name__ == "__main__":
    main()
