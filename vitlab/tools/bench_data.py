"""``vitlab bench-data``: loading throughput (decode + augment, no model) of an image-folder tree against
``vitlab prepare`` shards of the same images.

For each source and loader worker count it builds the real data module (``ImageFolderDataModule`` on the tree,
``StreamingDataModule`` on the shards) with one batch size, image size and augment setting, iterates its
``train_dataloader()`` and counts images: ``--warmup`` batches first (worker start-up included, timed apart as
``first_batch_s``), then ``--repeats`` timed windows of ``--batches`` batches each. ``--rounds`` runs the whole
sweep again with fresh loaders, the sources in the other order, so that both meet the same machine; img/s is the
median of every window. An epoch that ends inside a window is started again (the restart is timed with it). Shared
virtual CPUs do not always run in parallel: the parallel speed-up of a pure-Python loop on every CPU is measured
before and after the sweep and reported with the table.

    vitlab bench-data --folder /tmp/fm_tree_png --shards /tmp/fm_tree_shards --img-size 28 --workers 0 1 2
    vitlab bench-data --folder TREE --shards SHARDS --augment both --out bench_data.json
    vitlab bench-data --make-fashion-mnist-tree /tmp/fm_tree_png --format png   # the 70,000 images as a tree

The transform is each module's own training transform: timm's ImageNet pipeline for an image folder and for
shards of one (``vitlab prepare imagefolder`` records no native size), the small-image pipeline for shards of
Fashion-MNIST or CIFAR. ``--augment false`` measures both with their eval transform instead.
"""
from __future__ import annotations

import argparse
import datetime
import gc
import json
import os
import platform
import statistics
import sys
import time
from typing import Any

import torch

from vitlab import runtime as machine

SOURCES = ("imagefolder", "streaming")
TRANSFORMS = {  # short name -> what runs
    "imagenet-train": "timm ImageNet train: RandomResizedCrop + flip + RandAugment rand-m9-mstd0.5-inc1 + "
                      "random erasing 0.25",
    "imagenet-eval": "timm eval: resize to img_size / crop_pct + centre crop",
    "small-train": "small-image train: random crop (pad 4) + flip at the native size, then resize",
    "small-eval": "small-image eval: resize (if needed)",
}


class BenchDataError(Exception):
    """A bad option or input: one line, exit code 2."""


# ----------------------------------------------------------------------------------------------- Fashion-MNIST tree
def fashion_mnist_folders() -> list[str]:
    """Class folder names that sort in label order: ``0_t-shirt_top`` ... ``9_ankle_boot``."""
    from vitlab.data.stats import FASHION_MNIST_CLASSES

    return [f"{i}_{name.lower().replace('/', '_').replace(' ', '_')}" for i, name in enumerate(FASHION_MNIST_CLASSES)]


def write_fashion_mnist_tree(out: str, fmt: str = "png", data_dir: str | None = None, limit: int | None = None,
                             jpeg_quality: int = 95) -> dict[str, int]:
    """Fashion-MNIST's images as an image-folder tree: ``out/train/<class>/<index>.<fmt>`` (the 60,000 training
    images) and ``out/val/<class>/...`` (the 10,000 test images); grayscale PNG (lossless) or JPEG.

    Args:
        out: Folder to write; it may exist but must not hold ``train/`` or ``val/``.
        fmt: ``png`` or ``jpg``.
        data_dir: Where the IDX files are (default: Debian's /usr/share/datasets/fashion-mnist); never downloaded.
        limit: Only the first N images of each split.
        jpeg_quality: PIL's JPEG quality.

    Returns:
        Images written per split.
    """
    from PIL import Image

    from vitlab.data.fashion_mnist import DEBIAN_DIR, FashionMNISTDataModule

    if fmt not in ("png", "jpg"):
        raise BenchDataError(f"--format must be png or jpg, got {fmt!r}")
    dm = FashionMNISTDataModule(data_dir=data_dir or DEBIAN_DIR, num_workers=0)
    if dm.find_dir() is None:
        raise BenchDataError(f"Fashion-MNIST IDX files not found in {', '.join(dict.fromkeys(dm.search_dirs()))}; "
                             f"give --fashion-mnist-dir, or apt-get install dataset-fashion-mnist")
    taken = [s for s in ("train", "val") if os.path.exists(os.path.join(out, s))]
    if taken:
        raise BenchDataError(f"{out} already holds {', '.join(taken)}/; choose a new folder")
    folders = fashion_mnist_folders()
    options = {"quality": jpeg_quality} if fmt == "jpg" else {}
    written = {}
    for split, train in (("train", True), ("val", False)):
        images, labels = dm.load_split(train)  # (N, 1, 28, 28) uint8, (N,) int64 (the test split for val/)
        images, labels = images[:limit].numpy(), labels[:limit].tolist()
        for folder in folders:
            os.makedirs(os.path.join(out, split, folder))
        for i, (image, label) in enumerate(zip(images, labels)):
            Image.fromarray(image[0], "L").save(os.path.join(out, split, folders[label], f"{i:05d}.{fmt}"), **options)
        written[split] = len(labels)
    return written


# ----------------------------------------------------------------------------------------------- measuring
def build_module(source: str, path: str, *, workers: int, batch_size: int, img_size: int | None, augment: bool,
                 seed: int) -> Any:
    """The data module of ``source`` on ``path``, set up for fit."""
    from vitlab.data import ImageFolderDataModule, StreamingDataModule

    cls = ImageFolderDataModule if source == "imagefolder" else StreamingDataModule
    dm = cls(data_dir=path, batch_size=batch_size, num_workers=workers, img_size=img_size, augment=augment,
             seed=seed, pin_memory=False)
    dm.setup("fit")
    return dm


def transform_of(dm: Any, augment: bool) -> str:
    """Short name of the training transform ``dm`` applies (a key of :data:`TRANSFORMS`)."""
    return f"{'small' if getattr(dm, 'small', False) else 'imagenet'}-{'train' if augment else 'eval'}"


def measure(source: str, path: str, *, workers: int, batch_size: int, img_size: int | None, augment: bool,
            warmup: int, batches: int, repeats: int, seed: int) -> dict:
    """Images per second through one data module's training loader (see the module docstring)."""
    torch.manual_seed(seed)
    start = time.perf_counter()
    dm = build_module(source, path, workers=workers, batch_size=batch_size, img_size=img_size, augment=augment,
                      seed=seed)
    setup_s = time.perf_counter() - start
    loader = dm.train_dataloader()
    epochs = 1
    it = iter(loader)

    def next_batch() -> int:
        nonlocal it, epochs
        try:
            images, _ = next(it)
        except StopIteration:
            it, epochs = iter(loader), epochs + 1
            images, _ = next(it)
        return int(images.shape[0])

    start = time.perf_counter()
    next_batch()
    first_batch_s = time.perf_counter() - start
    for _ in range(warmup - 1):
        next_batch()
    runs, counted, seconds = [], 0, 0.0
    for _ in range(repeats):
        start = time.perf_counter()
        n = sum(next_batch() for _ in range(batches))
        dt = time.perf_counter() - start
        runs.append(n / dt)
        counted, seconds = counted + n, seconds + dt
    row = {"source": source, "path": path, "workers": workers, "transform": transform_of(dm, augment),
           "img_s": statistics.median(runs), "img_s_runs": runs, "images": counted, "seconds": seconds,
           "setup_s": setup_s, "first_batch_s": first_batch_s, "epochs_started": epochs,
           "img_size": dm.img_size, "in_chans": dm.in_chans, "train_images": len(dm.train_set)}
    if source == "streaming":
        row["native_size"] = dm.native_size
    _close(it)
    return row


def _close(it: Any) -> None:
    """Stop the loader workers now, so the next measurement has the CPUs to itself."""
    if hasattr(it, "_shutdown_workers"):  # torch's multi-process iterator
        it._shutdown_workers()
    elif hasattr(it, "close"):  # ShardLoader's generator: closing it ends litdata's iterator
        it.close()


def _spin(n: int) -> None:
    while n:
        n -= 1


def cpu_scaling(procs: int, n: int = 2_000_000) -> float:
    """How many times the work of one process ``procs`` processes get done together in the same time (a pure-Python
    loop): about ``procs`` on dedicated cores, less on shared virtual CPUs."""
    import multiprocessing

    start = time.perf_counter()
    _spin(n)
    alone = time.perf_counter() - start
    ctx = multiprocessing.get_context("fork" if sys.platform.startswith("linux") else "spawn")
    workers = [ctx.Process(target=_spin, args=(n,)) for _ in range(procs)]
    start = time.perf_counter()
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    return procs * alone / (time.perf_counter() - start)


def machine_info() -> dict:
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return {"cpu": machine.cpu_name(), "cpus": cpus, "torch_threads": torch.get_num_threads(),
            "python": platform.python_version(), "torch": torch.__version__, "platform": platform.platform()}


def _merge(rounds: list[dict]) -> dict:
    """One row from the same measurement's rounds: img/s the median of every window of every round."""
    row = dict(rounds[0])
    runs = [v for r in rounds for v in r["img_s_runs"]]
    row.update(img_s=statistics.median(runs), img_s_runs=runs, round_img_s=[r["img_s"] for r in rounds],
               images=sum(r["images"] for r in rounds), seconds=sum(r["seconds"] for r in rounds),
               setup_s=statistics.median(r["setup_s"] for r in rounds),
               first_batch_s=statistics.median(r["first_batch_s"] for r in rounds))
    return row


def run(args: argparse.Namespace) -> dict:
    """Measure every (augment, workers, source) of ``args``, ``args.rounds`` times (the sources' order alternating
    from round to round, so both meet the same machine); the results as :func:`main` writes them."""
    paths = {"imagefolder": args.folder, "streaming": args.shards}
    sources = [s for s in SOURCES if paths[s]]
    augments = {"true": [True], "false": [False], "both": [True, False]}[args.augment]
    info = machine_info()
    scaling = [cpu_scaling(info["cpus"])]
    measured: dict[tuple, list[dict]] = {}
    for rnd in range(args.rounds):
        for augment in augments:
            for workers in args.workers:
                for source in sources if rnd % 2 == 0 else sources[::-1]:
                    row = measure(source, paths[source], workers=workers, batch_size=args.batch_size,
                                  img_size=args.img_size, augment=augment, warmup=args.warmup, batches=args.batches,
                                  repeats=args.repeats, seed=args.seed)
                    gc.collect()  # the loader and its data module, before the next one starts
                    measured.setdefault((augment, workers, source), []).append(row)
                    if not args.quiet:
                        print(f"  round {rnd + 1}: {source} {row['transform']} workers={workers}: "
                              f"{row['img_s']:.0f} img/s", file=sys.stderr, flush=True)
    scaling.append(cpu_scaling(info["cpus"]))
    rows = [_merge(rounds) for rounds in measured.values()]
    used = sorted({r["transform"] for r in rows})
    info["cpu_scaling"] = scaling
    return {"tool": "vitlab bench-data", "date": datetime.datetime.now().isoformat(timespec="seconds"),
            "machine": info,
            "settings": {"batch_size": args.batch_size, "img_size": args.img_size, "warmup": args.warmup,
                         "batches": args.batches, "repeats": args.repeats, "rounds": args.rounds,
                         "workers": args.workers, "augment": args.augment, "seed": args.seed},
            "transforms": {name: TRANSFORMS[name] for name in used}, "rows": rows}


def table(result: dict) -> str:
    """(source, transform) x workers -> img/s, median of the windows."""
    workers = result["settings"]["workers"]
    cells: dict[tuple[str, str], dict[int, float]] = {}
    for r in result["rows"]:
        cells.setdefault((r["source"], r["transform"]), {})[r["workers"]] = r["img_s"]
    head = f"{'source':<12} {'transform':<15}" + "".join(f"{f'workers={w}':>11}" for w in workers)
    lines = [head, "-" * len(head)]
    for (source, transform), by_workers in cells.items():
        lines.append(f"{source:<12} {transform:<15}" + "".join(
            f"{by_workers[w]:>11.0f}" if w in by_workers else f"{'-':>11}" for w in workers))
    settings = result["settings"]
    cpu = result["machine"]
    lines.append(f"img/s, median of {settings['rounds']} x {settings['repeats']} windows of {settings['batches']} "
                 f"batches of {settings['batch_size']} after {settings['warmup']} warm-up batches; {cpu['cpu']}, "
                 f"{cpu['cpus']} CPUs (parallel speed-up of {cpu['cpus']} processes before/after: "
                 f"{' / '.join(f'{x:.2f}' for x in cpu['cpu_scaling'])})")
    lines += [f"{name}: {text}" for name, text in result["transforms"].items()]
    return "\n".join(lines)


# ----------------------------------------------------------------------------------------------- CLI
def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="vitlab bench-data", description="Loading throughput (decode + augment, no "
                                "model) of ImageFolderDataModule on a tree and StreamingDataModule on vitlab prepare "
                                "shards, per loader worker count.")
    p.add_argument("--folder", help="image-folder tree (train/<class>/..., val/<class>/...)")
    p.add_argument("--shards", help="vitlab prepare --out folder (train/, and val/ or test/)")
    p.add_argument("--workers", type=int, nargs="+", default=[0, 1, 2], help="loader worker counts (default 0 1 2)")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--img-size", type=int, default=None, help="output side for both (default: each module's own)")
    p.add_argument("--augment", choices=("true", "false", "both"), default="true",
                   help="true: each module's training transform; false: its eval transform; both: each")
    p.add_argument("--warmup", type=int, default=5, help="untimed batches first (worker start-up included)")
    p.add_argument("--batches", type=int, default=20, help="batches per timed window")
    p.add_argument("--repeats", type=int, default=3, help="timed windows per round (median reported)")
    p.add_argument("--rounds", type=int, default=1, help="times the whole sweep is run, the sources' order "
                   "alternating (fresh loaders each round); img/s is the median of every window")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", help="write the results as JSON here")
    p.add_argument("--quiet", action="store_true", help="no progress lines and no table")
    p.add_argument("--make-fashion-mnist-tree", metavar="DIR",
                   help="write Fashion-MNIST as DIR/train (60,000) and DIR/val (the 10,000 test images), then stop")
    p.add_argument("--format", choices=("png", "jpg"), default="png", help="image files of --make-fashion-mnist-tree")
    p.add_argument("--jpeg-quality", type=int, default=95)
    p.add_argument("--fashion-mnist-dir", help="the IDX files (default /usr/share/datasets/fashion-mnist)")
    p.add_argument("--limit", type=int, help="--make-fashion-mnist-tree: only the first N images of each split")
    return p


def main(argv: list[str] | None = None) -> int:
    """``vitlab bench-data``; returns the exit code (2: a bad option or input)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        if args.make_fashion_mnist_tree:
            start = time.perf_counter()
            written = write_fashion_mnist_tree(args.make_fashion_mnist_tree, args.format, args.fashion_mnist_dir,
                                               args.limit, args.jpeg_quality)
            print(f"vitlab bench-data: {', '.join(f'{k}: {v}' for k, v in written.items())} {args.format} files -> "
                  f"{args.make_fashion_mnist_tree} in {time.perf_counter() - start:.1f} s")
            return 0
        if not (args.folder or args.shards):
            raise BenchDataError("give --folder TREE and/or --shards SHARDS (or --make-fashion-mnist-tree DIR)")
        for name in ("batch_size", "img_size", "warmup", "batches", "repeats", "rounds"):
            value = getattr(args, name)
            if value is not None and value < 1:
                raise BenchDataError(f"--{name.replace('_', '-')} must be >= 1, got {value}")
        if min(args.workers) < 0:
            raise BenchDataError(f"--workers must be >= 0, got {args.workers}")
        for path in (args.folder, args.shards):
            if path and not os.path.isdir(path):
                raise BenchDataError(f"{path} is not a folder")
        try:
            result = run(args)
        except (ValueError, FileNotFoundError) as e:  # a tree or shards the data modules refuse
            raise BenchDataError(" ".join(str(e).split())) from None
    except BenchDataError as e:
        parser.exit(2, f"vitlab bench-data: error: {e}\n")
    if args.out:
        with open(args.out, "w") as f:
            json.dump(result, f, indent=1)
    if not args.quiet:
        print(table(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
