"""Node loss and elastic resizing, on a multi-node Ray cluster simulated on this machine.

    python scripts/elastic_scenario.py --runs /tmp/runs --name elastic -- \
        --data out/instances --tokenizer out/tokenizer --preset tiny --max-steps 400 ...

Starts ``ray.cluster_utils.Cluster``: a head with 0 CPUs (it schedules no training) and three
1-CPU worker nodes, then runs ``jobs/pretrain.py --num-workers 1:2`` on it as a separate process
(the arguments after ``--`` are passed through) and, watching the run's ``metrics.jsonl``:

1. removes the node of a training worker (its processes SIGKILLed) → the run restarts from its last
   checkpoint on the two nodes left (node loss, 2 workers again);
2. removes the node of another training worker → the run goes on with 1 worker (shrink);
3. adds a node → at the next resize check the run grows back to 2 workers (grow);

and prints one JSON line: the events (with the step and world size seen before each), the job's
exit code and the tail of its output. The tests compare the run with a fixed-size one.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

import psutil

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def rows(run: str) -> list[dict]:
    path = os.path.join(run, "metrics.jsonl")
    try:
        with open(path) as f:
            return [json.loads(ln) for ln in f if ln.strip()]
    except (FileNotFoundError, json.JSONDecodeError):
        return []


def worker_nodes(cluster) -> list:
    """The cluster's worker nodes that host a Ray Train worker process right now."""
    raylets = {}
    for node in cluster.worker_nodes:
        for info in node.all_processes.get("raylet", []):
            raylets[info.process.pid] = node
    found = []
    for p in psutil.process_iter(["pid", "cmdline"]):
        if not any("RayTrainWorker" in part for part in (p.info["cmdline"] or [])):
            continue
        try:
            for parent in p.parents():
                if parent.pid in raylets and raylets[parent.pid] not in found:
                    found.append(raylets[parent.pid])
        except psutil.Error:
            continue
    return found


def main() -> int:
    argv = sys.argv[1:]
    passthrough = argv[argv.index("--") + 1 :] if "--" in argv else []
    own = argv[: argv.index("--")] if "--" in argv else argv
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", required=True, help="storage path of the run")
    ap.add_argument("--name", required=True, help="run name")
    ap.add_argument("--after", type=int, default=20, help="steps to train between events")
    ap.add_argument("--timeout", type=float, default=600, help="seconds before giving up")
    a = ap.parse_args(own)

    from ray.cluster_utils import Cluster

    cluster = Cluster(
        initialize_head=True,
        head_node_args={
            "num_cpus": 0,
            "include_dashboard": False,
            # notice a dead node in ~2 s instead of ~15 s
            "_system_config": {
                "health_check_initial_delay_ms": 0,
                "health_check_period_ms": 500,
                "health_check_timeout_ms": 500,
                "health_check_failure_threshold": 3,
            },
        },
    )
    for _ in range(3):
        cluster.add_node(num_cpus=1)
    cluster.wait_for_nodes()
    run = os.path.join(a.runs, a.name)
    env = {
        **os.environ,
        "RAY_ADDRESS": cluster.address,
        "RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S": "30",
        # Pacing: the run must still be going when Ray Train notices the added node (~20 s). Ray
        # Train's default 2-s poll holds the job to one report per 2 s (jobs/pretrain.py polls every
        # 0.2 s otherwise, and a tiny run would end first): ≥ 28 s for the last 140 of 240 steps.
        "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "2",
    }
    cmd = [
        sys.executable,
        os.path.join(ROOT, "jobs", "pretrain.py"),
        *passthrough,
        "--storage-path",
        a.runs,
        "--name",
        a.name,
        "--num-workers",
        "1:2",
        "--max-failures",
        "4",
        "--resize-check-s",
        "2",
    ]
    log_path = os.path.join(a.runs, f"{a.name}.log")
    os.makedirs(a.runs, exist_ok=True)
    events: list[dict] = []
    t0 = time.time()
    with open(log_path, "w") as log:
        job = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT)
        try:
            # (action, world size that must be reported after the previous event)
            plan = [("remove", 2), ("remove", 2), ("add", 1)]
            since = 0.0
            while job.poll() is None and time.time() - t0 < a.timeout:
                time.sleep(0.2)
                if not plan:
                    continue
                action, world = plan[0]
                fresh = [r for r in rows(run) if r.get("time", 0) > since and r.get("workers") == world]
                if len(fresh) < 2 or fresh[-1]["step"] - fresh[0]["step"] < a.after:
                    continue
                seen = {"step": fresh[-1]["step"], "workers": world}
                if action == "remove":
                    hosts = worker_nodes(cluster)
                    if not hosts:
                        continue
                    cluster.remove_node(hosts[0], allow_graceful=False)
                else:
                    cluster.add_node(num_cpus=1)
                since = time.time()
                events.append({"action": action, "at": round(since - t0, 1), **seen})
                plan.pop(0)
            if job.poll() is None:
                job.kill()
            code = job.wait()
        finally:
            cluster.shutdown()
    with open(log_path) as f:
        tail = f.read()[-4000:]
    print(
        json.dumps(
            {"events": events, "returncode": code, "seconds": round(time.time() - t0, 1), "log_tail": tail}
        )
    )
    return 0 if code == 0 and len(events) == 3 else 1


if __name__ == "__main__":
    sys.exit(main())
