"""vitlab bench-data on a tiny tree and its `vitlab prepare` shards (real loaders and workers, a few batches; no
timing assertions), and the Fashion-MNIST tree writer on test-written IDX files."""
import json

import numpy as np
import pytest
from data_files import save_image, write_fashion_mnist
from PIL import Image

from vitlab.cli import main as cli_main
from vitlab.data.fashion_mnist import read_idx
from vitlab.tools import bench_data, prepare


@pytest.fixture
def tree_and_shards(tmp_path):
    """42 small PNGs (train: 3 classes x 10, val: 3 x 4) and `vitlab prepare imagefolder` shards of them."""
    tree = tmp_path / "tree"
    for split, n in (("train", 10), ("val", 4)):
        for cls in ("cat", "dog", "fox"):
            (tree / split / cls).mkdir(parents=True)
            for i in range(n):
                save_image(tree / split / cls / f"{i}.png", ("RGB", "L")[i % 2], size=(20 + i, 18))
    out = tmp_path / "shards"
    assert prepare.main(["imagefolder", str(tree), "--out", str(out), "--num-workers", "1"]) == 0
    return tree, out


def test_every_source_and_worker_count_is_measured(tree_and_shards, tmp_path, capsys):
    tree, shards = tree_and_shards
    out = tmp_path / "bench.json"
    assert cli_main(["bench-data", "--folder", str(tree), "--shards", str(shards), "--workers", "0", "1", "2",
                     "--batch-size", "4", "--img-size", "16", "--warmup", "1", "--batches", "2", "--repeats", "1", "--rounds", "2",
                     "--augment", "both", "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    rows = {(r["source"], r["transform"], r["workers"]): r for r in result["rows"]}
    # shards of an image folder have no native size: the streaming side runs the same timm pipeline as the folder
    assert set(rows) == {(s, t, w) for s in ("imagefolder", "streaming") for t in ("imagenet-train", "imagenet-eval")
                         for w in (0, 1, 2)}
    for row in rows.values():
        assert row["img_s"] > 0 and len(row["img_s_runs"]) == len(row["round_img_s"]) == 2
        assert all(v > 0 for v in row["img_s_runs"])
        assert row["images"] == 2 * 2 * 4 and row["img_size"] == 16 and row["in_chans"] == 3
    assert rows["streaming", "imagenet-train", 0]["native_size"] is None
    assert result["settings"]["workers"] == [0, 1, 2] and result["machine"]["cpu"]
    assert len(result["machine"]["cpu_scaling"]) == 2 and all(x > 0 for x in result["machine"]["cpu_scaling"])
    assert set(result["transforms"]) == {"imagenet-train", "imagenet-eval"}
    table = capsys.readouterr().out
    assert "workers=0" in table and "workers=2" in table
    for source in ("imagefolder", "streaming"):
        for transform in ("imagenet-train", "imagenet-eval"):
            line = next(li for li in table.splitlines() if li.split()[:2] == [source, transform])
            assert len(line.split()) == 5 and all(float(v) > 0 for v in line.split()[2:])


def test_bad_options_stop_with_one_line(tree_and_shards, capsys):
    tree, _ = tree_and_shards
    for argv, says in ((["--workers", "0"], "give --folder"),
                       (["--folder", str(tree), "--batches", "0"], "--batches must be >= 1"),
                       (["--folder", str(tree / "nope")], "is not a folder")):
        with pytest.raises(SystemExit) as e:
            bench_data.main(argv)
        assert e.value.code == 2
        assert says in capsys.readouterr().err


@pytest.mark.parametrize("fmt", ["png", "jpg"])
def test_fashion_mnist_tree(tmp_path, fmt):
    idx = tmp_path / "idx"
    write_fashion_mnist(str(idx), n_train=30, n_test=12)  # labels cycle 0..9
    out = tmp_path / "fm"
    assert bench_data.main(["--make-fashion-mnist-tree", str(out), "--format", fmt, "--fashion-mnist-dir",
                            str(idx)]) == 0
    folders = bench_data.fashion_mnist_folders()
    assert folders[0] == "0_t-shirt_top" and folders[9] == "9_ankle_boot" and sorted(folders) == folders
    for split, n, prefix in (("train", 30, "train"), ("val", 12, "t10k")):
        assert sorted(p.name for p in (out / split).iterdir()) == folders
        files = sorted((out / split).glob(f"*/*.{fmt}"))
        assert len(files) == n
        images = read_idx(str(idx / f"{prefix}-images-idx3-ubyte.gz"), ndim=3)
        first = Image.open(out / split / folders[0] / f"00000.{fmt}")
        assert first.mode == "L" and first.size == (28, 28)
        if fmt == "png":  # lossless
            assert np.array_equal(np.asarray(first), images[0])
    with pytest.raises(SystemExit) as e:  # never written over
        bench_data.main(["--make-fashion-mnist-tree", str(out), "--fashion-mnist-dir", str(idx)])
    assert e.value.code == 2
