"""Nothing is written over without asking: `vitlab export`, `export-hub` and `attention` refuse an existing output
unless --overwrite, and always refuse an output that is their own input (through a symlink or a hard link too); a new
fit refuses a checkpoint folder that holds another run's checkpoints, before training, naming the folder."""
import hashlib
import os

import pytest
from PIL import Image
from reliability_helpers import CPU_TRAINER, TINY_MODEL, fashion_mnist_data

from vitlab import cli

MODEL = ["--model", "vit_micro_patch4_28", "--set", "depth=1"]


def refused(capsys, argv: list[str]) -> str:
    """Run ``vitlab ARGV``: exit 2 and one error line, returned."""
    with pytest.raises(SystemExit) as exit_info:
        cli.main(argv)
    assert exit_info.value.code == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert "error:" in lines[-1]
    return lines[-1]


def digest(folder) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha1(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def test_export_refuses_an_existing_out_unless_overwrite(tmp_path, capsys):
    out = tmp_path / "m.onnx"
    out.write_bytes(b"an earlier export")
    err = refused(capsys, ["export", *MODEL, "--out", str(out)])
    assert str(out) in err and "--overwrite" in err
    assert out.read_bytes() == b"an earlier export"
    assert cli.main(["export", *MODEL, "--out", str(out), "--overwrite", "--no-verify"]) == 0
    assert out.read_bytes()[:16] != b"an earlier export"[:16] and out.stat().st_size > 1000


@pytest.mark.parametrize("link", ["same", "symlink", "hardlink"])
def test_export_never_writes_over_its_input(tmp_path, capsys, link):
    weights = tmp_path / "model.pth"
    weights.write_bytes(b"the only copy of the weights")
    out = {"same": weights, "symlink": tmp_path / "link.onnx", "hardlink": tmp_path / "hard.onnx"}[link]
    if link == "symlink":
        out.symlink_to(weights)
    elif link == "hardlink":
        os.link(weights, out)
    for source in (["--checkpoint", str(weights)], ["--weights", str(weights), "--model", "vit_micro_patch4_28"]):
        err = refused(capsys, ["export", *source, "--out", str(out), "--overwrite"])
        assert "refusing to write over it" in err and str(weights) in err
    assert weights.read_bytes() == b"the only copy of the weights"


def test_export_hub_never_writes_over_its_checkpoint(tmp_path, capsys):
    ckpt = tmp_path / "last.ckpt"
    ckpt.write_bytes(b"a checkpoint")
    (tmp_path / "link").symlink_to(ckpt)
    for out in (ckpt, tmp_path / "link"):
        with pytest.raises(SystemExit) as exit_info:
            cli.main(["export-hub", str(ckpt), str(out), "--overwrite"])
        assert exit_info.value.code == 2
        assert "would replace the checkpoint" in capsys.readouterr().err
    assert ckpt.read_bytes() == b"a checkpoint"


def test_attention_refuses_earlier_maps_and_never_writes_over_an_input(tmp_path, capsys):
    out = tmp_path / "maps"
    out.mkdir()
    image = tmp_path / "x.png"
    Image.new("L", (28, 28), 128).save(image)
    (out / "x.png").write_bytes(b"an earlier map")
    err = refused(capsys, ["attention", *MODEL, "--images", str(image), "--out", str(out)])
    assert str(out / "x.png") in err and "--overwrite" in err
    assert (out / "x.png").read_bytes() == b"an earlier map"
    Image.new("L", (28, 28), 50).save(out / "x.png")  # an input image inside --out: its map would replace it
    before = (out / "x.png").read_bytes()
    err = refused(capsys, ["attention", *MODEL, "--images", str(out / "x.png"), "--out", str(out), "--overwrite"])
    assert "refusing to write over it" in err
    assert (out / "x.png").read_bytes() == before


RUN = ["fit", *fashion_mnist_data(batch_size=32, train=64, evaluate=32), *TINY_MODEL, *CPU_TRAINER,
       "--model.arch.patch_size", "7", "--trainer.enable_progress_bar", "false", "--trainer.max_steps", "2"]


def test_a_new_fit_never_writes_into_another_runs_checkpoint_folder(tmp_path, capsys, fashion_mnist_available):
    runs = tmp_path / "runs"
    assert cli.main([*RUN, "--runs_dir", str(runs), "--run_name", "a"]) == 0
    folder = runs / "a/version_0/checkpoints"
    assert (folder / "last.ckpt").is_file()
    before = digest(runs / "a")
    pointed = {  # three ways to aim a new run's checkpoints at run a's folder
        "checkpoint.dirpath": ["--checkpoint.dirpath", str(folder)],
        "a ModelCheckpoint in trainer.callbacks": ["--trainer.callbacks+", "lightning.pytorch.callbacks.ModelCheckpoint",
                                                   "--trainer.callbacks.dirpath", str(folder)],
        "a logger naming run a's folder": ["--trainer.logger", "lightning.pytorch.loggers.CSVLogger",
                                           "--trainer.logger.save_dir", str(runs), "--trainer.logger.name", "a",
                                           "--trainer.logger.version", "0"],
    }
    for how, args in pointed.items():
        err = refused(capsys, [*RUN, "--runs_dir", str(runs), "--run_name", "b", *args])
        assert f"checkpoint folder {folder}" in err and "another run" in err, how
        assert digest(runs / "a") == before, how
        assert not (runs / "b").exists(), how  # no empty version_N left behind
    # resuming run a from that folder, into that folder, is its own run: allowed
    assert cli.main([*RUN, "--runs_dir", str(runs), "--run_name", "a", "--checkpoint.dirpath", str(folder),
                     "--ckpt_path", "last", "--trainer.max_steps", "3"]) == 0
