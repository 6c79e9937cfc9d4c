"""Training from litdata shards (``vitlab prepare`` -> ``StreamingDataModule``): the same images and transforms as
the in-memory path, exact mid-epoch resume, and two nodes (torchrun, c10d rendezvous, gloo) that together see every
sample once per epoch, reduce metrics over both and resume after the whole job is killed."""
import os
import signal
import socket
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import lightning as L
import pytest
import torch

from conftest import FASHION_MNIST_DIR
from streaming.probe import image_key

N = 256  # images per split in the test shards


@pytest.fixture(scope="module")
def fm_shards(tmp_path_factory, fashion_mnist_available) -> Path:
    """Fashion-MNIST's first N train and test images as shards, written by `vitlab prepare`."""
    from vitlab.tools.prepare import main

    out = tmp_path_factory.mktemp("shards") / "fm"
    assert main(["fashion_mnist", "--data-dir", FASHION_MNIST_DIR, "--out", str(out), "--limit", str(N),
                 "--num-workers", "1"]) == 0
    return out


def _streaming(shards: Path, **kwargs):
    from vitlab.data import StreamingDataModule
    return StreamingDataModule(data_dir=str(shards), batch_size=32, num_workers=0, **kwargs)


def test_meta_gives_classes_channels_and_the_data_sets_statistics(fm_shards):
    from vitlab.data import FashionMNISTDataModule
    dm = _streaming(fm_shards)
    fm = FashionMNISTDataModule(data_dir=FASHION_MNIST_DIR)
    assert dm.classes == fm.classes and (dm.in_chans, dm.img_size) == (1, 28)
    assert dm.mean == fm.mean and dm.std == fm.std and dm.data_config == fm.data_config


def test_eval_batches_equal_the_in_memory_path(fm_shards):
    """The test split streamed in order is the IDX files' first N test images through the same eval transform."""
    from vitlab.data import FashionMNISTDataModule
    dm = _streaming(fm_shards, img_size=32, in_chans=3)
    dm.setup("test")
    streamed = torch.cat([x for x, _ in dm.test_dataloader()])  # (N, 3, 32, 32)
    labels = torch.cat([y for _, y in dm.test_dataloader()])
    fm = FashionMNISTDataModule(data_dir=FASHION_MNIST_DIR, img_size=32, in_chans=3, num_workers=0)
    fm.setup("test")
    ref = torch.stack([fm.test_set[i][0] for i in range(N)])  # eval_subset-free: the first N in file order
    ref_labels = torch.tensor([int(fm.test_set[i][1]) for i in range(N)])
    torch.testing.assert_close(streamed, ref, rtol=0, atol=0)
    assert torch.equal(labels, ref_labels)


def _tiny_model():
    from vitlab.training import ImageClassifier
    return ImageClassifier(preset="vit_micro_patch4_28", arch={"depth": 1, "patch_size": 7, "num_classes": 10,
                                                               "in_chans": 1, "img_size": 28},
                           optim={"base_lr": 1e-3}, schedule={"warmup_epochs": 0})


class Record(L.Callback):
    def __init__(self) -> None:
        self.seen: list[tuple[int, str]] = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self.seen += [(trainer.global_step, image_key(x)) for x in batch[0]]


class Killed(Exception):
    pass


class KillAfter(L.Callback):
    """Writes a checkpoint after ``steps`` optimizer steps, as ``last.ckpt`` is written in training, then dies."""

    def __init__(self, steps: int, path: Path) -> None:
        self.steps, self.path = steps, path

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if trainer.global_step == self.steps:
            trainer.save_checkpoint(self.path)
            raise Killed


def _trainer(tmp_path, rec, callbacks=(), **kw):
    from vitlab.training.checkpointing import ResumeState  # what `vitlab fit` adds: restores the loader's place
    return L.Trainer(accelerator="cpu", devices=1, logger=False, enable_progress_bar=False,
                     enable_model_summary=False, num_sanity_val_steps=0, limit_val_batches=0,
                     default_root_dir=tmp_path, callbacks=[rec, ResumeState(), *callbacks], **kw)


@pytest.mark.parametrize("repeats", [1, 3])
def test_fit_resumes_mid_epoch_with_the_same_samples_and_augmentation(fm_shards, tmp_path, repeats):
    """An epoch stopped after 3 steps and resumed from its checkpoint trains on exactly the images (augmented
    alike) that the uninterrupted epoch trains on after step 3 (also with repeated augmentation)."""
    L.seed_everything(0)
    full = Record()
    _trainer(tmp_path / "a", full, max_epochs=2).fit(_tiny_model(), datamodule=_streaming(fm_shards,
                                                                                         repeated_aug=repeats))
    L.seed_everything(0)
    first = Record()
    stopped = _trainer(tmp_path / "b", first, max_epochs=2, callbacks=[KillAfter(3, tmp_path / "mid.ckpt")])
    with pytest.raises(Killed):
        stopped.fit(_tiny_model(), datamodule=_streaming(fm_shards, repeated_aug=repeats))
    L.seed_everything(0)
    rest = Record()
    _trainer(tmp_path / "c", rest, max_epochs=2).fit(_tiny_model(), datamodule=_streaming(fm_shards,
                                                                                         repeated_aug=repeats),
                                                     ckpt_path=tmp_path / "mid.ckpt")
    assert len(full.seen) == 2 * (N // 32) * 32  # two epochs of 8 batches
    assert first.seen + rest.seen == full.seen
    assert len({k for s, k in full.seen if s < N // 32} & {k for s, k in full.seen if s >= N // 32}) < N // 8
    # ^ two epochs of the same images, augmented apart (random crop + flip): few augmented copies coincide


def test_repeated_augmentation_on_shards(fm_shards):
    """repeated_aug 3: an epoch keeps its N samples, drawn from about N/3 images, each 3 times, each copy augmented
    apart; the drawn images change from epoch to epoch."""
    plain = _streaming(fm_shards, augment=False, repeated_aug=3)
    plain.setup("fit")
    loader = plain.train_dataloader()
    epochs = [[image_key(x) for xb, _ in loader for x in xb] for _ in range(2)]
    for keys in epochs:
        counts = Counter(keys)
        assert len(keys) == N and set(counts.values()) <= {1, 2, 3} and len(counts) <= N // 3 + 2
        assert sum(c == 3 for c in counts.values()) >= N // 3 - 2
    assert set(epochs[0]) != set(epochs[1])
    augmented = _streaming(fm_shards, augment=True, repeated_aug=3)
    augmented.setup("fit")
    xb, yb = next(iter(augmented.train_dataloader()))
    assert torch.equal(yb[0:3], yb[0].repeat(3)) and not torch.equal(xb[0], xb[1])  # copies of one image, apart


# ----------------------------------------------------------------------------------------------- two nodes
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _launch_two_nodes(shards: Path, runs: Path, probe: Path, port: int, extra: list[str]) -> list[subprocess.Popen]:
    """Two torchrun agents on localhost, one process each, meeting through the c10d rendezvous."""
    env = {**os.environ, "VITLAB_PROBE_DIR": str(probe), "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join([str(Path(__file__).parents[1]), os.environ.get("PYTHONPATH", "")])}
    args = ["fit", "-c", str(Path(__file__).parents[2] / "configs" / "quickstart.yaml"),
            "--data", "vitlab.data.StreamingDataModule", "--data.data_dir", str(shards), "--data.batch_size", "16",
            "--data.num_workers", "0", "--model.arch.depth", "1", "--model.schedule.warmup_epochs", "0",
            "--trainer.accelerator", "cpu", "--trainer.devices", "1", "--trainer.num_nodes", "2",
            "--trainer.strategy", "ddp", "--trainer.max_epochs", "3", "--trainer.enable_progress_bar", "false",
            "--trainer.callbacks+=streaming.probe.SeenSamples", "--last_every_n_steps", "2",
            "--runs_dir", str(runs), "--run_name", "nodes", *extra]
    agents = []
    for node in range(2):
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--nproc-per-node", "1",
               "--rdzv-backend", "c10d", "--rdzv-endpoint", f"127.0.0.1:{port}", "--rdzv-id", "vitlab-test",
               "-m", "vitlab.cli", *args]
        log = open(probe / f"node{node}.log", "a")
        agents.append(subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True))
    return agents


def _kill_tree(pid: int) -> None:
    """SIGKILL ``pid`` and every process below it (found through /proc), children first."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    order, todo = [], [pid]
    while todo:
        p = todo.pop()
        order.append(p)
        todo += children.get(p, [])
    for p in reversed(order):
        try:
            os.kill(p, signal.SIGKILL)
        except ProcessLookupError:
            pass


def _seen(probe: Path) -> list[tuple[int, int, str]]:
    rows = []
    for rank in (0, 1):
        path = probe / f"rank{rank}.txt"
        for line in path.read_text().splitlines() if path.exists() else []:
            epoch, step, label, key = line.split()
            rows.append((int(epoch), int(step), f"{label}:{key}"))
    return rows


def _every_training_image(shards: Path) -> Counter:
    from vitlab.data import StreamingDataModule
    dm = StreamingDataModule(data_dir=str(shards), batch_size=N, num_workers=0, augment=False)
    dm.setup("fit")
    x, y = next(iter(dm.train_dataloader()))
    return Counter(f"{int(yi)}:{image_key(xi)}" for xi, yi in zip(x, y))  # the N training images


def _check_epochs(rows: list, every: Counter, epochs: int) -> None:
    for epoch in range(epochs):
        seen = Counter(k for e, _, k in rows if e == epoch)
        assert seen == every, (f"epoch {epoch}: {sum((seen - every).values())} extra, "
                               f"{sum((every - seen).values())} missing")


def test_two_nodes_see_every_sample_once_per_epoch_and_reduce_metrics_over_both(fm_shards, tmp_path):
    """torchrun --nnodes 2 --nproc-per-node 1 on localhost (c10d rendezvous, gloo): `vitlab fit --trainer.num_nodes 2`
    from shards; the two nodes together train on every image exactly once per epoch, and the val/acc1 they log is
    the one a single process computes on the same weights."""
    every = _every_training_image(fm_shards)
    runs, probe = tmp_path / "runs", tmp_path / "probe"
    probe.mkdir()
    agents = _launch_two_nodes(fm_shards, runs, probe, _free_port(), ["--data.augment", "false",
                                                                       "--trainer.max_epochs", "2"])
    for a in agents:
        assert a.wait(timeout=400) == 0, (probe / "node0.log").read_text()[-3000:]
    rows = _seen(probe)
    assert {r for r in rows if r[0] == 0} and len(rows) == 2 * N
    assert Counter(int(p.name[4]) for p in probe.glob("rank*.txt")) == Counter({0: 1, 1: 1})
    _check_epochs(rows, every, 2)
    import csv
    last = runs / "nodes" / "version_0" / "checkpoints" / "last.ckpt"
    metrics = list(csv.DictReader(open(runs / "nodes" / "version_0" / "metrics.csv")))
    logged = [float(r["val/acc1"]) for r in metrics if r.get("val/acc1")][-1]
    out = subprocess.run([sys.executable, "-m", "vitlab.cli", "validate", "-c",
                          str(runs / "nodes" / "version_0" / "config.yaml"), "--ckpt_path", str(last),
                          "--trainer.num_nodes", "1", "--trainer.strategy", "auto"],
                         capture_output=True, text=True, timeout=300, env={**os.environ, "VITLAB_PROBE_DIR": str(
                             tmp_path), "PYTHONPATH": str(Path(__file__).parents[1])})
    assert out.returncode == 0, out.stderr[-3000:]
    val = list(csv.DictReader(open(runs / "nodes" / "version_0" / "validate" / "metrics.csv")))
    assert abs(float(val[-1]["val/acc1"]) - logged) < 1e-6


def test_two_nodes_resume_after_the_whole_job_is_killed(fm_shards, tmp_path):
    """Both nodes killed with SIGKILL (agents and workers) mid-run, relaunched with --ckpt_path last: training goes on
    at the checkpoint's step, and over the killed and the resumed run every epoch trains on every image once."""
    every = _every_training_image(fm_shards)
    runs, probe = tmp_path / "runs", tmp_path / "probe"
    probe.mkdir()
    os.environ["VITLAB_PROBE_SLEEP"] = "0.5"  # slow enough to be killed mid-run
    try:
        agents = _launch_two_nodes(fm_shards, runs, probe, _free_port(), ["--data.augment", "false"])
        last = runs / "nodes" / "version_0" / "checkpoints" / "last.ckpt"
        deadline = time.time() + 300
        while time.time() < deadline and not (last.is_file() and torch.load(last, weights_only=True)["global_step"]
                                               >= 4):
            assert all(a.poll() is None for a in agents), (probe / "node0.log").read_text()[-3000:]
            time.sleep(0.5)
        for a in agents:  # the whole job: agents and their workers (torchrun starts each worker in its own session)
            _kill_tree(a.pid)
            a.wait()
        step = torch.load(last, weights_only=True)["global_step"]
        before = [r for r in _seen(probe) if r[1] < step]
        for rank in (0, 1):
            (probe / f"rank{rank}.txt").rename(probe / f"killed{rank}.txt")
        os.environ["VITLAB_PROBE_SLEEP"] = "0"
        agents = _launch_two_nodes(fm_shards, runs, probe, _free_port(), ["--data.augment", "false",
                                                                           "--ckpt_path", "last"])
        for a in agents:
            assert a.wait(timeout=400) == 0, (probe / "node0.log").read_text()[-3000:]
    finally:
        os.environ.pop("VITLAB_PROBE_SLEEP", None)
    after = _seen(probe)
    assert after and min(r[1] for r in after) == step, (step, sorted({r[1] for r in after})[:3], [
        line for line in (probe / "node0.log").read_text().splitlines() if "Restor" in line or "resum" in line])
    _check_epochs(before + after, every, 3)
