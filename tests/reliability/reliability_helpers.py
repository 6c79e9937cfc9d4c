"""Helpers of the reliability tests: the tiny-run CLI arguments of tests/conftest.py, and callbacks put into
`vitlab fit` subprocesses with --trainer.callbacks.

tests/conftest.py is loaded by path, so this module also imports in the `vitlab fit` subprocesses, where tests/ is
not on sys.path."""
import hashlib
import importlib.util
import time
from pathlib import Path

from lightning.pytorch.callbacks import Callback

_spec = importlib.util.spec_from_file_location("vitlab_tests_root_conftest", Path(__file__).parents[1] / "conftest.py")
_root = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_root)
CPU_TRAINER, TINY_MODEL, fashion_mnist_data = _root.CPU_TRAINER, _root.TINY_MODEL, _root.fashion_mnist_data


class RecordBatches(Callback):
    """Append ``global_step hash-of-batch`` per training step to ``path``: the data order, comparable across runs."""

    def __init__(self, path: str) -> None:
        self.path = path

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        x, y = batch
        digest = hashlib.sha1(x.numpy().tobytes() + y.numpy().tobytes()).hexdigest()[:16]
        with open(self.path, "a") as f:
            f.write(f"{trainer.global_step} {digest}\n")


class StallAt(Callback):
    """At ``step`` (before training it), touch ``marker`` and sleep: a run to kill -9 at a known point."""

    def __init__(self, step: int, marker: str) -> None:
        self.step, self.marker = step, marker

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if trainer.global_step == self.step:
            Path(self.marker).touch()
            time.sleep(600)
