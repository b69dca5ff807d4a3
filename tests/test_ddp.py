"""Data-parallel training (DDP through accelerate) of stage 07, launched like on a GPU host:

    accelerate launch --config_file configs/accelerate/ddp.yaml --num_processes 2 -m sidlib.baselines ...

Here on CPU: the two processes talk over gloo (sidlib tells accelerate to use the CPU when no
GPU is visible). Only the main process evaluates, logs and writes.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys

from sidlib import paths, summary


def test_accelerate_launch_trains_sasrec_on_two_processes(smoke_stages):
    cmd = [sys.executable, "-m", "accelerate.commands.accelerate_cli", "launch",
           "--config_file", str(paths.REPO / "configs" / "accelerate" / "ddp.yaml"),
           "--num_processes", "2", "--main_process_port", "0",  # a free port: tests may run side by side
           "-m", "sidlib.baselines", "--profile", "smoke", "--models", "popularity,sasrec"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}  # 2 processes on a shared 2-core machine
    run = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300, cwd=paths.REPO)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    log = run.stdout
    assert "2 training processes (DDP)" in log
    assert log.count("epoch    1  loss") == 1  # only the main process logs

    reports = json.loads((smoke_stages / "07-baselines" / "reports.json").read_text())
    fit = reports["sasrec"]["fit"]
    assert fit["processes"] == 2
    assert fit["losses"][-1] < fit["losses"][0]  # the all-reduced training went somewhere
    assert len(fit["evals"]) == fit["epochs_run"] >= 2
    for name in ("popularity", "sasrec"):
        res = reports[name]["test"]
        assert res["n_users"] == 300  # every test user, evaluated once, by the main process
        assert all(0.0 <= v <= 1.0 for v in res["all"].values()), res["all"]
    assert reports["sasrec"]["test"]["all"]["mrr"] > 0
    # checkpoints of the unwrapped model (no DDP "module." prefix), so a single process can load them
    import torch

    last = torch.load(smoke_stages / "07-baselines" / "ckpt_sasrec" / "last.pt", weights_only=False)
    assert not any(k.startswith(("module.", "model.")) for k in last["model"])

    metrics = summary.load("smoke")["stages"]["baselines"]["metrics"]
    assert metrics["sasrec"]["processes"] == 2 and "processes" not in metrics["popularity"]
