"""Faults during pretraining: a training worker killed with SIGKILL mid-run."""

from __future__ import annotations

import os
import signal
import threading
import time

import psutil
import pytest
import torch
from test_pretrain import cfg, prepared, quiet  # noqa: F401  (fixture re-used)

from electra_ray.train.checkpoint import load_model_state
from electra_ray.train.trainer import pretrain


@pytest.mark.slow
def test_worker_killed_mid_run_restarts_from_the_last_checkpoint(prepared, tmp_path, monkeypatch):  # noqa: F811
    runs = str(tmp_path)
    monkeypatch.setenv("RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S", "30")
    straight = pretrain(
        cfg(
            prepared,
            runs,
            "straight",
            max_steps=40,
            total_steps=40,
            checkpoint_every=4,
            log_every=4,
            eval_every=40,
        ),
        **quiet,
    )

    killed = []

    def killer():
        first = os.path.join(runs, "faulty", "step_00000004", "meta.json")
        deadline = time.time() + 180
        while time.time() < deadline and not os.path.exists(first):
            time.sleep(0.05)
        for p in psutil.process_iter(["pid", "cmdline"]):
            if any("RayTrainWorker" in part for part in (p.info["cmdline"] or [])):
                os.kill(p.info["pid"], signal.SIGKILL)
                killed.append(p.info["pid"])
                return

    t = threading.Thread(target=killer, daemon=True)
    t.start()
    faulty = pretrain(
        cfg(
            prepared,
            runs,
            "faulty",
            max_steps=40,
            total_steps=40,
            checkpoint_every=4,
            log_every=4,
            eval_every=40,
            max_failures=2,
        ),
        **quiet,
    )
    t.join(timeout=5)
    assert killed, "no training worker was found to kill"
    assert faulty["step"] == 40
    assert faulty["rank0_pid"] not in killed, "the run finished on a restarted worker"
    a, b = (
        load_model_state(os.path.join(straight["run"], "step_00000040")),
        load_model_state(os.path.join(faulty["run"], "step_00000040")),
    )
    assert all(torch.equal(a[k], b[k]) for k in a), (
        "the restarted run ends with the uninterrupted run's parameters"
    )
