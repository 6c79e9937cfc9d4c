"""configs/slurm/multinode.sbatch run as SLURM runs it: the script itself, under an `srun` that starts one process per
task with the variables SLURM sets, so Lightning's SLURM environment detection (not vitlab) wires up the two nodes."""
import os
import socket
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import FASHION_MNIST_DIR

ROOT = Path(__file__).resolve().parents[1]

# what srun does for a job step: SLURM_NTASKS processes, each with its task's rank variables (one task per node here)
FAKE_SRUN = """#!/bin/bash
pids=()
for ((i = 0; i < SLURM_NTASKS; i++)); do
  SLURM_PROCID=$i SLURM_LOCALID=0 SLURM_NODEID=$i "$@" > "$TASK_LOGS/task$i.log" 2>&1 &
  pids+=($!)
done
rc=0
for p in "${pids[@]}"; do wait "$p" || rc=$?; done
exit $rc
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_sbatch_script_trains_on_two_nodes_through_lightnings_slurm_detection(tmp_path, fashion_mnist_available):
    bin_dir, logs = tmp_path / "bin", tmp_path / "logs"
    bin_dir.mkdir()
    logs.mkdir()
    srun = bin_dir / "srun"
    srun.write_text(FAKE_SRUN)
    srun.chmod(srun.stat().st_mode | stat.S_IEXEC)
    env = {**os.environ,
           "PATH": f"{bin_dir}:{Path(sys.executable).parent}:{os.environ['PATH']}",
           # as sbatch sets them for `--nodes=2 --ntasks-per-node=1`
           "SLURM_JOB_ID": "4242", "SLURM_JOB_NAME": "vitlab", "SLURM_NTASKS": "2", "SLURM_NTASKS_PER_NODE": "1",
           "SLURM_JOB_NUM_NODES": "2", "SLURM_NNODES": "2", "SLURM_NODELIST": "localhost",
           "MASTER_PORT": str(_free_port()), "TASK_LOGS": str(logs),
           "GPUS_PER_NODE": "1", "CONFIG": str(ROOT / "configs" / "quickstart.yaml")}
    runs = tmp_path / "runs"
    args = ["--trainer.accelerator", "cpu",  # after the script's own flags: later wins
            "--data.init_args.data_dir", FASHION_MNIST_DIR, "--data.init_args.train_subset", "256",
            "--data.init_args.eval_subset", "64", "--data.init_args.num_workers", "0",
            "--model.arch.depth", "1", "--trainer.max_epochs", "1", "--trainer.enable_progress_bar", "false",
            "--runs_dir", str(runs), "--run_name", "slurm"]
    result = subprocess.run(["bash", str(ROOT / "configs" / "slurm" / "multinode.sbatch"), *args], env=env,
                            cwd=tmp_path, capture_output=True, text=True, timeout=540)
    task_logs = [(logs / f"task{i}.log").read_text() for i in range(2)]
    assert result.returncode == 0, result.stderr[-2000:] + "\n".join(t[-2000:] for t in task_logs)
    for rank, text in enumerate(task_logs):  # Lightning's SLURMEnvironment set up the process group
        assert f"GLOBAL_RANK: {rank}, MEMBER: {rank + 1}/2" in text, text[-2000:]
    assert "x 2 processes" in task_logs[0]  # the global batch counts both nodes
    assert (runs / "slurm" / "version_0" / "checkpoints" / "last.ckpt").is_file()
    assert not (runs / "slurm" / "version_1").exists()  # one run folder, written by rank 0
