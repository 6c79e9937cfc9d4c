"""Bounded configs and allowed classes: YAML that would expand without bound, an oversized or binary config file is
refused in one line naming it (exit 2); a config may name classes of vitlab.config_guard's allow-list only and no
function, so LambdaCallback and function-valued arguments are refused before anything is built or called, while the
allowed callbacks (and a user's own module, allowed with VITLAB_ALLOWED_CLASSES) still run."""
import os
import subprocess
import sys
import time
import tracemalloc
from pathlib import Path

import pytest
from reliability_helpers import CPU_TRAINER, TINY_MODEL, fashion_mnist_data

from vitlab import cli
from vitlab.config_guard import MAX_CONFIG_BYTES, ConfigError, check_text, read_config

# A "billion laughs": 9 levels of 9 aliases, 9**9 (387 million) strings once expanded, 400 bytes of text.
BOMB = "\n".join(['l0: &l0 ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]'] + [
    f"l{i}: &l{i} [{', '.join([f'*l{i - 1}'] * 9)}]" for i in range(1, 9)]) + "\n"
FIT = ["fit", "--data", "FashionMNISTDataModule"]
PAYLOAD = '''
"""A user's module: touch() writes MARKER, Record is a callback that writes RECORD each step."""
import os
from lightning.pytorch.callbacks import Callback


def touch(*args, **kwargs):
    open(os.environ["MARKER"], "w").close()


class Record(Callback):
    def on_train_batch_end(self, trainer, *args):
        with open(os.environ["RECORD"], "a") as f:
            f.write(f"{trainer.global_step}\\n")
'''


def refused(capsys, args: list[str]) -> str:
    """Run `vitlab` in-process; assert exit code 2 and return its one error line."""
    with pytest.raises(SystemExit) as exit_:
        cli.main(args)
    err = capsys.readouterr().err
    assert exit_.value.code == 2, err[-2000:]
    assert "Traceback" not in err
    return err.strip().splitlines()[-1]


@pytest.fixture
def payload(tmp_path, monkeypatch) -> Path:
    """``payload.py`` in its own folder on the path (here and in subprocesses), allowed with VITLAB_ALLOWED_CLASSES."""
    folder = tmp_path / "user_code"
    folder.mkdir()
    (folder / "payload.py").write_text(PAYLOAD)
    monkeypatch.syspath_prepend(str(folder))
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(folder), os.environ.get("PYTHONPATH", "")]))
    monkeypatch.setenv("VITLAB_ALLOWED_CLASSES", "payload")
    monkeypatch.setenv("MARKER", str(tmp_path / "PWNED"))
    monkeypatch.setenv("RECORD", str(tmp_path / "record.txt"))
    return tmp_path / "PWNED"


# ------------------------------------------------------------------------------------------------ bounded YAML
def test_billion_laughs_is_refused_in_under_a_second_with_little_memory():
    tracemalloc.start()
    start = time.perf_counter()
    with pytest.raises(ConfigError, match=r"bomb.yaml: YAML aliases expand to more than 100,000 nodes"):
        check_text(BOMB, "bomb.yaml")
    elapsed, (_, peak) = time.perf_counter() - start, tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert elapsed < 1.0 and peak < 5 * 2**20, (elapsed, peak)
    with pytest.raises(ConfigError, match="recursive YAML alias"):
        check_text("a: &a [1, *a]\n", "loop.yaml")


@pytest.mark.parametrize("how", ["-c", "--data FILE", "nested in -c", "inside a string value"])
def test_billion_laughs_config_is_one_line_exit_2_naming_the_file(tmp_path, capsys, how):
    bomb = tmp_path / "bomb.yaml"
    if how == "inside a string value":  # YAML in a string that jsonargparse loads again for an int
        flow = "{" + BOMB.strip().replace("\n", ", ") + "}"
        bomb.write_text("trainer:\n  max_epochs: '" + flow.replace("'", "''") + "'\n")
    else:
        bomb.write_text(BOMB)
    (tmp_path / "main.yaml").write_text(f"data: {bomb}\n")
    args = {"-c": ["-c", str(bomb)], "--data FILE": ["--data", str(bomb)],
            "nested in -c": ["-c", str(tmp_path / "main.yaml")], "inside a string value": ["-c", str(bomb)]}[how]
    start = time.perf_counter()
    line = refused(capsys, [*FIT, "--runs_dir", str(tmp_path), *args])
    assert time.perf_counter() - start < 15  # parser and all; without the bound it never ends
    if how == "inside a string value":
        assert "trainer.max_epochs" in line
    else:
        assert f"config file {bomb}: YAML aliases expand to more than 100,000 nodes" in line, line


def test_config_file_size_bound_is_1_mib(tmp_path, capsys):
    exact = tmp_path / "exact.yaml"
    exact.write_text("#" * (MAX_CONFIG_BYTES - 1) + "\n")
    assert len(read_config(str(exact))) == MAX_CONFIG_BYTES
    big = tmp_path / "big.yaml"
    big.write_text("#" * MAX_CONFIG_BYTES + "\n")
    line = refused(capsys, [*FIT, "--runs_dir", str(tmp_path), "-c", str(big)])
    assert f"config file {big} is 1,048,577 bytes; a config may be at most 1,048,576 bytes (1 MiB)" in line, line


@pytest.mark.parametrize("content, message", [
    (b"trainer:\n  max_epochs: 1\n\x00\x00\x00", "is binary (it holds NUL bytes), not a YAML config"),
    (b"trainer:\n  max_epochs: \xff\xfe1\n", "is not UTF-8 text (byte 23), not a YAML config"),
], ids=["nul-bytes", "not-utf8"])
@pytest.mark.parametrize("flag", ["-c", "--data"])
def test_binary_config_file_is_refused_naming_it(tmp_path, capsys, content, message, flag):
    path = tmp_path / "weights.bin"
    path.write_bytes(content)
    line = refused(capsys, [*FIT, "--runs_dir", str(tmp_path), flag, str(path)])
    assert f"config file {path} {message}" in line, line


# ------------------------------------------------------------------------------------------- allowed classes
def test_lambda_callback_with_os_system_is_refused_naming_key_and_value(tmp_path, capsys):
    config = tmp_path / "evil.yaml"
    config.write_text("trainer:\n  callbacks:\n  - class_path: lightning.pytorch.callbacks.LambdaCallback\n"
                      "    init_args:\n      on_train_start: os.system\n")
    line = refused(capsys, [*FIT, "--runs_dir", str(tmp_path), "-c", str(config)])
    assert line.startswith("error: trainer.callbacks: lightning.pytorch.callbacks.LambdaCallback is not allowed "
                           "in a config: a config may name classes of vitlab, lightning, torch.optim only"), line


@pytest.mark.parametrize("args, key, value", [
    (["--trainer.callbacks+", "payload.Record", "--model.arch.depth", "1"], None, None),  # the control: allowed
    (["--trainer.callbacks+", "lightning.pytorch.callbacks.ThroughputMonitor",
      "--trainer.callbacks.batch_size_fn", "payload.touch"], "trainer.callbacks[0].init_args.batch_size_fn",
     "payload.touch is a function"),
    (["--trainer.callbacks+", "lightning.pytorch.callbacks.ThroughputMonitor",
      "--trainer.callbacks.batch_size_fn", "os.system"], "trainer.callbacks: batch_size_fn",
     "os.system is not allowed"),
    (["--trainer.logger", "collections.OrderedDict"], "trainer.logger", "collections.OrderedDict is not allowed"),
], ids=["allowed-module-class", "function-of-an-allowed-module", "function-of-os", "class-outside"])
def test_functions_and_classes_outside_the_list_are_refused(tmp_path, capsys, payload, args, key, value):
    if key is None:  # payload.Record is allowed by VITLAB_ALLOWED_CLASSES: parsing goes on (print_config exits 0)
        with pytest.raises(SystemExit) as exit_:
            cli.main([*FIT, "--runs_dir", str(tmp_path), *args, "--print_config"])
        assert exit_.value.code == 0 and "class_path: payload.Record" in capsys.readouterr().out
        return
    line = refused(capsys, [*FIT, "--runs_dir", str(tmp_path), *args])
    assert line.startswith(f"error: {key}: {value}"), line
    assert not payload.exists()


def vitlab_fit(tmp_path: Path, *extra: str) -> subprocess.CompletedProcess:
    """A real tiny `vitlab fit` (2 steps) with ``extra`` arguments."""
    cmd = [sys.executable, "-m", "vitlab.cli", "fit", *fashion_mnist_data(batch_size=16, train=32, evaluate=16),
           *TINY_MODEL, *CPU_TRAINER, "--model.arch.patch_size", "7", "--model.arch.depth", "1",
           "--trainer.max_steps", "2", "--trainer.limit_val_batches", "1", "--trainer.enable_progress_bar", "false",
           "--runs_dir", str(tmp_path / "runs"), "--run_name", "r", *extra]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})


def test_vitlab_fit_refuses_lambda_callback_before_anything_runs(tmp_path, payload):
    """A real process: the LambdaCallback whose hook would write the marker (its module allowed, even) is refused
    at parse time; the marker is never written and no run folder is made."""
    config = tmp_path / "evil.yaml"
    config.write_text("trainer:\n  callbacks:\n  - class_path: lightning.pytorch.callbacks.LambdaCallback\n"
                      "    init_args:\n      on_train_start: payload.touch\n      setup: payload.touch\n")
    proc = vitlab_fit(tmp_path, "-c", str(config))
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert proc.stderr.strip().splitlines()[-1].startswith(
        "error: trainer.callbacks: lightning.pytorch.callbacks.LambdaCallback is not allowed in a config")
    assert not payload.exists() and not (tmp_path / "runs").exists()


def test_vitlab_fit_runs_allowed_callbacks(tmp_path, payload):
    """A real process with Lightning's EarlyStopping and LearningRateMonitor, a vitlab callback and a user's own
    (allowed by VITLAB_ALLOWED_CLASSES): it trains, each callback is built, the user's one runs every step."""
    config = tmp_path / "callbacks.yaml"
    config.write_text("trainer:\n  callbacks:\n"
                      "  - class_path: lightning.pytorch.callbacks.EarlyStopping\n"
                      "    init_args: {monitor: val/loss, patience: 3}\n"
                      "  - class_path: lightning.pytorch.callbacks.LearningRateMonitor\n"
                      "  - class_path: vitlab.tools.compare.run.EpochRecorder\n"
                      "  - class_path: payload.Record\n")
    proc = vitlab_fit(tmp_path, "-c", str(config))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (tmp_path / "record.txt").read_text().split() == ["1", "2"]
    saved = (tmp_path / "runs/r/version_0/config.yaml").read_text()
    for name in ("EarlyStopping", "LearningRateMonitor", "EpochRecorder", "payload.Record"):
        assert name in saved
    assert (tmp_path / "runs/r/version_0/checkpoints/last.ckpt").is_file() and not payload.exists()
