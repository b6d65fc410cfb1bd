"""The jobs submitted for real: `ray start --head` (with the dashboard) on 127.0.0.1, then
`ray job submit --working-dir . -- python jobs/…`, as a user does against a cluster."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest
from conftest import ROOT, SAMPLE, _free_port

BIN = os.path.dirname(sys.executable)


def _env() -> dict[str, str]:
    env = {**os.environ, "RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0"}
    env["PATH"] = BIN + os.pathsep + env.get("PATH", "")  # `python` in an entrypoint = this venv's
    env.pop("RAY_ADDRESS", None)
    return env


@pytest.fixture(scope="module")
def head(tmp_path_factory):
    """A Ray head of its own (2 CPUs, dashboard on 127.0.0.1), stopped by killing its process group
    (`ray stop` would stop every Ray on the machine)."""
    port, dash = _free_port(), _free_port()
    log = open(tmp_path_factory.mktemp("head") / "ray-start.log", "w")
    proc = subprocess.Popen(
        [
            os.path.join(BIN, "ray"),
            "start",
            "--head",
            "--block",
            f"--port={port}",
            "--node-ip-address=127.0.0.1",
            "--dashboard-host=127.0.0.1",
            f"--dashboard-port={dash}",
            # the job agent's HTTP port: the default (52365) is taken by the session's other Ray
            f"--dashboard-agent-listen-port={_free_port()}",
            "--num-cpus=2",
            "--object-store-memory=1000000000",
            "--disable-usage-stats",
        ],
        env=_env(),
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    address = f"http://127.0.0.1:{dash}"
    deadline = time.time() + 120
    while time.time() < deadline:
        assert proc.poll() is None, open(log.name).read()[-3000:]
        r = subprocess.run(
            [os.path.join(BIN, "ray"), "job", "list", "--address", address],
            env=_env(),
            capture_output=True,
            text=True,
        )
        if r.returncode == 0:
            break
        time.sleep(1)
    else:
        pytest.fail("the Ray head's job server did not come up:\n" + open(log.name).read()[-3000:])
    yield address
    os.killpg(proc.pid, signal.SIGTERM)
    try:  # `ray start --block` does not end on SIGTERM within 30 s (seen here); the group is killed
        proc.wait(timeout=5)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    # `ray start` records its address for later `ray.init()` calls; a stale record makes them hang
    from electra_ray.cli import RAY_CLUSTER_RECORD

    if os.path.exists(RAY_CLUSTER_RECORD) and open(RAY_CLUSTER_RECORD).read().strip().endswith(f":{port}"):
        os.remove(RAY_CLUSTER_RECORD)


def submit(address: str, *entrypoint: str) -> dict:
    """`ray job submit --working-dir . -- python …`; returns the job's last-line JSON result."""
    cmd = [os.path.join(BIN, "ray"), "job", "submit", "--address", address, "--working-dir", ".", "--"]
    for _ in range(60):
        r = subprocess.run(
            [*cmd, *entrypoint], cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=600
        )
        out = r.stdout + r.stderr
        if "No available agent to submit job" not in out:  # the node's agent comes up after the job server
            break
        time.sleep(2)
    assert r.returncode == 0, out[-4000:]
    assert "succeeded" in out, out[-4000:]
    lines = [ln.strip() for ln in r.stdout.splitlines() if ln.strip().startswith("{")]
    return json.loads(lines[-1]) if lines else {}


@pytest.mark.slow
def test_jobs_submitted_to_a_ray_head(head, tmp_path):
    # the upload leaves out history, data and the environment (.rayignore, .gitignore)
    listing = submit(
        head, "python", "-c", "import json, os; print(json.dumps({'files': sorted(os.listdir('.'))}))"
    )
    files = set(listing["files"])
    assert {"electra_ray", "jobs", "pyproject.toml"} <= files
    assert not files & {".git", ".venv", "data", "tests", "demo_output"}, files

    dump = os.path.join(SAMPLE, "jawiki-sample-pages-articles-multistream.xml.bz2")
    corpus = str(tmp_path / "corpus")
    res = submit(
        head,
        "python",
        "jobs/prepare_corpus.py",
        "--dump",
        dump,
        "--index",
        dump.replace(".xml.bz2", "-index.txt.bz2"),
        "--output",
        corpus,
        "--pages-per-shard",
        "50",
    )
    assert res["ok"] and res["counts"]["articles_kept"] == 180 and res["shards"] == 4
    manifest = json.load(open(os.path.join(corpus, "manifest.json")))
    assert manifest["complete"] is True

    # the rest of the pipeline, each stage submitted as a job and reading the previous one's output
    tok = str(tmp_path / "tokenizer")
    res = submit(
        head,
        "python",
        "jobs/train_tokenizer.py",
        "--corpus",
        corpus,
        "--output",
        tok,
        "--vocab-size",
        "4000",
        "--limit-alphabet",
        "1500",
    )
    assert res["ok"] and res["vocab_size"] == 4000
    assert os.path.exists(os.path.join(tok, "vocab.txt"))
    inst = str(tmp_path / "instances")
    res = submit(
        head,
        "python",
        "jobs/tokenize_corpus.py",
        "--corpus",
        corpus,
        "--tokenizer",
        tok,
        "--output",
        inst,
        "--max-seq-length",
        "64",
    )
    assert res["ok"] and res["instances"] > 100
    runs = str(tmp_path / "runs")
    res = submit(
        head,
        "python",
        "jobs/pretrain.py",
        "--data",
        inst,
        "--tokenizer",
        tok,
        "--storage-path",
        runs,
        "--name",
        "submitted",
        "--preset",
        "tiny",
        "--max-steps",
        "4",
        "--batch-size",
        "16",
        "--checkpoint-every",
        "2",
        "--log-every",
        "2",
        "--eval-every",
        "4",
        "--eval-instances",
        "16",
    )
    assert res["ok"] and res["step"] == 4
    assert os.path.exists(os.path.join(runs, "submitted", "step_00000004", "meta.json"))
    hf = str(tmp_path / "hf")
    res = submit(head, "python", "jobs/export.py", "--run", os.path.join(runs, "submitted"), "--output", hf)
    assert res["ok"]
    for part in ("discriminator", "generator"):
        assert os.path.exists(os.path.join(hf, part, "model.safetensors"))
        assert os.path.exists(os.path.join(hf, part, "vocab.txt"))


def test_a_stale_ray_start_record_is_recognized(tmp_path):
    """A record left by a `ray start` whose cluster is gone must not make plain job runs wait on it."""
    import socket

    from electra_ray.cli import recorded_cluster_alive

    record = tmp_path / "ray_current_cluster"
    assert recorded_cluster_alive(str(record)), "no record: nothing to avoid"
    with socket.socket() as listening:
        listening.bind(("127.0.0.1", 0))
        listening.listen(1)
        record.write_text(f"127.0.0.1:{listening.getsockname()[1]}")
        assert recorded_cluster_alive(str(record))
    record.write_text(f"127.0.0.1:{_free_port()}")  # nobody listens there
    assert not recorded_cluster_alive(str(record))
    record.write_text("garbage")
    assert not recorded_cluster_alive(str(record))
