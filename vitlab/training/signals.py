"""Honest stops: SIGTERM (how SLURM and Kubernetes pre-empt), SIGINT (Ctrl-C) and SIGUSR1 end training at the end of
the current batch, write ``last.ckpt`` and end the command with exit status 128 + the signal number.

Lightning already turns SIGTERM into a stop at the end of a batch (``SIGTERMException``, which exits with status 0 and
writes nothing); :class:`SaveOnSignal` routes SIGINT and SIGUSR1 into the same path, writes ``last.ckpt`` in
``on_exception`` and records the signal, so the CLI can exit non-zero. A second Ctrl-C interrupts at once. Under a
SLURM job with auto-requeue, SIGUSR1 stays Lightning's (save and requeue).
"""
from __future__ import annotations

import signal
import sys
from typing import Any, Optional

import lightning as L
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.utilities.exceptions import SIGTERMException


class SaveOnSignal(Callback):
    """Stop at the end of the batch on SIGTERM/SIGINT/SIGUSR1, then write ``last.ckpt`` (see the module docstring).

    Attributes:
        signum: The signal that stopped training, None until one did.
    """

    def __init__(self) -> None:
        self.signum: Optional[int] = None
        self._previous: dict[int, Any] = {}

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        signals = [signal.SIGINT, signal.SIGTERM]
        slurm = trainer._accelerator_connector.cluster_environment
        if not (type(slurm).__name__ == "SLURMEnvironment" and getattr(slurm, "auto_requeue", False)):
            signals.append(signal.SIGUSR1)
        for signum in signals:
            self._previous[signum] = signal.getsignal(signum)
            signal.signal(signum, self._handler(trainer, signum))

    def _handler(self, trainer: L.Trainer, signum: int) -> Any:
        previous = self._previous[signum]

        def handle(received: int, frame: Any) -> None:
            if signum == signal.SIGINT and self.signum is not None:  # a second Ctrl-C: stop now
                raise KeyboardInterrupt
            self.signum = self.signum or received
            if signum == signal.SIGTERM and callable(previous):  # Lightning's own notifier (and DDP broadcast)
                previous(received, frame)
            trainer._signal_connector.received_sigterm = True  # Lightning stops at the end of this batch
            print(f"vitlab: {signal.Signals(received).name} received: stopping after this batch and writing "
                  f"last.ckpt", file=sys.stderr, flush=True)

        return handle

    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException) -> None:
        if not isinstance(exception, SIGTERMException):
            return
        self.signum = self.signum or signal.SIGTERM
        from vitlab.training.checkpointing import LastCheckpoint
        last = next((cb for cb in trainer.callbacks if isinstance(cb, LastCheckpoint)), None)
        if last is not None and last.dirpath:
            last._save_last_checkpoint(trainer, last._monitor_candidates(trainer))
        self._restore()

    def teardown(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        self._restore()

    def _restore(self) -> None:
        for signum, previous in self._previous.items():
            signal.signal(signum, previous if previous is not None else signal.SIG_DFL)
        self._previous = {}


__all__ = ["SaveOnSignal"]
