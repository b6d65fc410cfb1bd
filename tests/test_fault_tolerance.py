"""Faults during pretraining: a worker or the whole job killed with SIGKILL mid-run, an S3 outage,
non-finite losses, a run resumed twice.

The killed, cut-off and resumed runs are compared with one uninterrupted reference run of the
same 40 steps.
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
from relay import FlakyProxy
from test_pretrain import cfg, cli_args, quiet

from electra_ray.train.checkpoint import load_model_state
from electra_ray.train.trainer import pretrain

# 40 steps of 32 on two of the sample's instance shards (~1,050 instances): the run crosses the end
# of its first epoch (step 32), which test_resume_twice_and_at_an_epoch_boundary stops at.
RUN = {
    "max_steps": 40,
    "total_steps": 40,
    "batch_size": 32,
    "checkpoint_every": 10,
    "log_every": 2,
    "eval_every": 40,
}


@pytest.fixture(scope="module")
def small(prepared, tmp_path_factory):  # noqa: F811
    """The prepared sample with its instances cut to two of its shards."""
    import shutil

    from electra_ray.train.data import instance_shards

    folder = tmp_path_factory.mktemp("two_shards")
    for f in instance_shards(prepared["data"])[3:5]:
        shutil.copy(f, folder)
    return {**prepared, "data": str(folder)}


@pytest.fixture(scope="module")
def reference(small, tmp_path_factory):
    """The uninterrupted run: its folder and its step-40 parameters."""
    run = pretrain(cfg(small, str(tmp_path_factory.mktemp("ref")), "straight", **RUN), **quiet)["run"]
    return {"run": run, "params": load_model_state(os.path.join(run, "step_00000040"))}


def assert_same_as_reference(reference, run: str) -> None:
    import io

    from electra_ray import storage

    blob = storage.read_bytes(storage.join(run, "step_00000040", "model.pt"))
    params = torch.load(io.BytesIO(blob), map_location="cpu", weights_only=True)
    want = reference["params"]
    assert all(torch.equal(want[k], params[k]) for k in want), "ends with the uninterrupted run's parameters"


@pytest.mark.slow
def test_worker_killed_mid_run_restarts_from_the_last_checkpoint(small, reference, bucket, monkeypatch):
    """Run folder on S3 (the moto server): a training worker SIGKILLed after the first checkpoint."""
    from electra_ray import storage

    runs = f"{bucket}/runs"
    monkeypatch.setenv("RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S", "30")
    killed = []

    def killer():
        first = f"{runs}/faulty/step_00000010/meta.json"
        deadline = time.time() + 180
        while time.time() < deadline and not storage.exists(first):
            time.sleep(0.1)
        for p in psutil.process_iter(["pid", "cmdline"]):
            if any("RayTrainWorker" in part for part in (p.info["cmdline"] or [])):
                os.kill(p.info["pid"], signal.SIGKILL)
                killed.append(p.info["pid"])
                return

    t = threading.Thread(target=killer, daemon=True)
    t.start()
    faulty = pretrain(cfg(small, runs, "faulty", max_failures=2, **RUN), **quiet)
    t.join(timeout=5)
    assert killed, "no training worker was found to kill"
    assert faulty["step"] == 40
    assert faulty["rank0_pid"] not in killed, "the run finished on a restarted worker"
    assert_same_as_reference(reference, faulty["run"])


@pytest.mark.slow
def test_driver_killed_and_job_started_again_resumes(small, reference, tmp_path):
    """The whole job (driver, its Ray, its workers) SIGKILLed mid-run; the same command again finishes
    the run from the last committed checkpoint, with the uninterrupted run's parameters."""
    runs = str(tmp_path)
    c = cfg(small, runs, "killed", **RUN)
    args = [*cli_args(c), "--storage-path", runs, "--name", "killed"]
    job = [sys.executable, os.path.join(ROOT, "jobs", "pretrain.py"), *args]
    env = {**os.environ, "RAY_ADDRESS": "local", "RAY_AUTH_MODE": "disabled"}
    proc = subprocess.Popen(
        job, env=env, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    # the step-20 checkpoint in the folder: the step-10 one is committed (Ray's snapshot names it)
    first = os.path.join(runs, "killed", "step_00000020", "meta.json")
    deadline = time.time() + 240
    while time.time() < deadline and not os.path.exists(first):
        assert proc.poll() is None, "the job ended before it could be killed"
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not os.path.exists(os.path.join(runs, "killed", "step_00000040"))

    r = subprocess.run(job, env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    out = r.stdout + r.stderr
    assert "resumed from the checkpoint of step" in out
    # the console shows each step line once, without Ray Train's own dump of every report
    assert len([ln for ln in out.splitlines() if "step      40 | loss" in ln]) == 1, out[-3000:]
    assert "Reporting training result" not in out, out[-3000:]
    assert_same_as_reference(reference, os.path.join(runs, "killed"))


def test_a_skipped_step_changes_nothing():
    """The optimizer's masked step: bitwise no change on a non-finite gradient, the plain update otherwise."""
    from electra_ray.train.optim import AdamNoBiasCorrection

    torch.manual_seed(0)
    nets = [torch.nn.Linear(6, 4) for _ in range(2)]
    nets[1].load_state_dict(nets[0].state_dict())
    opts = [AdamNoBiasCorrection(n.parameters(), lr=1e-2, weight_decay=0.01) for n in nets]
    x = torch.randn(5, 6)
    for _ in range(3):
        for net, opt, ok in zip(nets, opts, (None, torch.tensor(True))):
            net(x).pow(2).sum().backward()
            opt.step(ok=ok)
            opt.zero_grad()
    for a, b in zip(nets[0].parameters(), nets[1].parameters()):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)
    before = [p.clone() for p in nets[1].parameters()]
    moments = [(s["exp_avg"].clone(), s["exp_avg_sq"].clone()) for s in opts[1].state.values()]
    (nets[1](x).sum() * float("nan")).backward()
    opts[1].step(ok=torch.isfinite(torch.nn.utils.clip_grad_norm_(nets[1].parameters(), 1.0)))
    assert all(torch.equal(a, b) for a, b in zip(before, nets[1].parameters()))
    after = [(s["exp_avg"], s["exp_avg_sq"]) for s in opts[1].state.values()]
    assert all(torch.equal(m0, m1) and torch.equal(v0, v1) for (m0, v0), (m1, v1) in zip(moments, after))


def test_nonfinite_losses_are_skipped_then_rolled_back(prepared, tmp_path):  # noqa: F811
    """NaN losses injected at data batches 1, 5, 6, 7: the first is skipped and counted; the next three
    (3 since the step-4 checkpoint) roll the run back to step 4, and it finishes on the batches after them."""
    import json

    c = cfg(
        prepared,
        str(tmp_path),
        "nan",
        max_steps=12,
        total_steps=12,
        checkpoint_every=4,
        log_every=2,
        eval_every=12,
        inject_nonfinite=(1, 5, 6, 7),
        nonfinite_rollback=3,
    )
    s = pretrain(c, **quiet)
    assert s["step"] == 12
    final = s["final"]
    assert final["nonfinite_steps"] == 4 and final["rollbacks"] == 1
    assert final["data_batch"] == 16, "the four batches between the checkpoint and the rollback were skipped"
    events = [json.loads(ln) for ln in open(os.path.join(s["run"], "events.jsonl"))]
    assert [(e["event"], e["step"], e["rolled_back_to"]) for e in events] == [("rollback", 8, 4)]
    steps = [json.loads(ln)["step"] for ln in open(os.path.join(s["run"], "metrics.jsonl"))]
    assert steps == [2, 4, 6, 8, 10, 12], "metrics.jsonl keeps the steps the model really has"
    params = load_model_state(os.path.join(s["run"], "step_00000012"))
    assert all(torch.isfinite(v).all() for v in params.values())

    # a run that keeps diverging stops with a clear error instead of looping
    bad = cfg(
        prepared,
        str(tmp_path),
        "diverging",
        max_steps=12,
        checkpoint_every=4,
        log_every=2,
        inject_nonfinite=tuple(range(2, 40)),
        nonfinite_rollback=2,
        max_rollbacks=1,
        max_failures=0,
    )
    with pytest.raises(Exception, match="keeps diverging"):
        pretrain(bad, **quiet)


def test_ray_train_storage_rides_out_a_short_outage(s3_server, bucket, monkeypatch):
    """The pyarrow filesystem Ray Train's controller writes its checkpoint bookkeeping through
    (synchronously: a failed write ends the run) retries a request through a 4-s outage; with
    pyarrow's default 3 attempts the same write fails in about 1.5 s. An endpoint that stays down
    still fails, naming the operation."""
    import pyarrow.fs as pafs

    from electra_ray.train.trainer import storage_for_ray

    proxy = FlakyProxy(s3_server)
    monkeypatch.setenv("AWS_ENDPOINT_URL", proxy.endpoint)
    try:
        where = storage_for_ray(f"{bucket}/runs")
        fs, root = where["storage_filesystem"], where["storage_path"]
        default = pafs.S3FileSystem(region="us-east-1", endpoint_override=proxy.endpoint)
        for f in (fs, default):
            with f.open_output_stream(f"{root}/before.json") as out:
                out.write(b"{}")
        proxy.cut()
        threading.Timer(4.0, proxy.restore).start()
        with pytest.raises(OSError, match="NETWORK_CONNECTION"):
            with default.open_output_stream(f"{root}/default.json") as out:
                out.write(b"{}")
        with fs.open_output_stream(f"{root}/snapshot.json") as out:  # blocks until the relay is back
            out.write(b'{"step": 10}')
        assert proxy.up and proxy.refused >= 2
        with fs.open_input_stream(f"{root}/snapshot.json") as src:
            assert src.read() == b'{"step": 10}'
        monkeypatch.setenv("AWS_MAX_ATTEMPTS", "2")  # the standard variable bounds the retries
        proxy.cut()
        with pytest.raises(OSError, match="NETWORK_CONNECTION"):
            with storage_for_ray(f"{bucket}/runs")["storage_filesystem"].open_output_stream(
                f"{root}/down.json"
            ) as out:
                out.write(b"{}")
    finally:
        proxy.close()


@pytest.mark.slow
def test_s3_outage_during_checkpoint_uploads(small, reference, s3_server, bucket, monkeypatch, capfd):
    """The S3 endpoint goes away for a while right after a checkpoint is committed: the next uploads
    retry, training goes on meanwhile (up to the checkpoint after), every checkpoint in the bucket
    is complete, the run ends with the parameters of the uninterrupted run, and no credential is
    printed or written."""
    import io
    import json

    import boto3
    from conftest import TEST_ACCESS_KEY, TEST_SECRET_KEY

    from electra_ray.train.checkpoint import META_FILE, MODEL_FILE, STATE_FILE

    name = bucket.removeprefix("s3://")
    s3 = boto3.client("s3", endpoint_url=s3_server)  # straight to the server, not through the proxy
    proxy = FlakyProxy(s3_server)
    monkeypatch.setenv("AWS_ENDPOINT_URL", proxy.endpoint)  # the driver and, through it, the workers
    outage: list[float] = []

    def cutter():
        key = "outage/run/checkpoint_manager_snapshot.json"
        deadline = time.time() + 240
        while time.time() < deadline:
            try:
                snap = s3.get_object(Bucket=name, Key=key)["Body"].read().decode()
            except s3.exceptions.NoSuchKey:
                snap = ""
            if "step_00000010" in snap:
                break
            time.sleep(0.05)
        outage.append(time.time())
        proxy.cut()
        time.sleep(8)
        proxy.restore()
        outage.append(time.time())

    t = threading.Thread(target=cutter, daemon=True)
    t.start()
    try:
        s = pretrain(cfg(small, f"{bucket}/outage", "run", **RUN), **quiet)
    finally:
        t.join(timeout=30)
        proxy.close()
    assert len(outage) == 2, "the outage happened"
    assert proxy.refused > 0, "S3 requests were refused during the outage"
    assert s["step"] == 40
    during = [h["step"] for h in s["history"] if outage[0] < h["time"] < outage[1]]
    # training and its metric reports went on while the step-20 upload retried, up to the step-30
    # checkpoint, which waits for the previous upload (Ray's own async upload mode held every report
    # behind the pending upload: training stopped at step 22)
    assert during and max(during) >= 30, f"training went on during the outage (reports at steps {during})"

    def objects(prefix):
        pages = s3.get_paginator("list_objects_v2").paginate(Bucket=name, Prefix=prefix)
        return [o["Key"] for p in pages for o in p.get("Contents", [])]

    keys = objects("outage/run/")
    ckpts = sorted({k.split("/")[2] for k in keys if k.split("/")[2].startswith("step_")})
    assert ckpts == ["step_00000020", "step_00000030", "step_00000040"], ckpts  # keep 3
    for c in ckpts:
        files = {k.rsplit("/", 1)[1] for k in keys if f"/{c}/" in k} - {""}  # "" = pyarrow's folder marker
        assert files == {MODEL_FILE, STATE_FILE, META_FILE}, (c, files)
    got = torch.load(
        io.BytesIO(s3.get_object(Bucket=name, Key=f"outage/run/step_00000040/{MODEL_FILE}")["Body"].read()),
        weights_only=True,
    )
    want = reference["params"]
    assert all(torch.equal(got[k], want[k]) for k in want), "the outage did not change the model"
    rows = [
        json.loads(ln)
        for ln in s3.get_object(Bucket=name, Key="outage/run/metrics.jsonl")["Body"].read().splitlines()
    ]
    assert [r["step"] for r in rows] == list(range(2, 41, 2)), "metrics.jsonl caught up after the outage"

    # no credential anywhere in the run folder or in what the run printed
    for k in keys:
        blob = s3.get_object(Bucket=name, Key=k)["Body"].read()
        assert TEST_SECRET_KEY.encode() not in blob and TEST_ACCESS_KEY.encode() not in blob, k
    out = capfd.readouterr()
    assert TEST_SECRET_KEY not in out.out + out.err and TEST_ACCESS_KEY not in out.out + out.err


def test_resume_twice_and_at_an_epoch_boundary(small, reference, tmp_path):
    """The reference run in three launches (stopping at step 4, then exactly at the end of the first
    epoch): the same loss and sample digest at every report, and the same final parameters, bit for
    bit."""
    import json

    from electra_ray.train.data import load_instances

    steps, batch = RUN["max_steps"], RUN["batch_size"]
    epoch = (load_instances(small["data"]).n - 16) // batch  # steps per epoch (16 held out)
    # the stops fall on reports (every 2 steps): a report's digest covers the steps since the last
    assert 4 < epoch < steps and epoch % 2 == 0, epoch
    runs = str(tmp_path)
    for stop in (4, epoch, steps):
        again = pretrain(cfg(small, runs, "thrice", **{**RUN, "max_steps": stop}), **quiet)
        assert again["step"] == stop
    assert again["progress"]["cursor"] == steps and again["progress"]["sample_index"] == steps * batch

    def rows(run):
        return [json.loads(ln) for ln in open(os.path.join(run, "metrics.jsonl"))]

    a, b = rows(reference["run"]), rows(again["run"])
    assert [r["step"] for r in b] == list(range(2, steps + 1, 2))
    assert [(r["loss"], r["sample_digest"]) for r in a] == [(r["loss"], r["sample_digest"]) for r in b]
    assert_same_as_reference(reference, again["run"])
