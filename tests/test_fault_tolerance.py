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


@pytest.mark.slow
def test_driver_killed_and_job_started_again_resumes(prepared, tmp_path):  # noqa: F811
    """The whole job (driver, its Ray, its workers) SIGKILLed mid-run; the same command again finishes
    the run from the last committed checkpoint, with the uninterrupted run's parameters."""
    import subprocess
    import sys

    from conftest import ROOT

    runs = str(tmp_path)
    args = [
        "--data",
        prepared["data"],
        "--tokenizer",
        prepared["tokenizer"],
        "--storage-path",
        runs,
        "--preset",
        "tiny",
        "--max-steps",
        "40",
        "--total-steps",
        "40",
        "--batch-size",
        "16",
        "--micro-batch-size",
        "8",
        "--lr",
        "2e-3",
        "--warmup-steps",
        "2",
        "--checkpoint-every",
        "4",
        "--log-every",
        "4",
        "--eval-every",
        "40",
        "--eval-instances",
        "16",
        "--seed",
        "3",
    ]
    job = [sys.executable, os.path.join(ROOT, "jobs", "pretrain.py")]
    env = {**os.environ, "RAY_ADDRESS": "local", "RAY_AUTH_MODE": "disabled"}
    proc = subprocess.Popen(
        [*job, *args, "--name", "killed"],
        env=env,
        start_new_session=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    first = os.path.join(runs, "killed", "step_00000008", "meta.json")
    deadline = time.time() + 240
    while time.time() < deadline and not os.path.exists(first):
        assert proc.poll() is None, "the job ended before it could be killed"
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not os.path.exists(os.path.join(runs, "killed", "step_00000040"))

    r = subprocess.run(
        [*job, *args, "--name", "killed"], env=env, capture_output=True, text=True, timeout=600
    )
    assert r.returncode == 0, r.stderr[-3000:]
    assert "resumed from the checkpoint of step" in r.stdout + r.stderr
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
    a = load_model_state(os.path.join(straight["run"], "step_00000040"))
    b = load_model_state(os.path.join(runs, "killed", "step_00000040"))
    assert all(torch.equal(a[k], b[k]) for k in a)
