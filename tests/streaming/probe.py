"""A callback for the streaming tests' child processes: writes which training images each process saw.

One line per training sample, ``<epoch> <global step> <label> <sha1 of the image tensor>``, appended to
``$VITLAB_PROBE_DIR/rank<global rank>.txt`` and flushed at once (a killed process keeps what it wrote);
``$VITLAB_PROBE_SLEEP`` seconds of sleep per batch slow a run down enough to be killed mid-epoch.
"""
import hashlib
import os
import time

from lightning.pytorch import Callback


def image_key(x) -> str:
    """The identity of one image tensor (C, H, W)."""
    return hashlib.sha1(x.detach().cpu().contiguous().numpy().tobytes()).hexdigest()


class SeenSamples(Callback):
    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        x, y = batch
        path = os.path.join(os.environ["VITLAB_PROBE_DIR"], f"rank{trainer.global_rank}.txt")
        with open(path, "a") as f:
            for xi, yi in zip(x, y):
                f.write(f"{trainer.current_epoch} {trainer.global_step} {int(yi)} {image_key(xi)}\n")
            f.flush()
            os.fsync(f.fileno())
        time.sleep(float(os.environ.get("VITLAB_PROBE_SLEEP", "0")))
