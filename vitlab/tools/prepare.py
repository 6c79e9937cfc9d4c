"""``vitlab prepare``: a data set as litdata optimized shards (:mod:`vitlab.data.shards`), local or on S3.

    vitlab prepare imagefolder /data/imagenet --out s3://bucket/imagenet-shards --num-workers 32
    vitlab prepare fashion_mnist --out shards/fmnist
    vitlab prepare cifar10 --data-dir data --out shards/cifar10 --limit 1000

Each split is one ``litdata.optimize`` run with checkpoints: an interrupted run (killed, a failed image under
``--on-error fail``) continues where it stopped when the same command is run again, and every sample ends up in the
shards exactly once. An output that holds something else is refused unless ``--overwrite``.
"""
from __future__ import annotations

import argparse
import contextlib
import hashlib
import io
import json
import multiprocessing
import os
import re
import signal
import sys
import tempfile
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np
from PIL import Image, UnidentifiedImageError

from vitlab.data import shards
from vitlab.data.image_io import IMG_EXTENSIONS, ImageDecodeError, _to_8bit
from vitlab.data.shards import join

SOURCES = ("imagefolder", "fashion_mnist", "cifar10", "cifar100")
JOB_NAME = "vitlab_prepare.json"  # at the output's root: what is being written, so a rerun can resume it
ERRORS_DIR = ".vitlab_errors"      # per split, while it is written: the unreadable images met so far
KEEP_FORMATS = ("JPEG", "MPO", "PNG", "WEBP")  # stored as found; other formats are re-encoded as PNG
PNG_MODES = ("1", "L", "LA", "P", "RGB", "RGBA", "I", "I;16")


class PrepareError(Exception):
    """A problem with the command's input or output: reported as one line, exit code 2."""


# ----------------------------------------------------------------------------------------------- readers
class FileReader:
    """Image files of one split: ``reader(i) -> (bytes, label)``. Every file is decoded once, so unreadable files
    are found here (ImageDecodeError saying why; :meth:`name` names the file); JPEG/PNG/WebP bytes are kept as they
    are, other formats become PNG."""

    def __init__(self, root: str, files: list[str], labels: list[int]) -> None:
        self.root, self.files, self.labels = root, files, labels

    def name(self, i: int) -> str:
        return self.files[i]

    def __call__(self, i: int) -> tuple[bytes, int]:
        path = os.path.join(self.root, self.files[i])
        try:
            with open(path, "rb") as f:
                data = f.read()
            with Image.open(io.BytesIO(data)) as img:
                img.load()  # a truncated file fails here
                if img.format not in KEEP_FORMATS:
                    data = shards.encode_png(_png_compatible(img))
        except UnidentifiedImageError:
            raise ImageDecodeError("not an image file PIL can read") from None
        except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
            raise ImageDecodeError(str(e) or type(e).__name__) from None
        return data, self.labels[i]


def _png_compatible(img: Image.Image) -> Image.Image:
    """``img`` in a mode PNG stores (CMYK, YCbCr, ... become RGB; float and big-endian 16 bits become 8-bit L)."""
    if img.mode in ("F", "I;16B", "I;16L", "I;16N"):
        return _to_8bit(img)
    return img if img.mode in PNG_MODES else img.convert("RGB")


class ArrayReader:
    """uint8 images (N, C, H, W) of an in-memory source, from a .npy file mapped once per process; each image is
    written as PNG."""

    def __init__(self, images: str, labels: str, split: str) -> None:
        self.images_path, self.labels_path, self.split = images, labels, split
        self._arrays: tuple[np.ndarray, np.ndarray] | None = None

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_arrays": None}

    def name(self, i: int) -> str:
        return f"{self.split}[{i}]"

    def __call__(self, i: int) -> tuple[bytes, int]:
        if self._arrays is None:
            self._arrays = np.load(self.images_path, mmap_mode="r"), np.load(self.labels_path)
        images, labels = self._arrays
        image = np.asarray(images[i])  # (C, H, W)
        img = Image.fromarray(np.ascontiguousarray(image[0] if image.shape[0] == 1 else image.transpose(1, 2, 0)))
        return shards.encode_png(img), int(labels[i])


class SampleFn:
    """litdata's ``fn``: input ``i`` -> ``{"image": bytes, "label": int}``.

    An unreadable image is recorded in ``errors_dir`` (one small file per worker process, rewritten on each
    record; local or on the object store), then raised (``on_error="fail"``) or left out (``"skip"``: warns, returns
    None, which litdata writes nothing for).
    """

    def __init__(self, reader: Callable[[int], tuple[bytes, int]], errors_dir: str, on_error: str,
                 storage_options: dict | None) -> None:
        self.reader, self.errors_dir, self.on_error = reader, errors_dir, on_error
        self.storage_options = storage_options
        self._skipped: list[dict] = []

    def __call__(self, i: int) -> dict | None:
        try:
            data, label = self.reader(i)
        except ImageDecodeError as e:
            record = {"index": i, "file": self.reader.name(i), "error": str(e)}
            tag = f"{os.environ.get('DATA_OPTIMIZER_GLOBAL_RANK', '0')}-{os.getpid()}"
            if self.on_error == "fail":
                shards.write_bytes(join(self.errors_dir, f"failed-{tag}.json"), json.dumps(record).encode(),
                                   self.storage_options)
                # litdata stops a worker whose fn raises without stopping the helper processes the worker started
                # (remover, uploaders): they would wait on their queues forever. What they had not stored yet is
                # stored again on resume.
                for child in multiprocessing.active_children():
                    child.terminate()
                    child.join(5)
                raise
            self._skipped.append(record)
            shards.write_bytes(join(self.errors_dir, f"skipped-{tag}.json"), json.dumps(self._skipped).encode(),
                               self.storage_options)
            print(f"\nvitlab prepare: warning: skipped {record['file']}: {record['error']}", file=sys.stderr,
                  flush=True)
            return None
        return {"image": data, "label": int(label)}


# ----------------------------------------------------------------------------------------------- sources
@dataclass
class Split:
    name: str
    count: int
    reader: Any  # FileReader | ArrayReader
    fingerprint: str  # of the inputs, so a resumed run checks it reads the same ones


@dataclass
class Source:
    kind: str
    path: str  # the folder read
    classes: list[str]
    in_chans: int
    native_size: int | None
    splits: list[Split] = field(default_factory=list)

    def describe(self) -> str:
        return f"{self.kind}:{self.path}"


def _fingerprint(lines: Any) -> str:
    h = hashlib.sha256()
    for line in lines:
        h.update(f"{line}\n".encode())
    return h.hexdigest()[:16]


def image_folder_source(path: str, limit: int | None) -> Source:
    """``path/{train,val,test}/<class>/<image>`` (classes from ``train/``, as ImageFolderDataModule), or a single
    tree of class folders (written as ``train``)."""
    from vitlab.data.image_folder import LAYOUT, ImageFolderDataModule, _FixedClassesImageFolder, class_folders, \
        is_image_file
    from vitlab.data.scan import SymlinkError

    root = os.path.abspath(path)
    if not os.path.isdir(root):
        raise PrepareError(f"{path} {'is not a folder' if os.path.exists(root) else 'does not exist'}; {LAYOUT}, "
                           f"or a single tree of class folders")
    split_roots = {s: os.path.join(root, s) for s in shards.SPLITS if os.path.isdir(os.path.join(root, s))}
    if "train" not in split_roots:
        split_roots = {"train": root} if not split_roots else split_roots
        if list(split_roots) != ["train"]:
            raise PrepareError(f"{root} has {', '.join(split_roots)}/ but no train/; {LAYOUT}")
    classes = class_folders(split_roots["train"])
    if not classes:
        raise PrepareError(f"{split_roots['train']} has no class folders; {LAYOUT}, or a single tree of class folders")
    source = Source("imagefolder", root, classes, in_chans=3, native_size=None)
    for name, folder in split_roots.items():
        extra = sorted(set(class_folders(folder)) - set(classes))
        if extra:
            raise PrepareError(f"{folder} has class folders that {split_roots['train']} lacks: {extra}")
        try:
            samples = _FixedClassesImageFolder(folder, classes, is_valid_file=is_image_file).samples
        except SymlinkError as e:  # a folder link that loops or repeats images (vitlab.data.scan)
            raise PrepareError(str(e)) from None
        except FileNotFoundError:  # torchvision: a class folder without image files
            empty = [c for c in classes if not ImageFolderDataModule._has_images(os.path.join(folder, c))]
            more = f" and {len(empty) - 5} more" if len(empty) > 5 else ""
            raise PrepareError(f"{folder}: class folders missing or without image files "
                               f"({', '.join(IMG_EXTENSIONS)}): {', '.join(empty[:5])}{more}") from None
        samples = samples[:limit]
        files = [os.path.relpath(p, root) for p, _ in samples]
        labels = [label for _, label in samples]
        reader = FileReader(root, files, labels)
        source.splits.append(Split(name, len(files), reader, _fingerprint(f"{f}\t{y}" for f, y in zip(files, labels))))
    return source


def array_source(kind: str, data_dir: str | None, limit: int | None, tmp: str) -> Source:
    """Fashion-MNIST (IDX files) or CIFAR-10/100 (python pickles) read by vitlab's data modules, never downloaded;
    each split stored in ``tmp`` as .npy for the workers to map."""
    if kind == "fashion_mnist":
        from vitlab.data.fashion_mnist import DEBIAN_DIR, FashionMNISTDataModule

        dm = FashionMNISTDataModule(data_dir=data_dir or DEBIAN_DIR, num_workers=0)
        folder = dm.find_dir()
        if folder is None:
            raise PrepareError(f"Fashion-MNIST IDX files (train-images-idx3-ubyte[.gz], ...) not found in "
                               f"{', '.join(dict.fromkeys(dm.search_dirs()))}; give --data-dir, or "
                               f"apt-get install dataset-fashion-mnist")
    else:
        from vitlab.data.cifar import CIFAR10DataModule, CIFAR100DataModule

        dm = (CIFAR10DataModule if kind == "cifar10" else CIFAR100DataModule)(data_dir=data_dir or "data",
                                                                              num_workers=0)
        folder = dm.folder
        if not os.path.isdir(folder):
            raise PrepareError(f"{folder} not found: give --data-dir, the folder that holds "
                               f"{os.path.basename(folder)}/ (`vitlab fit` with the {kind} data module downloads it)")
    source = Source(kind, os.path.abspath(folder), dm.classes, in_chans=dm.native_chans, native_size=dm.native_size)
    for name, train in (("train", True), ("test", False)):
        try:
            images, labels = dm.load_split(train)  # (N, C, H, W) uint8, (N,) int64
        except (ValueError, RuntimeError, OSError) as e:
            raise PrepareError(" ".join(str(e).split())) from None
        images, labels = images[:limit].numpy(), labels[:limit].numpy()
        paths = os.path.join(tmp, f"{name}-images.npy"), os.path.join(tmp, f"{name}-labels.npy")
        np.save(paths[0], images)
        np.save(paths[1], labels)
        digest = hashlib.sha256(labels.tobytes()).hexdigest()[:16]
        source.splits.append(Split(name, len(labels), ArrayReader(*paths, split=name), digest))
    return source


# ----------------------------------------------------------------------------------------------- output
def job_of(source: Source, limit: int | None) -> dict:
    """What the output holds, to tell a rerun of the same command (resume) from another one."""
    return {"source": source.kind, "path": source.path, "limit": limit,
            "splits": {s.name: {"count": s.count, "fingerprint": s.fingerprint} for s in source.splits}}


def _describe(job: dict) -> str:
    return f"{job.get('source')} {job.get('path')}" + (f" --limit {job['limit']}" if job.get("limit") else "")


def check_output(out: str, job: dict, settings: dict, overwrite: bool, storage_options: dict | None) -> dict:
    """Refuse an output that holds something other than this job (unless ``overwrite``, which removes the split
    folders this command writes); returns the settings to use (a resumed job keeps its first run's)."""
    if not shards.is_remote(out) and os.path.exists(out) and not os.path.isdir(out):
        raise PrepareError(f"--out {out} is a file, not a folder")
    job_path = join(out, JOB_NAME)
    try:
        found = json.loads(shards.read_bytes(job_path, storage_options))
    except FileNotFoundError:
        found = None
    except json.JSONDecodeError:
        found = {}
    if overwrite:
        present = [s for s in shards.SPLITS if shards.list_files(join(out, s), storage_options, limit=1)]
        if present or found is not None:
            print(f"vitlab prepare: --overwrite: removing {', '.join(join(out, s) for s in present) or job_path}",
                  file=sys.stderr)
        for s in present:
            shards.remove_files(join(out, s), storage_options=storage_options)
        found = None
    elif found is not None:
        if any(found.get(k) != job[k] for k in ("source", "path", "limit")):
            raise PrepareError(f"{out} holds a vitlab prepare of {_describe(found)}, not of {_describe(job)}; choose "
                               f"another --out, or --overwrite to replace it")
        if found.get("splits") != job["splits"]:
            raise PrepareError(f"the files of {job['path']} changed since {out} was begun (images per split then: "
                               f"{ {k: v.get('count') for k, v in (found.get('splits') or {}).items()} }, now: "
                               f"{ {k: v['count'] for k, v in job['splits'].items()} }); --overwrite starts over")
        kept = {k: found.get(k, v) for k, v in settings.items()}
        changed = [f"--{k.replace('_', '-')} {kept[k]}" for k in settings if kept[k] != settings[k]]
        if changed:
            print(f"vitlab prepare: resuming with the first run's {', '.join(changed)}", file=sys.stderr)
        return kept
    elif shards.list_files(out, storage_options, limit=1):
        raise PrepareError(f"--out {out} is not empty and holds no vitlab prepare output; choose an empty or new "
                           f"folder, or pass --overwrite to write into it")
    shards.write_bytes(job_path, json.dumps({"format": shards.FORMAT, **job, **settings}, indent=1).encode(),
                       storage_options)
    return settings


def _chunk_index(filename: str) -> int:
    return int(filename.rsplit("-", 1)[1].split(".")[0])  # chunk-<rank>-<index>.bin


def repair_checkpoints(split_dir: str, storage_options: dict | None) -> None:
    """Make litdata's checkpoints of an interrupted run say where each worker really stopped, and keep only the
    error records of inputs before that point.

    litdata (0.2.x) resumes worker w at input ``inputs_done`` of its list, but counts there the samples it wrote
    in the last run: after inputs its fn left out (None), or after a second interruption, it would process inputs
    that are already in the shards again. It can also checkpoint a chunk whose upload had not finished. Here the
    chunks a checkpoint lists are checked to exist, and the position is recounted from them and the skip records.
    """
    files = shards.list_files(split_dir, storage_options)
    ck_dir = join(split_dir, ".checkpoints")
    records = _read_records(split_dir, "skipped", storage_options)
    try:
        config = json.loads(shards.read_bytes(join(ck_dir, "config.json"), storage_options))
    except FileNotFoundError:
        config = None
    skipped = {r["index"] for r in records}
    keep = []
    for w, items in enumerate(config["workers_user_items"] if config else []):
        path = join(ck_dir, f"checkpoint-{w}.json")
        try:
            checkpoint = json.loads(shards.read_bytes(path, storage_options))
        except FileNotFoundError:
            continue
        chunks = []
        for chunk in checkpoint["chunks"]:  # the chunks written before, in order; stop at one that is missing
            if chunk["filename"] not in files:
                break
            chunks.append(chunk)
        written, done = sum(c["chunk_size"] for c in chunks), 0
        while written and done < len(items):  # past the input of the last sample written
            written -= items[done] not in skipped
            done += 1
        before = set(items[:done])
        keep += [r for r in records if r["index"] in before]
        fixed = {**checkpoint, "chunks": chunks, "inputs_done": done, "done_till_index": done,
                 "samples_written": sum(c["chunk_size"] for c in chunks),
                 "next_chunk_index": _chunk_index(chunks[-1]["filename"]) + 1 if chunks else 0}
        if fixed != checkpoint:
            shards.write_bytes(path, json.dumps(fixed).encode(), storage_options)
    # the error records of inputs litdata will read again go; they are made again when met again
    errors_dir = join(split_dir, ERRORS_DIR)
    old = [name for name in files if name.startswith(ERRORS_DIR + "/")]
    shards.write_bytes(join(errors_dir, "skipped-resumed.json"), json.dumps(keep).encode(), storage_options)
    shards.remove_files(split_dir, [n for n in old if n != f"{ERRORS_DIR}/skipped-resumed.json"], storage_options)


def _read_records(split_dir: str, kind: str, storage_options: dict | None) -> list[dict]:
    """The error records (``skipped`` or ``failed``) of a split, one per input, in input order."""
    errors_dir = join(split_dir, ERRORS_DIR)
    found = {}
    for name in shards.list_files(errors_dir, storage_options):
        if name.startswith(kind + "-"):
            data = json.loads(shards.read_bytes(join(errors_dir, name), storage_options))
            for record in data if isinstance(data, list) else [data]:
                found[record["index"]] = record
    return [found[i] for i in sorted(found)]


@contextlib.contextmanager
def _litdata_run(quiet: bool = True):
    """Around ``litdata.optimize``: its chatter on stdout kept back (the progress bar, on stderr, stays); what it
    changes in this process put back after (the multiprocessing start method, the Ctrl-C handler); and Ctrl-C exits
    with status 130 instead of its 0."""
    from litdata.processing import data_processor

    method = multiprocessing.get_start_method(allow_none=True)
    handler = signal.getsignal(signal.SIGINT)
    litdata_handler = data_processor.DataProcessor._signal_handler

    def interrupted(self: Any, signum: int, frame: Any) -> None:
        for queue in getattr(self, "stop_queues", []):
            queue.put(None)
        for worker in getattr(self, "workers", []):
            worker.join(0)
        sys.stderr.write("\nvitlab prepare: interrupted; run the same command again to resume\n")
        os._exit(130)

    data_processor.DataProcessor._signal_handler = interrupted
    try:
        with contextlib.redirect_stdout(io.StringIO()) if quiet else contextlib.nullcontext():
            yield
    finally:
        data_processor.DataProcessor._signal_handler = litdata_handler
        signal.signal(signal.SIGINT, handler)
        multiprocessing.set_start_method(method, force=True)


def write_split(out: str, source: Source, split: Split, settings: dict, on_error: str,
                storage_options: dict | None) -> tuple[int, list[dict]]:
    """One split as a litdata optimized folder plus its meta; resumes an interrupted run. Returns (samples
    written, skip records)."""
    import litdata

    split_dir = join(out, split.name)
    with contextlib.suppress(ValueError):
        meta = shards.read_meta(split_dir, storage_options)
        print(f"{split.name}: already written ({meta['num_samples']} samples)", file=sys.stderr)
        return meta["num_samples"], meta["skipped"]
    files = shards.list_files(split_dir, storage_options)
    errors_dir = join(split_dir, ERRORS_DIR)
    shards.remove_files(split_dir, [n for n in files if n.startswith(f"{ERRORS_DIR}/failed-")], storage_options)
    if "index.json" not in files:
        resuming = any(n.startswith((".checkpoints/", "chunk-")) for n in files)
        if files:
            repair_checkpoints(split_dir, storage_options)
        workers = max(1, min(settings["num_workers"], split.count))
        print(f"{split.name}: {split.count} images -> {split_dir} ({workers} worker{'s' * (workers > 1)}"
              f"{', resuming' if resuming else ''})", file=sys.stderr, flush=True)
        # Fork on Linux: a spawned worker would import the vitlab command again (Lightning included), seconds per
        # worker and split. An http:// endpoint needs it anywhere: litdata's uploader processes do not import
        # vitlab, so they only get shards.allow_http_endpoint's fix by inheriting it.
        http = shards.is_remote(out) and shards.allow_http_endpoint(storage_options)
        fork = http or sys.platform.startswith("linux")
        try:
            with _litdata_run():
                litdata.optimize(
                    fn=SampleFn(split.reader, errors_dir, on_error, storage_options),
                    inputs=list(range(split.count)), output_dir=split_dir, chunk_bytes=settings["chunk_bytes"],
                    num_workers=workers, use_checkpoint=True,
                    # no index.json here, so "append" only skips litdata's check of the output, which on S3 refuses
                    # any folder that is not empty (the checkpoints of the run being resumed included)
                    mode="append", storage_options=dict(storage_options or {}),
                    start_method="fork" if fork else None)
        except RuntimeError:
            failed = _read_records(split_dir, "failed", storage_options)
            if failed:
                _close_progress_bars()
                raise PrepareError(f"cannot read {failed[0]['file']}: {failed[0]['error']} (--on-error skip leaves "
                                   f"unreadable images out; the same command resumes)") from None
            raise
    index = json.loads(shards.read_bytes(join(split_dir, "index.json"), storage_options))
    written = sum(chunk["chunk_size"] for chunk in index["chunks"])
    skipped = [{"file": r["file"], "error": r["error"]} for r in _read_records(split_dir, "skipped", storage_options)]
    if written + len(skipped) != split.count:
        raise RuntimeError(f"{split_dir}: litdata wrote {written} samples and {len(skipped)} were skipped, but the "
                           f"split has {split.count}; run again with --overwrite")
    shards.write_meta(split_dir, {
        "classes": source.classes, "num_samples": written, "source": source.describe(), "split": split.name,
        "in_chans": source.in_chans, "native_size": source.native_size, "skipped": skipped,
    }, storage_options)
    for name in (ERRORS_DIR, ".checkpoints"):  # litdata removes its checkpoints itself, unless it was stopped
        shards.remove_files(join(split_dir, name), storage_options=storage_options)
    return written, skipped


def _close_progress_bars() -> None:
    """Close the bar litdata leaves open when it fails, so that it is not drawn again below the error line."""
    with contextlib.suppress(Exception):
        from tqdm import tqdm

        for bar in list(getattr(tqdm, "_instances", [])):
            bar.close()


# ----------------------------------------------------------------------------------------------- CLI
def parse_bytes(text: str) -> int:
    """``"64MB"`` -> 64_000_000 (B, KB, MB, GB, or KiB, MiB, GiB)."""
    units = {"": 1, "b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "kib": 2**10, "mib": 2**20, "gib": 2**30}
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([a-z]*)\s*", text.lower())
    if not match or match.group(2) not in units or float(match.group(1)) * units[match.group(2)] < 1:
        raise PrepareError(f"--chunk-bytes {text!r}: expected a size such as 64MB, 512KB or 1GB")
    return int(float(match.group(1)) * units[match.group(2)])


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="vitlab prepare", description="Write a data set as litdata optimized shards (one folder per split "
        "with vitlab_meta.json), to a local folder or s3://bucket/prefix. Rerun the same command to resume.",
        epilog="sources: imagefolder PATH (train/ val/ test/ class folders, or one tree of class folders); "
               "fashion_mnist, cifar10, cifar100 [--data-dir DIR]")
    p.add_argument("source", metavar="SOURCE", help=f"one of {', '.join(SOURCES)}")
    p.add_argument("path", nargs="?", metavar="PATH", help="the image folder (imagefolder); for the others, as "
                   "--data-dir")
    p.add_argument("--out", required=True, help="output folder or s3://bucket/prefix")
    p.add_argument("--data-dir", help="where Fashion-MNIST's IDX files (default: Debian's "
                   "/usr/share/datasets/fashion-mnist) or cifar-10-batches-py / cifar-100-python (default: data) are")
    p.add_argument("--num-workers", type=int, help="litdata worker processes (default: the CPUs, at most 8)")
    p.add_argument("--chunk-bytes", default="64MB", help="shard size (default 64MB)")
    p.add_argument("--on-error", choices=("fail", "skip"), default="fail",
                   help="an unreadable image: stop naming it (exit 2), or leave it out, warn and list it in the meta")
    p.add_argument("--limit", type=int, help="only the first N samples of each split (quick runs, tests)")
    p.add_argument("--storage-options", help='JSON of boto3 client arguments, e.g. \'{"endpoint_url": '
                   '"http://127.0.0.1:9000"}\'')
    p.add_argument("--overwrite", action="store_true", help="replace the split folders of a non-empty --out")
    return p


def main(argv: list[str] | None = None) -> int:
    """``vitlab prepare``; returns the exit code (2: bad input or output, or an unreadable image under --on-error
    fail)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return run(args)
    except PrepareError as e:
        parser.exit(2, f"vitlab prepare: error: {' '.join(str(e).split())}\n")


def run(args: argparse.Namespace) -> int:
    if args.source not in SOURCES:
        raise PrepareError(f"unknown source {args.source!r}; choose imagefolder PATH, fashion_mnist, cifar10 or "
                           f"cifar100")
    if args.source == "imagefolder" and not args.path:
        raise PrepareError("imagefolder needs the PATH of the image folder")
    if args.source != "imagefolder" and args.path and args.data_dir and args.path != args.data_dir:
        raise PrepareError(f"{args.source}: give the data folder once, as PATH or --data-dir")
    for name in ("limit", "num_workers"):
        if getattr(args, name) is not None and getattr(args, name) < 1:
            raise PrepareError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    try:
        storage_options = json.loads(args.storage_options) if args.storage_options else {}
    except json.JSONDecodeError as e:
        raise PrepareError(f"--storage-options is not JSON: {e}") from None
    if not isinstance(storage_options, dict):
        raise PrepareError("--storage-options must be a JSON object, e.g. '{\"endpoint_url\": \"http://...\"}'")
    out = args.out if shards.is_remote(args.out) else os.path.abspath(args.out)
    if shards.is_remote(out):
        try:
            shards.bucket_and_key(out)
        except ValueError as e:
            raise PrepareError(f"--out {e}") from None
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    settings = {"num_workers": args.num_workers or min(8, cpus), "chunk_bytes": parse_bytes(args.chunk_bytes)}

    with tempfile.TemporaryDirectory(prefix="vitlab-prepare-") as tmp:
        if args.source == "imagefolder":
            source = image_folder_source(args.path, args.limit)
        else:
            source = array_source(args.source, args.data_dir or args.path, args.limit, tmp)
        if not any(s.count for s in source.splits):
            raise PrepareError(f"{source.path} has no images")
        try:
            settings = check_output(out, job_of(source, args.limit), settings, args.overwrite, storage_options)
            results = {s.name: write_split(out, source, s, settings, args.on_error, storage_options)
                       for s in source.splits}
        except _storage_errors() as e:
            raise PrepareError(f"--out {out}: {' '.join(str(e).split())}") from None
    print("vitlab prepare: " + "; ".join(f"{name}: {n} written, {len(skipped)} skipped"
                                         for name, (n, skipped) in results.items()) + f" -> {out}")
    return 0


def _storage_errors() -> tuple[type[Exception], ...]:
    """The errors of an unreachable or refused object store, reported as one line."""
    from botocore.exceptions import BotoCoreError, ClientError

    return BotoCoreError, ClientError, PermissionError


if __name__ == "__main__":
    raise SystemExit(main())
