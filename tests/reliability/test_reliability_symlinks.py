"""Symlinks in data folders, with real image files and real links on disk: a linked file is read once under the
class folder it is in, a linked folder outside the tree is followed, and a folder link that loops or would read
images twice is an error naming the link and where it points (one line, exit 2 from `vitlab fit` and `vitlab
prepare`), never a silently larger, mislabelled data set."""
import os
from pathlib import Path

import pytest
from data_files import save_image
from torchvision.datasets import ImageFolder

from vitlab import cli
from vitlab.data import ImageFolderDataModule
from vitlab.data.image_folder import is_image_file
from vitlab.data.predict import list_image_files
from vitlab.data.scan import SymlinkError

CLASSES = ["cat", "dog", "fox"]


def samples(root: Path, split: str = "train") -> list[tuple[str, int]]:
    """(path relative to the split, label) of what the data module reads for ``split``."""
    dm = ImageFolderDataModule(data_dir=str(root), num_workers=0, batch_size=4, img_size=32)
    dm.setup("fit")
    dataset = (dm.train_set if split == "train" else dm.val_set).dataset  # Subset -> ImageFolder
    return [(os.path.relpath(p, root / split), y) for p, y in dataset.samples]


@pytest.fixture
def outside(tmp_path) -> Path:
    """Two images in a folder outside the data tree, and one in a subfolder."""
    folder = tmp_path / "elsewhere" / "more"
    (folder / "deeper").mkdir(parents=True)
    save_image(folder / "a.png", "RGB", size=(20, 20))
    save_image(folder / "b.jpg", "RGB", size=(20, 20))
    save_image(folder / "deeper" / "c.png", "L", size=(20, 20))
    return folder


def test_without_links_the_scan_is_torchvision_s(image_folder_root):
    """The same samples in the same order as torchvision's ImageFolder (the order prepare's fingerprints use)."""
    tv = ImageFolder(str(image_folder_root / "train"), is_valid_file=is_image_file).samples
    assert samples(image_folder_root) == [(os.path.relpath(p, image_folder_root / "train"), y) for p, y in tv]
    assert len(tv) == 24


def test_file_link_is_read_once_under_its_own_class(image_folder_root):
    (image_folder_root / "train" / "cat" / "from_dog.png").symlink_to("../dog/0.png")
    got = samples(image_folder_root)
    assert len(got) == 25 and len(set(got)) == 25  # the 24 files and the link, each once
    assert got.count(("cat/from_dog.png", 0)) == 1 and ("dog/0.png", 1) in got
    assert [p for p, _ in got].count("cat/from_dog.png") == 1


def test_folder_links_outside_the_tree_are_followed(image_folder_root, outside):
    (image_folder_root / "train" / "dog" / "more").symlink_to(outside, target_is_directory=True)
    fox = image_folder_root / "train" / "fox"
    fox.rename(outside.parent / "fox")  # the class folder itself a link, as in a tree of links to a shared disk
    fox.symlink_to(outside.parent / "fox", target_is_directory=True)
    got = samples(image_folder_root)
    linked = [s for s in got if s[0].startswith("dog/more/")]
    assert sorted(linked) == [("dog/more/a.png", 1), ("dog/more/b.jpg", 1), ("dog/more/deeper/c.png", 1)]
    assert sum(1 for _, y in got if y == 2) == 8  # fox's 8 images through the class-folder link
    assert len(got) == len(set(got)) == 27


@pytest.mark.parametrize("link, target", [
    ("cat/loop", ".."),                 # back to train/: every class again, under cat's label
    ("cat/self", "."),                  # its own folder
    ("cat/sub/up", "../.."),            # from deeper down
    ("cat/top", "{root}"),              # the data folder above train/
], ids=["parent", "self", "grandparent", "data-dir"])
def test_folder_link_loop_is_an_error_naming_it(image_folder_root, link, target):
    (image_folder_root / "train" / "cat" / "sub").mkdir()
    save_image(image_folder_root / "train" / "cat" / "sub" / "s.png", "RGB", size=(20, 20))
    path = image_folder_root / "train" / link
    target = target.format(root=image_folder_root)
    path.symlink_to(target, target_is_directory=True)
    with pytest.raises(SymlinkError) as err:
        samples(image_folder_root)
    message = str(err.value)
    assert message.startswith("symlink loop: ") and f"{path} -> {target}" in message and "\n" not in message


@pytest.mark.parametrize("case", ["into-another-class", "class-folder-alias", "two-links-one-folder"])
def test_folder_link_that_would_read_images_twice_is_an_error(image_folder_root, outside, case):
    train = image_folder_root / "train"
    if case == "into-another-class":
        link, target = train / "cat" / "dogs", train / "dog"
    elif case == "class-folder-alias":
        link, target = train / "kitten", Path("cat")
    else:
        (train / "cat" / "more").symlink_to(outside, target_is_directory=True)
        link, target = train / "dog" / "more_again", outside.parent
    link.symlink_to(target, target_is_directory=True)
    with pytest.raises(SymlinkError, match="would be read twice") as err:
        samples(image_folder_root)
    assert f"{link} -> {target}" in str(err.value)


def test_vitlab_fit_on_a_tree_with_a_loop_is_one_line_exit_2(image_folder_root, tmp_path, capsys):
    """`vitlab fit` stops while reading the tree, before training: exit 2, the last line names the link."""
    loop = image_folder_root / "train" / "dog" / "loop"
    loop.symlink_to("..", target_is_directory=True)
    runs = tmp_path / "runs"
    with pytest.raises(SystemExit) as exit_:
        cli.main(["fit", "--data", "ImageFolderDataModule", "--data.data_dir", str(image_folder_root),
                  "--data.img_size", "28", "--data.num_workers", "0", "--data.batch_size", "4",
                  "--model.arch.patch_size", "7", "--model.arch.embed_dim", "32", "--model.arch.depth", "1",
                  "--model.arch.num_heads", "2", "--trainer.accelerator", "cpu", "--trainer.max_steps", "1",
                  "--trainer.enable_progress_bar", "false", "--runs_dir", str(runs)])
    err = capsys.readouterr().err
    assert exit_.value.code == 2, err[-2000:]
    last = err.strip().splitlines()[-1]
    assert "symlink loop" in last and f"{loop} -> .." in last and "Traceback" not in err, err[-2000:]
    assert not list(runs.glob("*/version_*/checkpoints/*.ckpt"))


def test_vitlab_prepare_refuses_a_loop_in_one_line(image_folder_root, tmp_path, capsys):
    loop = image_folder_root / "val" / "fox" / "again"
    loop.symlink_to(image_folder_root / "val", target_is_directory=True)
    with pytest.raises(SystemExit) as exit_:
        cli.main(["prepare", "imagefolder", str(image_folder_root), "--out", str(tmp_path / "shards")])
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and err.count("\n") == 1
    assert err.startswith("vitlab prepare: error: symlink loop: ") and str(loop) in err


def test_predict_folder_reads_file_links_and_no_subfolders(tmp_path, image_folder_root):
    """Predict reads the image files directly in its folder (links to files included): a loop cannot recurse."""
    folder = tmp_path / "predict"
    folder.mkdir()
    save_image(folder / "x.png", "RGB", size=(20, 20))
    (folder / "y.png").symlink_to(image_folder_root / "val" / "cat" / "0.png")
    (folder / "loop").symlink_to(folder, target_is_directory=True)
    assert [os.path.basename(p) for p in list_image_files(folder)] == ["x.png", "y.png"]
