"""Fine-tuning follows the weights' data config: where it is read from (timm names, hub folders, weights beside a
config.json, the Hugging Face cache, vitlab checkpoints), how ``vitlab fit`` fills the data arguments from it and
records them in config.yaml, a user's value winning, and checkpoints carrying data config and class names to
predict, attention maps and ONNX export. Real Lightning runs of a tiny model on test-written Fashion-MNIST files."""
import contextlib
import csv
import io
import json
import shutil
from pathlib import Path

import pytest
import torch
import yaml
from conftest import latest_run_folder
from data_files import write_fashion_mnist
from PIL import Image
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD

from vitlab import cli
from vitlab.data import FashionMNISTDataModule, ImageFolderDataModule
from vitlab.data.stats import FASHION_MNIST_CLASSES
from vitlab.models.data_config import class_names_of, data_config_of, follow_weights

ARCH = dict(embed_dim=32, depth=2, num_heads=2, mlp_ratio=2.0, patch_size=7, img_size=28, num_classes=10)
TINY = ["--model.arch.embed_dim", "32", "--model.arch.depth", "2", "--model.arch.num_heads", "2", "--model.arch.mlp_ratio", "2",
        "--model.arch.patch_size", "7", "--model.schedule.warmup_epochs", "0"]
TRAINER = ["--trainer.accelerator", "cpu", "--trainer.devices", "1", "--trainer.precision", "32-true",
           "--trainer.max_epochs", "1", "--trainer.enable_progress_bar", "false",
           "--trainer.enable_model_summary", "false", "--trainer.num_sanity_val_steps", "0", "--seed_everything", "0"]
HALF = {"mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5], "interpolation": "bicubic", "crop_pct": 0.9}


def hub_folder(folder: Path, pretrained_cfg: dict, in_chans: int = 3, **config) -> Path:
    """A hub-style folder as timm writes it: config.json (``pretrained_cfg``) + model.safetensors."""
    from safetensors.torch import save_file

    from vitlab.models.registry import get_config
    from vitlab.models.vit import VisionTransformer

    folder.mkdir(parents=True)
    torch.manual_seed(0)
    save_file(VisionTransformer(get_config(None, **ARCH, in_chans=in_chans)).state_dict(),
              str(folder / "model.safetensors"))
    (folder / "config.json").write_text(json.dumps({"architecture": "vitlab", "pretrained_cfg": pretrained_cfg,
                                                    **config}))
    return folder


def data_args(data_dir: Path, *extra: str) -> list[str]:
    return ["--data", "vitlab.data.FashionMNISTDataModule", "--data.data_dir", str(data_dir),
            "--data.batch_size", "16", "--data.num_workers", "0", "--data.val_split", "16", *extra]


def run(args: list[str]) -> str:
    """Run ``vitlab`` and return what it wrote on stderr."""
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        assert cli.main(args) == 0
    return err.getvalue()


def newest(runs: Path, name: str) -> Path:
    return latest_run_folder(runs / name)


def data_init_args(folder: Path) -> dict:
    return yaml.safe_load((folder / "config.yaml").read_text())["data"]["init_args"]


@pytest.fixture(scope="module")
def fitted(tmp_path_factory) -> dict:
    """A fit of a 3-channel tiny model on Fashion-MNIST (converted to RGB) from a hub folder whose config.json says
    mean/std 0.5, bicubic, crop 0.9."""
    root = tmp_path_factory.mktemp("fitted")
    write_fashion_mnist(root / "fm", n_train=48, n_test=8)
    weights = hub_folder(root / "weights", HALF)
    runs = root / "runs"
    err = run(["fit", *data_args(root / "fm", "--data.in_chans", "3"), *TINY, *TRAINER,
               "--model.pretrained", str(weights), "--runs_dir", str(runs), "--run_name", "a"])
    folder = newest(runs, "a")
    return {"root": root, "data": root / "fm", "weights": weights, "runs": runs, "folder": folder, "err": err,
            "ckpt": folder / "checkpoints" / "last.ckpt"}


# ---------------------------------------------------------------------------------------------- reading
def test_timm_names_give_their_registered_config():
    augreg = data_config_of("vit_small_patch16_224.augreg_in21k_ft_in1k")
    assert augreg == {"input_size": [3, 224, 224], "mean": (0.5, 0.5, 0.5), "std": (0.5, 0.5, 0.5),
                      "interpolation": "bicubic", "crop_pct": 0.9}
    deit = data_config_of("deit_small_patch16_224")  # no tag: timm's default one
    assert deit["mean"] == tuple(IMAGENET_DEFAULT_MEAN) and deit["std"] == tuple(IMAGENET_DEFAULT_STD)
    for unknown in ("not_a_model", "vit_small_patch16_224.no_such_tag", "missing/weights.safetensors", None):
        assert data_config_of(unknown) is None


def test_hub_folders_and_weights_beside_a_config(tmp_path):
    folder = hub_folder(tmp_path / "w", {"mean": [0.1], "std": [0.2], "input_size": [1, 28, 28]},
                        in_chans=1, label_names={"1": "b", "0": "a"})
    expected = {"input_size": [1, 28, 28], "mean": (0.1,), "std": (0.2,), "interpolation": "bicubic",
                "crop_pct": 0.875}  # what timm's resolve_data_config fills in for the keys left out
    assert data_config_of(folder) == data_config_of(folder / "model.safetensors") == expected
    assert class_names_of(folder) == ["a", "b"]
    torch.save({}, tmp_path / "alone.pth")
    assert data_config_of(tmp_path / "alone.pth") is None and class_names_of(tmp_path / "alone.pth") is None
    (folder / "config.json").write_text("{not json")
    with pytest.raises(ValueError, match="config.json"):
        data_config_of(folder)


def test_hf_hub_only_from_the_local_cache(tmp_path, monkeypatch):
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path))
    assert data_config_of("hf-hub:org/model") is None  # not cached: nothing is downloaded
    repo = tmp_path / "models--org--model"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text("abc")
    (repo / "snapshots" / "abc").mkdir(parents=True)
    (repo / "snapshots" / "abc" / "config.json").write_text(json.dumps({"pretrained_cfg": HALF,
                                                                        "label_names": ["x", "y"]}))
    assert data_config_of("hf-hub:org/model")["mean"] == (0.5, 0.5, 0.5)
    assert class_names_of("hf-hub:org/model") == ["x", "y"]
    (repo / "refs" / "v1").write_text("abc")
    assert data_config_of("hf-hub:org/model@v1")["interpolation"] == "bicubic"
    assert data_config_of("hf-hub:org/model@v2") is None and data_config_of("hf-hub:not/a/repo") is None


def test_checkpoints_carry_data_config_and_class_names(fitted, tmp_path):
    ckpt = torch.load(fitted["ckpt"], weights_only=True)
    assert ckpt["data_config"] == {"input_size": [3, 28, 28], "mean": (0.5, 0.5, 0.5), "std": (0.5, 0.5, 0.5),
                                   "interpolation": "bicubic", "crop_pct": 1.0}
    assert ckpt["class_names"] == FASHION_MNIST_CLASSES
    assert ckpt["skipped_steps"] == 0  # on_save_checkpoint keeps what it wrote before
    assert data_config_of(fitted["ckpt"]) == ckpt["data_config"]
    assert class_names_of(fitted["ckpt"]) == FASHION_MNIST_CLASSES
    old = {k: v for k, v in ckpt.items() if k not in ("data_config", "class_names")}
    torch.save(old, tmp_path / "old.ckpt")  # written before checkpoints stored them
    assert data_config_of(tmp_path / "old.ckpt") is None and class_names_of(tmp_path / "old.ckpt") is None
    (tmp_path / "bad.ckpt").write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="bad.ckpt"):
        data_config_of(tmp_path / "bad.ckpt")


# ---------------------------------------------------------------------------------------------- the CLI
def test_fit_takes_the_weights_data_config_and_records_it(fitted):
    args = data_init_args(fitted["folder"])
    assert (args["mean"], args["std"], args["interpolation"]) == (HALF["mean"], HALF["std"], "bicubic")
    assert args["crop_pct"] is None  # small images train uncropped, so eval stays uncropped
    line = next(line for line in fitted["err"].splitlines() if "data config" in line)
    assert "mean (0.5, 0.5, 0.5)" in line and "interpolation bicubic" in line and str(fitted["weights"]) in line
    assert "crop_pct 0.9" in line and "not used" in line


def test_follow_weights_converts_channels_and_keeps_what_the_user_set():
    imagenet = {"mean": IMAGENET_DEFAULT_MEAN, "std": IMAGENET_DEFAULT_STD, "interpolation": "bicubic",
                "crop_pct": 0.9}
    unset = dict.fromkeys(("in_chans", "mean", "std", "interpolation", "crop_pct"))
    gray = dict(unset)
    taken, overridden, unused = follow_weights(gray, FashionMNISTDataModule, imagenet)
    dm = FashionMNISTDataModule(mean=gray["mean"], std=gray["std"])
    assert gray["mean"] == dm.mean == (round(0.299 * 0.485 + 0.587 * 0.456 + 0.114 * 0.406, 4),)  # luma
    assert gray["crop_pct"] is None and unused == ["crop_pct 0.9 (this data trains on whole images)"]
    folder = {**unset, "std": (0.2, 0.2, 0.2), "mean": tuple(IMAGENET_DEFAULT_MEAN)}
    taken, overridden, unused = follow_weights(folder, ImageFolderDataModule, imagenet)
    assert folder["crop_pct"] == 0.9 and folder["interpolation"] == "bicubic" and not unused
    assert overridden == ["std (0.2, 0.2, 0.2) (weights: (0.229, 0.224, 0.225))"]  # kept; equal mean: no note
    assert folder["std"] == (0.2, 0.2, 0.2) and not any(t.startswith("mean") for t in taken)


def test_fit_from_a_vitlab_checkpoint_with_a_user_override(fitted):
    err = run(["fit", *data_args(fitted["data"], "--data.in_chans", "3", "--data.std", "[0.25, 0.25, 0.25]"),
               *TINY, *TRAINER, "--trainer.max_steps", "1", "--model.pretrained", str(fitted["ckpt"]),
               "--runs_dir", str(fitted["runs"]), "--run_name", "b"])
    folder = newest(fitted["runs"], "b")
    args = data_init_args(folder)
    assert args["mean"] == HALF["mean"] and args["std"] == [0.25, 0.25, 0.25]  # the checkpoint's, the user's
    assert "your std (0.25, 0.25, 0.25) (weights: (0.5, 0.5, 0.5)) overrides the weights'" in err
    assert torch.load(folder / "checkpoints" / "last.ckpt", weights_only=True)["data_config"]["std"] == (0.25,) * 3


def test_weights_without_a_data_config_keep_the_data_sets_own(fitted, tmp_path, capsys):
    plain = tmp_path / "plain.safetensors"  # the same weights, no config.json beside them
    shutil.copy(fitted["weights"] / "model.safetensors", plain)
    err = run(["validate", *data_args(fitted["data"], "--data.in_chans", "3"), *TINY, *TRAINER,
               "--model.pretrained", str(plain), "--runs_dir", str(tmp_path / "runs"), "--run_name", "v"])
    assert "carries no data config" in err
    assert data_init_args(newest(tmp_path / "runs", "v"))["mean"] is None
    broken = hub_folder(tmp_path / "broken", HALF)
    (broken / "config.json").write_text("{")
    with pytest.raises(SystemExit) as exc:
        cli.main(["validate", *data_args(fitted["data"]), *TINY, "--model.pretrained", str(broken)])
    assert exc.value.code == 2 and "config.json" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------- its users
def test_predict_uses_the_checkpoints_normalisation_and_class_names(fitted, tmp_path):
    ckpt = torch.load(fitted["ckpt"], weights_only=True)
    ckpt["data_config"].update(std=(0.3, 0.3, 0.3), crop_pct=0.8)
    ckpt["class_names"] = [f"c{i}" for i in range(10)]
    torch.save(ckpt, tmp_path / "named.ckpt")
    (tmp_path / "pred").mkdir()
    for i in range(3):
        Image.new("L", (30, 28), 40 * i).save(tmp_path / "pred" / f"{i}.png")
    with pytest.warns(UserWarning, match="class names"):
        run(["predict", *data_args(fitted["data"], "--data.in_chans", "3", "--data.predict_dir",
                                   str(tmp_path / "pred")), *TRAINER, "--ckpt_path", str(tmp_path / "named.ckpt"),
             "--runs_dir", str(tmp_path / "runs"), "--run_name", "p"])
    folder = newest(tmp_path / "runs", "p")
    args = data_init_args(folder)  # from the checkpoint being evaluated, its eval crop included
    assert args["std"] == [0.3, 0.3, 0.3] and args["crop_pct"] == 0.8
    with open(folder / "predictions.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 3 and all(r["class1"] == f"c{r['class_id1']}" for r in rows)


def test_attention_and_onnx_export_read_the_checkpoint(fitted, tmp_path, capsys):
    import onnx

    from vitlab.tools import attention, onnx_export

    model, info = attention.load_checkpoint(fitted["ckpt"])
    assert tuple(info["mean"]) == (0.5, 0.5, 0.5) and info["interpolation"] == "bicubic"
    assert info["classes"] == FASHION_MNIST_CLASSES
    Image.new("RGB", (28, 28), (10, 200, 30)).save(tmp_path / "x.png")
    assert attention.main(["--checkpoint", str(fitted["ckpt"]), "--images", str(tmp_path / "x.png"),
                           "--out", str(tmp_path / "maps")]) == 0
    assert (tmp_path / "maps" / "x.png").is_file()
    pytest.importorskip("onnxruntime")
    assert onnx_export.main(["--checkpoint", str(fitted["ckpt"]), "--out", str(tmp_path / "m.onnx")]) == 0
    props = {p.key: json.loads(p.value) for p in onnx.load(str(tmp_path / "m.onnx")).metadata_props}
    assert props["mean"] == props["std"] == [0.5, 0.5, 0.5] and props["input_size"] == [3, 28, 28]
    assert props["class_names"] == FASHION_MNIST_CLASSES and props["interpolation"] == "bicubic"
    assert "metadata: input_size, mean, std" in capsys.readouterr().out
