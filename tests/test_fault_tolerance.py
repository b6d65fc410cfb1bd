"""Faults during pretraining: a worker or the whole job killed with SIGKILL mid-run.

Both runs are compared with one uninterrupted reference run of the same 40 steps.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time

import psutil
import pytest
import torch
from conftest import ROOT
from test_pretrain import cfg, prepared, quiet  # noqa: F401  (fixture re-used)

from electra_ray.train.checkpoint import load_model_state
from electra_ray.train.trainer import pretrain

RUN = {"max_steps": 40, "total_steps": 40, "checkpoint_every": 4, "log_every": 4, "eval_every": 40}


@pytest.fixture(scope="module")
def reference(prepared, tmp_path_factory):  # noqa: F811
    """The step-40 parameters of an uninterrupted run."""
    run = pretrain(cfg(prepared, str(tmp_path_factory.mktemp("ref")), "straight", **RUN), **quiet)["run"]
    return load_model_state(os.path.join(run, "step_00000040"))


def assert_same_as_reference(reference, run: str) -> None:
    params = load_model_state(os.path.join(run, "step_00000040"))
    assert all(torch.equal(reference[k], params[k]) for k in reference), (
        "ends with the uninterrupted run's parameters"
    )


@pytest.mark.slow
def test_worker_killed_mid_run_restarts_from_the_last_checkpoint(prepared, reference, tmp_path, monkeypatch):  # noqa: F811
    runs = str(tmp_path)
    monkeypatch.setenv("RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S", "30")
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
    faulty = pretrain(cfg(prepared, runs, "faulty", max_failures=2, **RUN), **quiet)
    t.join(timeout=5)
    assert killed, "no training worker was found to kill"
    assert faulty["step"] == 40
    assert faulty["rank0_pid"] not in killed, "the run finished on a restarted worker"
    assert_same_as_reference(reference, faulty["run"])


@pytest.mark.slow
def test_driver_killed_and_job_started_again_resumes(prepared, reference, tmp_path):  # noqa: F811
    """The whole job (driver, its Ray, its workers) SIGKILLed mid-run; the same command again finishes
    the run from the last committed checkpoint, with the uninterrupted run's parameters."""
    runs = str(tmp_path)
    c = cfg(prepared, runs, "killed", **RUN)
    args = [
        "--data",
        c.data,
        "--tokenizer",
        c.tokenizer,
        "--storage-path",
        runs,
        "--name",
        "killed",
        "--preset",
        c.preset,
    ]
    for flag in (
        "max_steps",
        "total_steps",
        "batch_size",
        "micro_batch_size",
        "lr",
        "warmup_steps",
        "checkpoint_every",
        "log_every",
        "eval_every",
        "eval_instances",
        "seed",
    ):
        args += ["--" + flag.replace("_", "-"), str(getattr(c, flag))]
    job = [sys.executable, os.path.join(ROOT, "jobs", "pretrain.py"), *args]
    env = {**os.environ, "RAY_ADDRESS": "local", "RAY_AUTH_MODE": "disabled"}
    proc = subprocess.Popen(
        job, env=env, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    first = os.path.join(runs, "killed", "step_00000008", "meta.json")
    deadline = time.time() + 240
    while time.time() < deadline and not os.path.exists(first):
        assert proc.poll() is None, "the job ended before it could be killed"
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not os.path.exists(os.path.join(runs, "killed", "step_00000040"))

    r = subprocess.run(job, env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "resumed from the checkpoint of step" in r.stdout + r.stderr
    assert_same_as_reference(reference, os.path.join(runs, "killed"))
