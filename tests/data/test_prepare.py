"""`vitlab prepare`: data sets -> litdata shards (vitlab/data/shards.py), read back with litdata's StreamingDataset.

Every test writes real files and runs litdata's real worker processes; the object-store test runs moto's S3 server.
"""
import collections
import io
import json
import os
import signal
import socket
import subprocess
import sys
import time

import litdata
import numpy as np
import pytest
from conftest import FASHION_MNIST_DIR
from data_files import save_image, write_fashion_mnist
from PIL import Image

from vitlab.cli import main
from vitlab.data import shards
from vitlab.data.fashion_mnist import read_idx
from vitlab.data.image_io import ImageDecodeError
from vitlab.data.stats import CIFAR10_CLASSES, FASHION_MNIST_CLASSES


def prepare(*args):
    return main(["prepare", *map(str, args), "--num-workers", "1"])


def read_split(path, **kwargs) -> list[tuple[bytes, int]]:
    """Every sample of a split folder as (image bytes, label), in the order litdata reads them."""
    ds = litdata.StreamingDataset(str(path), **kwargs)
    return [(bytes(s["image"]), int(s["label"])) for s in (ds[i] for i in range(len(ds)))]


def pixels(data: bytes, mode: str) -> np.ndarray:
    return np.asarray(shards.decode_image(data, mode))


@pytest.fixture
def tree(tmp_path):
    """train/ (18 files) and val/ (12 files) of 3 classes: RGB and gray PNG, JPEG, and one BMP in train/fox."""
    root = tmp_path / "tree"
    for split, n in (("train", 6), ("val", 4)):
        for cls in ("cat", "dog", "fox"):
            (root / split / cls).mkdir(parents=True)
            for i in range(n):
                mode, ext = (("RGB", "png"), ("L", "png"), ("RGB", "jpg"))[i % 3]
                save_image(root / split / cls / f"{i}.{ext}", mode, size=(20 + i, 16))
    (root / "train" / "fox" / "5.jpg").unlink()
    save_image(root / "train" / "fox" / "5.bmp", "RGB", size=(12, 10))
    return root


def expected(root, split: str, classes: list[str]) -> collections.Counter:
    """(file bytes, label) of every image file of a split."""
    found = collections.Counter()
    for label, cls in enumerate(classes):
        for path in sorted((root / split / cls).iterdir()):
            found[(path.read_bytes(), label)] += 1
    return found


# ----------------------------------------------------------------------------------------------- image folders
def test_image_folder_round_trip(tree, tmp_path, capsys):
    out = tmp_path / "shards"
    assert prepare("imagefolder", tree, "--out", out, "--chunk-bytes", "4KB") == 0
    captured = capsys.readouterr()
    assert "train: 18 written, 0 skipped; val: 12 written, 0 skipped" in captured.out
    assert "Progress: 100%" in captured.err  # litdata's progress bar
    classes = ["cat", "dog", "fox"]
    for split, n in (("train", 18), ("val", 12)):
        meta = shards.read_meta(out / split)
        assert meta == {"format": 1, "classes": classes, "num_samples": n, "source": f"imagefolder:{tree}",
                        "split": split, "in_chans": 3, "native_size": None, "skipped": []}
        got = collections.Counter(read_split(out / split))
        want = expected(tree, split, classes)
        if split == "train":  # the BMP is stored as PNG with the same pixels
            bmp = (tree / "train" / "fox" / "5.bmp").read_bytes()
            del want[(bmp, 2)]
            png = [s for s in got if s[0].startswith(b"\x89PNG") and s not in want]
            assert len(png) == 1 and png[0][1] == 2
            assert (pixels(png[0][0], "RGB") == np.asarray(Image.open(io.BytesIO(bmp)).convert("RGB"))).all()
            del got[png[0]]
        assert got == want  # every file's bytes and label, once
    assert sorted(os.listdir(out)) == ["train", "val", "vitlab_prepare.json"]
    assert {name for name in os.listdir(out / "val") if not name.startswith("chunk-")} == {"index.json",
                                                                                            "vitlab_meta.json"}

    # the same command again finds it done; another source into it is refused, as is a folder of other files
    assert prepare("imagefolder", tree, "--out", out) == 0
    assert "train: already written (18 samples)" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_:
        prepare("imagefolder", tree, "--out", out, "--limit", "3")
    assert exit_.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "holds a vitlab prepare of imagefolder" in err and "--overwrite" in err
    other = tmp_path / "notes"
    other.mkdir()
    (other / "mine.txt").write_text("keep")
    with pytest.raises(SystemExit) as exit_:
        prepare("imagefolder", tree, "--out", other)
    assert exit_.value.code == 2 and "is not empty" in capsys.readouterr().err
    assert (other / "mine.txt").read_text() == "keep"


def test_single_tree_and_overwrite(tmp_path, capsys):
    """A tree of class folders without train/ is the train split; --overwrite replaces another prepare's splits
    and leaves other files alone."""
    root = tmp_path / "flat"
    for cls in ("a", "b"):
        (root / cls).mkdir(parents=True)
        save_image(root / cls / "x.png", "RGB")
    out = tmp_path / "out"
    out.mkdir()
    (out / "test").mkdir()
    (out / "test" / "old.bin").write_bytes(b"old shards")
    (out / "README").write_text("mine")
    assert prepare("imagefolder", root, "--out", out, "--overwrite") == 0
    assert "removing" in capsys.readouterr().err
    assert sorted(os.listdir(out)) == ["README", "train", "vitlab_prepare.json"]
    assert shards.read_meta(out / "train")["classes"] == ["a", "b"]
    assert sorted(label for _, label in read_split(out / "train")) == [0, 1]


# ----------------------------------------------------------------------------------------------- array sources
def test_fashion_mnist_limit_equals_idx_pixels(tmp_path, fashion_mnist_available):
    out = tmp_path / "fmnist"
    assert prepare("fashion_mnist", "--data-dir", FASHION_MNIST_DIR, "--limit", 40, "--out", out) == 0
    for split, prefix in (("train", "train"), ("test", "t10k")):
        images = read_idx(os.path.join(FASHION_MNIST_DIR, f"{prefix}-images-idx3-ubyte.gz"), 3)[:40]
        labels = read_idx(os.path.join(FASHION_MNIST_DIR, f"{prefix}-labels-idx1-ubyte.gz"), 1)[:40]
        samples = read_split(out / split)
        assert len(samples) == 40
        for (data, label), image, want in zip(samples, images, labels):  # one worker: in order
            assert data.startswith(b"\x89PNG") and label == want
            assert (pixels(data, "L") == image).all()
        meta = shards.read_meta(out / split)
        assert (meta["classes"], meta["in_chans"], meta["native_size"]) == (FASHION_MNIST_CLASSES, 1, 28)


def test_cifar10(tmp_path, cifar_root):
    import pickle

    out = tmp_path / "shards"
    assert prepare("cifar10", "--data-dir", cifar_root, "--limit", 10, "--out", out) == 0
    with open(cifar_root / "cifar-10-batches-py" / "data_batch_1", "rb") as f:
        batch = pickle.load(f, encoding="latin1")
    samples = read_split(out / "train")
    assert [label for _, label in samples] == batch["labels"][:10]
    for (data, _), row in zip(samples, batch["data"]):
        assert (pixels(data, "RGB") == row.reshape(3, 32, 32).transpose(1, 2, 0)).all()
    meta = shards.read_meta(out / "test")
    assert (meta["classes"], meta["num_samples"], meta["in_chans"], meta["native_size"]) == (CIFAR10_CLASSES, 10, 3, 32)


# ----------------------------------------------------------------------------------------------- errors
def test_unreadable_image_fail_then_skip(tree, tmp_path, capfd):  # capfd: the warning comes from a worker
    bad = tree / "val" / "dog" / "2.jpg"
    bad.write_bytes(b"\xff\xd8\xff not a jpeg")
    out = tmp_path / "shards"
    with pytest.raises(SystemExit) as exit_:
        prepare("imagefolder", tree, "--out", out, "--chunk-bytes", "2KB")
    assert exit_.value.code == 2
    err = capfd.readouterr().err
    assert "vitlab prepare: error: cannot read val/dog/2.jpg: " in err and "--on-error skip" in err
    assert shards.read_meta(out / "train")["num_samples"] == 18  # train was done before val failed
    with pytest.raises(ValueError, match="val has no vitlab_meta.json"):
        shards.read_meta(out / "val")

    # the same output with --on-error skip resumes val and leaves the file out
    assert prepare("imagefolder", tree, "--out", out, "--chunk-bytes", "2KB", "--on-error", "skip") == 0
    captured = capfd.readouterr()
    assert "warning: skipped val/dog/2.jpg" in captured.err
    assert "train: 18 written, 0 skipped; val: 11 written, 1 skipped" in captured.out
    meta = shards.read_meta(out / "val")
    assert meta["num_samples"] == 11 and [s["file"] for s in meta["skipped"]] == ["val/dog/2.jpg"]
    want = expected(tree, "val", ["cat", "dog", "fox"])
    del want[(bad.read_bytes(), 1)]
    assert collections.Counter(read_split(out / "val")) == want
    assert sorted(os.listdir(out / "val"))[-2:] == ["index.json", "vitlab_meta.json"]  # no records left behind
    assert not any(name.startswith(".") for name in os.listdir(out / "val"))


@pytest.mark.parametrize("args, message", [
    (["nonsense", "--out", "x"], "unknown source 'nonsense'"),
    (["imagefolder", "/no/such/folder", "--out", "x"], "/no/such/folder does not exist"),
    (["imagefolder", "{empty}", "--out", "x"], "has no class folders"),
    (["imagefolder", "--out", "x"], "imagefolder needs the PATH"),
    (["cifar100", "--data-dir", "{empty}", "--out", "x"], "cifar-100-python not found"),
    (["fashion_mnist", "--out", "x", "--storage-options", "[1]"], "--storage-options must be a JSON object"),
    (["fashion_mnist", "--out", "x", "--chunk-bytes", "lots"], "--chunk-bytes 'lots'"),
], ids=["unknown-source", "missing-path", "empty-folder", "no-path", "no-cifar", "storage-options", "chunk-bytes"])
def test_bad_input_is_one_line_exit_2(tmp_path, capsys, args, message):
    (tmp_path / "empty").mkdir()
    args = [a.replace("{empty}", str(tmp_path / "empty")) for a in args]
    with pytest.raises(SystemExit) as exit_:
        main(["prepare", *args])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("vitlab prepare: error: ") and err.count("\n") == 1 and message in err


def test_meta_and_decode_errors(tmp_path):
    (tmp_path / "split").mkdir()
    with pytest.raises(ValueError, match=r"split has no vitlab_meta.json"):
        shards.read_meta(tmp_path / "split")
    shards.write_bytes(str(tmp_path / "split" / "vitlab_meta.json"), json.dumps({"format": 99}).encode())
    with pytest.raises(ValueError, match=r"split: vitlab_meta.json is of format 99, this vitlab reads format 1"):
        shards.read_meta(tmp_path / "split")
    with pytest.raises(ImageDecodeError, match="sample 7"):
        shards.decode_image(b"\x89PNG\r\n\x1a\n truncated", "RGB", index=7)
    buf = io.BytesIO()
    Image.new("RGBA", (3, 2), (10, 20, 30, 0)).save(buf, "PNG")
    assert shards.decode_image(buf.getvalue(), "L").mode == "L"
    assert np.asarray(shards.decode_image(buf.getvalue(), "RGB")).tolist() == [[[10, 20, 30]] * 3] * 2


# ----------------------------------------------------------------------------------------------- resume
def _wait_for_reader(fifo, proc, timeout: float = 120.0) -> int:
    """Open ``fifo`` for writing once a litdata worker has opened it to read the "image" (it then blocks there, all
    inputs before it done); returns the descriptor."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)
        except OSError:  # ENXIO: no reader yet
            if proc.poll() is not None:
                raise AssertionError(f"prepare ended (exit {proc.returncode}) before reading {fifo}: "
                                     f"{proc.stdout.read()[-2000:]}")
            if time.monotonic() > deadline:
                raise AssertionError(f"no worker reached {fifo} in {timeout} s")
            time.sleep(0.05)


def _interrupt_at(fifos, cmd) -> None:
    """Run ``cmd`` until a worker blocks at each of ``fifos`` (named pipes standing in for image files), then kill
    it and everything it started."""
    proc = subprocess.Popen(cmd, start_new_session=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        fds = [_wait_for_reader(fifo, proc) for fifo in fifos]
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    for fd in fds:
        os.close(fd)


def _fifo_in_place_of(path):
    data = path.read_bytes()
    path.unlink()
    os.mkfifo(path)
    return data


def test_resume_after_kills_writes_every_sample_once(tmp_path):
    """Two workers (a/ and b/), each killed twice mid-way (once after leaving out an unreadable file), then the same
    command finishes: every image exactly once. litdata's own resume would repeat the samples after a skipped
    input and, after the second kill, everything the first resumed run wrote."""
    root = tmp_path / "tree"
    for i in range(40):
        (root / "ab"[i // 20]).mkdir(parents=True, exist_ok=True)
        save_image(root / "ab"[i // 20] / f"{i:02d}.png", "RGB", size=(24, 20))
    for name in ("a/03.png", "b/22.png"):
        (root / name).write_bytes(b"not an image")
    good = {p.relative_to(root).as_posix(): p.read_bytes() for p in root.rglob("*.png")}
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "vitlab", "prepare", "imagefolder", str(root), "--out", str(out), "--num-workers",
           "2", "--chunk-bytes", "4KB", "--on-error", "skip"]
    a1, a2, b1 = root / "a" / "09.png", root / "a" / "16.png", root / "b" / "31.png"
    saved = {path: _fifo_in_place_of(path) for path in (a1, a2, b1)}

    _interrupt_at([a1, b1], cmd)  # worker 0 stops at a/09, worker 1 at b/31
    assert any(name.startswith("chunk-") for name in os.listdir(out / "train"))
    os.remove(a1)
    a1.write_bytes(saved[a1])
    _interrupt_at([a2, b1], cmd)  # resumed: worker 0 gets to a/16, worker 1 stops at b/31 again
    for path in (a2, b1):
        os.remove(path)
        path.write_bytes(saved[path])
    done = subprocess.run(cmd, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "train: 38 written, 2 skipped" in done.stdout

    got = collections.Counter(data for data, _ in read_split(out / "train"))
    want = collections.Counter(data for name, data in good.items() if name not in ("a/03.png", "b/22.png"))
    assert got == want
    meta = shards.read_meta(out / "train")
    assert [s["file"] for s in meta["skipped"]] == ["a/03.png", "b/22.png"] and meta["num_samples"] == 38


# ----------------------------------------------------------------------------------------------- object store
@pytest.fixture
def s3(monkeypatch):
    """moto's S3 server on a free local port with a bucket "bucket"; yields the storage options to reach it."""
    import boto3
    import litdata.streaming.downloader as downloader
    from moto.server import ThreadedMotoServer

    for key, value in (("AWS_ACCESS_KEY_ID", "testing"), ("AWS_SECRET_ACCESS_KEY", "testing"),
                       ("AWS_DEFAULT_REGION", "us-east-1")):
        monkeypatch.setenv(key, value)
    for key in ("AWS_PROFILE", "AWS_ENDPOINT_URL", "AWS_SESSION_TOKEN", "VITLAB_OBSTORE_ALLOW_HTTP"):
        monkeypatch.delenv(key, raising=False)
    # what shards.allow_http_endpoint changes in this process is put back after the test
    monkeypatch.setattr(downloader, "_OBSTORE_CLIENT_OPTIONS", downloader._OBSTORE_CLIENT_OPTIONS)
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    options = {"endpoint_url": f"http://127.0.0.1:{port}"}
    boto3.client("s3", **options).create_bucket(Bucket="bucket")
    yield options
    server.stop()


def test_s3_round_trip(tmp_path, s3, capsys):
    data_dir = tmp_path / "idx"
    write_fashion_mnist(data_dir, n_train=30, n_test=12)
    out = "s3://bucket/fmnist"
    args = ["fashion_mnist", "--data-dir", data_dir, "--out", out, "--chunk-bytes", "4KB",
            "--storage-options", json.dumps(s3)]
    assert prepare(*args) == 0
    assert "train: 30 written, 0 skipped; test: 12 written, 0 skipped -> s3://bucket/fmnist" in capsys.readouterr().out

    names = shards.list_files(out, s3)
    assert {"vitlab_prepare.json", "train/index.json", "train/vitlab_meta.json", "test/index.json"} <= set(names)
    assert not any("/." in name for name in names)  # no checkpoints or error records left
    meta = shards.read_meta(f"{out}/train", s3)
    assert (meta["num_samples"], meta["classes"], meta["in_chans"]) == (30, FASHION_MNIST_CLASSES, 1)
    shards.allow_http_endpoint(s3)  # litdata's obstore client needs it for http:// (see its docstring)
    for split, prefix, n in (("train", "train", 30), ("test", "t10k", 12)):
        images = read_idx(str(data_dir / f"{prefix}-images-idx3-ubyte.gz"), 3)
        labels = read_idx(str(data_dir / f"{prefix}-labels-idx1-ubyte.gz"), 1)
        samples = read_split(f"{out}/{split}", storage_options=s3, cache_dir=str(tmp_path / "cache" / split))
        assert len(samples) == n
        for i, (data, label) in enumerate(samples):
            assert label == labels[i] and (pixels(data, "L") == images[i]).all()

    assert prepare(*args) == 0  # done already: nothing written again
    assert "train: already written (30 samples)" in capsys.readouterr().err
    with pytest.raises(ValueError, match="s3://bucket/nothing/train has no vitlab_meta.json"):
        shards.read_meta("s3://bucket/nothing/train", s3)


@pytest.mark.slow
def test_s3_resume_after_kill(tmp_path, s3, monkeypatch):
    """Killed while writing to S3 (chunks uploaded one by one, so some are there and some in flight), then the same
    command finishes: every image once."""
    monkeypatch.setenv("LITDATA_OPTIMIZE_UPLOAD_BATCH", "1")
    root = tmp_path / "tree"
    (root / "a").mkdir(parents=True)
    for i in range(30):
        save_image(root / "a" / f"{i:02d}.png", "RGB", size=(24, 20))
    (root / "a" / "04.png").write_bytes(b"not an image")
    good = [p.read_bytes() for p in sorted(root.rglob("*.png")) if p.name != "04.png"]
    stop = root / "a" / "21.png"
    saved = _fifo_in_place_of(stop)
    out = "s3://bucket/resume"
    cmd = [sys.executable, "-m", "vitlab", "prepare", "imagefolder", str(root), "--out", out, "--num-workers", "1",
           "--chunk-bytes", "4KB", "--on-error", "skip", "--storage-options", json.dumps(s3)]
    _interrupt_at([stop], cmd)
    assert any(name.startswith("train/chunk-") for name in shards.list_files(out, s3))
    os.remove(stop)
    stop.write_bytes(saved)
    done = subprocess.run(cmd, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    shards.allow_http_endpoint(s3)
    got = collections.Counter(data for data, _ in read_split(f"{out}/train", storage_options=s3,
                                                            cache_dir=str(tmp_path / "cache")))
    assert got == collections.Counter(good)
    assert [s["file"] for s in shards.read_meta(f"{out}/train", s3)["skipped"]] == ["a/04.png"]
