"""Node loss and elastic world size on a multi-node cluster simulated on this machine.

``scripts/elastic_scenario.py`` runs the job on a head with 0 CPUs and three 1-CPU nodes and takes
nodes away and adds one back (2 → node lost → 2 → node lost → 1 → node added → 2 workers). The
run is compared, report by report, with the same run on a fixed single worker.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from conftest import ROOT
from test_pretrain import cfg, cli_args, quiet

from electra_ray.train.checkpoint import load_model_state
from electra_ray.train.trainer import pretrain

STEPS = 240  # room after the add: Ray Train sees a new node within ~20 s (its autoscaling coordinator refreshes every 20 s), then restarts
RUN = {
    "max_steps": STEPS,
    "total_steps": STEPS,
    "batch_size": 32,
    "micro_batch_size": 16,
    "checkpoint_every": 10,
    "log_every": 10,
    "eval_every": STEPS,
    "keep_checkpoints": 2,
}


@pytest.mark.slow
def test_node_loss_shrink_and_grow_keep_the_sample_stream(prepared, tmp_path):  # noqa: F811
    runs = str(tmp_path)
    fixed = pretrain(cfg(prepared, runs, "fixed", **RUN), **quiet)
    c = cfg(prepared, runs, "elastic", **RUN)
    env = {**os.environ, "RAY_AUTH_MODE": "disabled"}
    env.pop("RAY_ADDRESS", None)
    r = subprocess.run(
        [
            sys.executable,
            os.path.join(ROOT, "scripts", "elastic_scenario.py"),
            "--runs",
            runs,
            "--name",
            "elastic",
            "--after",
            "15",
            "--",
            *cli_args(c),
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=900,
    )
    assert r.stdout.strip(), r.stderr[-3000:]
    out = json.loads(r.stdout.strip().splitlines()[-1])
    assert out["returncode"] == 0, out["log_tail"]
    assert [e["action"] for e in out["events"]] == ["remove", "remove", "add"], out
    assert [e["workers"] for e in out["events"]] == [2, 2, 1], "removed with 2 workers, twice; added with 1"

    rows = [json.loads(ln) for ln in open(os.path.join(runs, "elastic", "metrics.jsonl"))]
    want = [json.loads(ln) for ln in open(os.path.join(fixed["run"], "metrics.jsonl"))]
    assert [x["step"] for x in rows] == [x["step"] for x in want] == list(range(10, STEPS + 1, 10))
    # the world size really went 2 → 1 → 2 within the run
    sizes = [x["workers"] for x in rows]
    changes = [w for i, w in enumerate(sizes) if i == 0 or w != sizes[i - 1]]
    assert changes == [2, 1, 2], sizes
    # exactly the same samples in the same batches, report after report
    assert [x["sample_digest"] for x in rows] == [x["sample_digest"] for x in want]
    assert [x["data_batch"] for x in rows] == [x["step"] for x in rows]
    # the same training up to floating-point reduction order (fp32 sums over 2 workers vs 1)
    for x, y in zip(rows, want):
        assert x["loss"] == pytest.approx(y["loss"], rel=1e-3), x["step"]
    a = load_model_state(os.path.join(runs, "elastic", f"step_{STEPS:08d}"))
    b = load_model_state(os.path.join(fixed["run"], f"step_{STEPS:08d}"))
    worst = max((a[k] - b[k]).abs().max().item() for k in a)
    assert worst < 1e-3, worst
    log = open(os.path.join(runs, "elastic.log")).read()
    assert log.count("resumed from the checkpoint of step") >= 3, "each event restarted from a checkpoint"
