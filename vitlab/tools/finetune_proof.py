"""Does pretraining help? Pretrain on Fashion-MNIST, fine-tune on scikit-learn's digits at another resolution,
and compare with the same model trained from scratch under the same budget, over several seeds.

    vitlab finetune-proof --out reports/finetune        # the figures of docs/finetune.md (28.6 min on a shared 2-core CPU)

Pretraining: ``vit_micro_patch4_28`` (28 px, 7x7 tokens) on Fashion-MNIST. Fine-tuning: the same architecture
at 32 px (8x8 tokens: positions resampled, head re-initialised for the digits) on 1,294 real 8x8 digit scans.
"""
from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import lightning as L

from vitlab.data import DigitsDataModule, FashionMNISTDataModule
from vitlab.training.module import ImageClassifier

PRESET = "vit_micro_patch4_28"


def _trainer(max_epochs: int, max_steps: int = -1) -> L.Trainer:
    return L.Trainer(max_epochs=max_epochs, max_steps=max_steps, accelerator="cpu", devices=1, logger=False,
                     enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                     num_sanity_val_steps=0)


def pretrain(out: Path, samples: int, epochs: int, batch_size: int = 128, eval_samples: int = 2000) -> Path:
    """Train ``PRESET`` on Fashion-MNIST; returns the checkpoint path (reused if it exists)."""
    ckpt = out / "pretrained_fashion_mnist.ckpt"
    if ckpt.is_file():
        return ckpt
    L.seed_everything(0, verbose=False)
    data = FashionMNISTDataModule(batch_size=batch_size, train_subset=samples, eval_subset=eval_samples,
                                  num_workers=0)
    model = ImageClassifier(preset=PRESET, arch={"num_classes": 10}, optim={"base_lr": 4e-3, "weight_decay": 0.05},
                            schedule={"warmup_epochs": 0.2})
    trainer = _trainer(epochs)
    trainer.fit(model, datamodule=data)
    acc = trainer.test(model, datamodule=data, verbose=False)[0]["test/acc1"]
    print(f"pretrained on {samples} Fashion-MNIST images x {epochs} epochs: test acc1 {acc:.4f}")
    ckpt.parent.mkdir(parents=True, exist_ok=True)
    trainer.save_checkpoint(ckpt, weights_only=True)
    return ckpt


def run_digits(seed: int, pretrained: str | None, epochs: int, img_size: int, batch_size: int = 64,
               train_subset: int | None = None) -> float:
    """Train on digits at ``img_size`` (from ``pretrained`` or from scratch); returns test acc1.

    Both arms share everything but the initial weights: lr 1e-3 (base_lr 8e-3 at batch 64), 1 warmup epoch.
    """
    L.seed_everything(seed, verbose=False)
    data = DigitsDataModule(batch_size=batch_size, img_size=img_size, seed=seed, num_workers=0,
                            train_subset=train_subset)
    model = ImageClassifier(preset=PRESET, pretrained=pretrained, arch={"img_size": img_size, "in_chans": 1,
                            "num_classes": 10}, optim={"base_lr": 8e-3, "weight_decay": 0.05},
                            schedule={"warmup_epochs": 1.0})
    trainer = _trainer(epochs)
    trainer.fit(model, datamodule=data)
    return trainer.test(model, datamodule=data, verbose=False)[0]["test/acc1"]


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(prog="vitlab finetune-proof", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, default=Path("reports/finetune"))
    p.add_argument("--pretrain-samples", type=int, default=30000)
    p.add_argument("--pretrain-epochs", type=int, default=2)
    p.add_argument("--pretrain-eval-samples", type=int, default=2000)
    p.add_argument("--epochs", type=int, default=10, help="fine-tuning and from-scratch epochs on digits")
    p.add_argument("--img-size", type=int, default=32, help="digits resolution (pretraining is at 28)")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--train-subset", type=int, default=None, help="use only N digits for training (tests)")
    args = p.parse_args(argv)

    start = time.time()
    ckpt = pretrain(args.out, args.pretrain_samples, args.pretrain_epochs, eval_samples=args.pretrain_eval_samples)
    results: dict[str, list[float]] = {"finetuned": [], "scratch": []}
    for seed in args.seeds:
        results["finetuned"].append(run_digits(seed, str(ckpt), args.epochs, args.img_size,
                                                   train_subset=args.train_subset))
        results["scratch"].append(run_digits(seed, None, args.epochs, args.img_size,
                                                 train_subset=args.train_subset))
        print(f"seed {seed}: fine-tuned {results['finetuned'][-1]:.4f}  scratch {results['scratch'][-1]:.4f}")

    def mean_std(xs: list[float]) -> tuple[float, float]:
        return statistics.mean(xs), statistics.stdev(xs) if len(xs) > 1 else 0.0

    summary = {k: dict(zip(("mean", "std"), mean_std(v)), runs=v) for k, v in results.items()}
    summary.update(args={k: str(v) for k, v in vars(args).items()}, seconds=round(time.time() - start, 1))
    lines = ["| digits test acc1 | mean ± std | runs |", "|---|---|---|"]
    for k in ("finetuned", "scratch"):
        s = summary[k]
        lines.append(f"| {k} | {100 * s['mean']:.2f} ± {100 * s['std']:.2f} % | "
                     f"{', '.join(f'{100 * r:.1f}' for r in s['runs'])} |")
    table = "\n".join(lines)
    print(table)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "results.json").write_text(json.dumps(summary, indent=2))
    (args.out / "results.md").write_text(table + "\n")
    return summary


if __name__ == "__main__":
    main()
