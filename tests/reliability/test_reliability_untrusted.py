"""Untrusted files: a pickle that would run code is refused wherever vitlab reads checkpoints (and runs nothing),
a malformed safetensors file is a ValueError (not a crash), and configs cannot run code."""
import json
import struct

import pytest
import torch
from safetensors.torch import save_file

from vitlab import cli
from vitlab.models.pretrained import UnsafeCheckpointError, read_state_dict


class RunsCode:
    """Unpickling this calls open(marker, "w"): the file appearing means the pickle ran code."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return open, (self.marker, "w")


@pytest.fixture
def evil_ckpt(tmp_path):
    marker = tmp_path / "PWNED"
    path = tmp_path / "evil.ckpt"
    torch.save({"state_dict": {"model.w": torch.zeros(1)}, "payload": RunsCode(marker)}, path)
    return path, marker


def test_pickle_that_runs_code_is_refused_as_pretrained_weights(evil_ckpt):
    path, marker = evil_ckpt
    with pytest.raises(UnsafeCheckpointError, match="refusing to load .*evil.ckpt.*nothing in it was executed"):
        read_state_dict(path)
    assert not marker.exists()


@pytest.mark.parametrize("subcommand, extra", [("test", []), ("fit", ["--weights_only", "false"])])
def test_pickle_that_runs_code_is_refused_as_ckpt_path(evil_ckpt, capsys, tmp_path, subcommand, extra):
    """Even `--weights_only false` does not make vitlab unpickle code: the checkpoint is checked first."""
    path, marker = evil_ckpt
    with pytest.raises(SystemExit) as exc:
        cli.main([subcommand, "--data", "FashionMNISTDataModule", "--runs_dir", str(tmp_path), "--ckpt_path",
                  str(path), *extra])
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith(f"error: refusing checkpoint '{path}'") and "would run code" in err, err
    assert not marker.exists()


def test_pickle_that_runs_code_is_refused_by_the_tools(evil_ckpt):
    from vitlab.tools.attention import load_checkpoint
    path, marker = evil_ckpt
    with pytest.raises(ValueError, match="weights_only=True"):
        load_checkpoint(path)
    assert not marker.exists()


def test_truncated_checkpoint_is_refused_before_the_run(tmp_path, capsys):
    path = tmp_path / "cut.ckpt"
    torch.save({"state_dict": {"model.w": torch.zeros(1000)}}, path)
    path.write_bytes(path.read_bytes()[:700])
    with pytest.raises(SystemExit):
        cli.main(["validate", "--data", "FashionMNISTDataModule", "--runs_dir", str(tmp_path), "--ckpt_path", str(path)])
    assert "error: refusing checkpoint" in capsys.readouterr().err


def _header(meta: dict) -> bytes:
    raw = json.dumps(meta).encode()
    return struct.pack("<Q", len(raw)) + raw


def malformed_safetensors(kind: str, tmp_path) -> bytes:
    good = tmp_path / "good.safetensors"
    save_file({"w": torch.arange(64, dtype=torch.float32)}, str(good))
    data = good.read_bytes()
    return {
        "empty": b"",
        "short": b"\x08\x00",
        "huge header length": struct.pack("<Q", 2**62) + b"{}",
        "header not json": struct.pack("<Q", 9) + b"{not json",
        "truncated data": data[:-100],
        "offsets out of range": _header({"w": {"dtype": "F32", "shape": [64], "data_offsets": [0, 10**9]}}) + b"\0" * 256,
        "unknown dtype": _header({"w": {"dtype": "Q99", "shape": [4], "data_offsets": [0, 16]}}) + b"\0" * 16,
        "shape does not match size": _header({"w": {"dtype": "F32", "shape": [8], "data_offsets": [0, 16]}}) + b"\0" * 16,
    }[kind]


@pytest.mark.parametrize("kind", ["empty", "short", "huge header length", "header not json", "truncated data",
                                  "offsets out of range", "unknown dtype", "shape does not match size"])
def test_malformed_safetensors_is_a_value_error(tmp_path, kind):
    path = tmp_path / "bad.safetensors"
    path.write_bytes(malformed_safetensors(kind, tmp_path))
    with pytest.raises(ValueError, match="bad.safetensors is not a valid safetensors file"):
        read_state_dict(path)


@pytest.mark.parametrize("config", [
    "model: !!python/object/apply:os.system ['touch {marker}']\n",
    "model:\n  preset: !!python/object/new:builtins.open ['{marker}', 'w']\n",
    "data:\n  class_path: builtins.open\n  init_args: {{file: '{marker}', mode: w}}\n",
    "trainer:\n  callbacks:\n  - class_path: builtins.open\n    init_args: {{file: '{marker}', mode: w}}\n",
], ids=["yaml-python-tag", "yaml-object-new", "class_path-not-a-data-module", "class_path-not-a-callback"])
def test_configs_cannot_run_code(tmp_path, capsys, config):
    """YAML is read with a safe loader (no python/* tags), and a class_path must name a subclass of the expected
    type, so a config cannot call arbitrary functions."""
    marker = tmp_path / "PWNED"
    path = tmp_path / "evil.yaml"
    path.write_text(config.format(marker=marker))
    with pytest.raises(SystemExit) as exc:
        cli.main(["fit", "--data", "FashionMNISTDataModule", "-c", str(path), "--runs_dir", str(tmp_path)])
    assert exc.value.code == 2 and "Traceback" not in capsys.readouterr().err
    assert not marker.exists()
