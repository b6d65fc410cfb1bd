"""Growing and shrinking with Ray's fake autoscaler: nodes appear on request, go and come back.

    python scripts/fake_autoscaler_scenario.py [--workdir DIR] [--data D --tokenizer T] [--steps 300]
        [--after 30] [--timeout 900] [--keep] [-- extra jobs/pretrain.py flags]

Unlike ``scripts/elastic_scenario.py`` (which adds and removes nodes itself with
``ray.cluster_utils.Cluster``), here every worker node comes from Ray's autoscaler, run with its
fake multi-node provider (``ray/autoscaler/_private/fake_multi_node/node_provider.py``, enabled by
``RAY_FAKE_CLUSTER=1``; each "node" is a real raylet that the provider starts on this machine from
inside the autoscaler process):

1. builds a small instance set and tokenizer from the bundled sample (unless ``--data`` and
   ``--tokenizer`` are given), in a throw-away local Ray;
2. writes an autoscaling config (provider ``fake_multinode``, autoscaler v1): a head with 0 CPUs
   and one worker node type ``ray.worker.cpu`` (1 CPU, 200 MB object store, ``min_workers: 0``,
   ``max_workers: 2``, ``idle_timeout_minutes: 0.1``);
3. starts the head, with no worker node: ``RAY_FAKE_CLUSTER=1 ray start --head
   --autoscaling-config=CONFIG --port P --num-cpus 0 --temp-dir DIR/ray ...``;
4. runs ``jobs/pretrain.py --num-workers 1:2 --preset tiny`` against it (``RAY_ADDRESS``). Ray
   Train's elastic policy asks for 2 one-CPU bundles (``ray.autoscaler.sdk.request_resources``,
   through Ray's autoscaling coordinator actor); the autoscaler launches 2 fake nodes; training
   starts when the coordinator sees them. Then, each after ``--after`` steps at the current size:

   - **shrink (the provider's terminate path):** the config is rewritten with ``max_workers: 1``.
     The autoscaler re-reads it on its next round and terminates one node ("max_workers_per_type")
     through ``FakeMultiNodeProvider.terminate_node`` (its raylet and agents are stopped). The run
     loses a worker and restarts from its last checkpoint on the node left (2 → 1);
   - **grow:** ``max_workers: 2`` again. The run still asks for 2 CPUs, so the autoscaler launches
     a new node, and at the next resize check the run grows back (1 → 2);
   - **crash:** the node of a training worker is SIGKILLed (its raylet and every process under it),
     behind the autoscaler's back. The run goes on with 1 worker (2 → 1). The autoscaler does *not*
     replace that node while the run asks for it (why: docs/fault-tolerance.md, "Growing and
     shrinking with Ray's fake autoscaler");

5. the run finishes; the script waits (``--linger``) for the autoscaler to remove the idle nodes.

It prints a timeline (seconds since ``ray start``) and one JSON line; exit code 0 only if the run
finished all its steps and all three events happened with reports after each. Everything it
starts (the head and every fake node, found by an environment marker, and the job's process
group) is stopped on exit, also on failure or Ctrl-C. ``ray stop`` is never called, so other Ray
clusters on the machine are left alone.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid

import psutil

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SAMPLE = os.path.join(ROOT, "data", "sample", "jawiki-sample-pages-articles")
MARKER = "ELECTRA_FAKE_AUTOSCALER_SCENARIO"  # set in the environment of everything this script starts
FAKE_HEAD_NODE_ID = "fffffffffffffffffffffffffffffffffffffffffffffffffff00000"
OBJECT_STORE = 200 * 1024 * 1024
MONITOR_PATTERNS = ("Launching", "lost contact", "Terminating the node", "event_summary")
JOB_PATTERNS = ("Deciding to", "resumed from the checkpoint", "startup timed out after")
ANSI = re.compile(r"\x1b\[[0-9;]*m")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def prepare(out: str) -> dict:
    """Corpus → tokenizer (2,000 entries) → 64-token instances of the bundled sample, as the tests'
    ``prepared`` fixture builds them, in a local Ray of its own (run in a child process)."""
    import ray

    sys.path.insert(0, ROOT)
    from electra_ray.config import CorpusConfig, InstancesConfig, TokenizerConfig
    from electra_ray.data.pipeline import prepare_corpus
    from electra_ray.data.tokenize import tokenize_corpus
    from electra_ray.data.vocab import train_tokenizer

    ray.init(
        address="local",
        num_cpus=2,
        include_dashboard=False,
        object_store_memory=300 * 1024 * 1024,
        log_to_driver=False,
        configure_logging=False,
    )
    try:
        quiet = {"log": lambda *_: None}
        corpus, tok, inst = (os.path.join(out, n) for n in ("corpus", "tokenizer", "instances"))
        prepare_corpus(
            CorpusConfig(
                dump=SAMPLE + "-multistream.xml.bz2",
                index=SAMPLE + "-multistream-index.txt.bz2",
                output=corpus,
                pages_per_shard=15,
            ),
            **quiet,
        )
        train_tokenizer(
            TokenizerConfig(
                corpus=corpus, output=tok, vocab_size=2000, limit_alphabet=700, heldout_fraction=0.0
            ),
            **quiet,
        )
        tokenize_corpus(
            InstancesConfig(corpus=corpus, tokenizer=tok, output=inst, max_seq_length=64), **quiet
        )
    finally:
        ray.shutdown()
    return {"data": inst, "tokenizer": tok}


def write_config(path: str, gcs_address: str, max_nodes: int, max_workers: int) -> None:
    """(Re)write the autoscaling config; the v1 autoscaler re-reads it on every round."""
    cfg = autoscaling_config(gcs_address, max_nodes)
    cfg["available_node_types"]["ray.worker.cpu"]["max_workers"] = max_workers
    tmp = path + ".tmp"
    with open(tmp, "w") as f:  # JSON is YAML
        json.dump(cfg, f, indent=1)
    os.replace(tmp, path)


def autoscaling_config(gcs_address: str, max_nodes: int) -> dict:
    """Ray's fake_multi_node/example.yaml (not shipped in the wheel), cut down to one node type."""
    return {
        "cluster_name": "electra-fake",
        "max_workers": max_nodes,
        "provider": {
            "type": "fake_multinode",
            "use_node_id_as_ip": True,
            "disable_node_updaters": True,
            "disable_launch_config_check": True,
            # the provider's default is <node ip>:6379; this head listens on a free port
            "gcs_address": gcs_address,
            # honour count=N in one launch (the default starts one node per autoscaler round)
            "launch_multiple": True,
        },
        "available_node_types": {
            "ray.head.default": {"resources": {"CPU": 0}, "node_config": {}, "max_workers": 0},
            "ray.worker.cpu": {
                "resources": {"CPU": 1, "object_store_memory": OBJECT_STORE},
                "node_config": {},
                "min_workers": 0,
                "max_workers": max_nodes,
            },
        },
        "head_node_type": "ray.head.default",
        "auth": {},
        "upscaling_speed": 1.0,
        "idle_timeout_minutes": 0.1,
        "docker": {},
        "initialization_commands": [],
        "setup_commands": [],
        "head_setup_commands": [],
        "worker_setup_commands": [],
        "head_start_ray_commands": [],
        "worker_start_ray_commands": [],
        "file_mounts": {},
        "cluster_synced_files": [],
        "file_mounts_sync_continuously": False,
        "rsync_exclude": [],
        "rsync_filter": [],
    }


def ours(token: str) -> list[psutil.Process]:
    """Every live process that carries this run's marker (head, fake nodes, workers, the job)."""
    found = []
    for p in psutil.process_iter(["pid"]):
        if p.pid == os.getpid():
            continue
        try:
            if p.environ().get(MARKER) == token:
                found.append(p)
        except (psutil.Error, OSError):
            continue
    return found


def stop_all(token: str, grace: float = 5.0) -> int:
    """SIGTERM, then SIGKILL, every process with the marker. Returns how many were found."""
    procs = ours(token)
    for p in procs:
        try:
            p.terminate()
        except psutil.Error:
            pass
    _, alive = psutil.wait_procs(procs, timeout=grace)
    for p in alive:
        try:
            p.kill()
        except psutil.Error:
            pass
    psutil.wait_procs(alive, timeout=grace)
    left = ours(token)  # processes started while we were stopping the others
    for p in left:
        try:
            p.kill()
        except psutil.Error:
            pass
    return len(procs) + len(left)


def fake_node_raylets(token: str) -> dict[int, str]:
    """pid of each fake worker node's raylet → its node id (the provider sets the id through the
    raylet's environment: RAY_OVERRIDE_NODE_ID_FOR_TESTING)."""
    found = {}
    for p in ours(token):
        try:
            if p.name() != "raylet":
                continue
            node_id = p.environ().get("RAY_OVERRIDE_NODE_ID_FOR_TESTING")
        except psutil.Error:
            continue
        if node_id and node_id != FAKE_HEAD_NODE_ID:
            found[p.pid] = node_id
    return found


def train_worker_nodes(token: str) -> list[tuple[int, str]]:
    """(raylet pid, node id) of the fake nodes that host a Ray Train worker right now."""
    raylets = fake_node_raylets(token)
    found: list[tuple[int, str]] = []
    for p in ours(token):
        try:
            if not any("RayTrainWorker" in part for part in p.cmdline()):
                continue
            for parent in p.parents():
                if parent.pid in raylets and (parent.pid, raylets[parent.pid]) not in found:
                    found.append((parent.pid, raylets[parent.pid]))
        except psutil.Error:
            continue
    return found


def kill_tree(pid: int) -> int:
    """SIGKILL a process and all its descendants; how many were killed."""
    try:
        root = psutil.Process(pid)
        procs = root.children(recursive=True) + [root]
    except psutil.Error:
        return 0
    for p in procs:
        try:
            p.kill()
        except psutil.Error:
            pass
    return len(procs)  # not waited for: the raylet stays a zombie until the autoscaler reaps it


def rows(run: str) -> list[dict]:
    try:
        with open(os.path.join(run, "metrics.jsonl")) as f:
            return [json.loads(ln) for ln in f if ln.strip()]
    except (FileNotFoundError, json.JSONDecodeError):
        return []


class Tail:
    """New complete lines of a growing text file."""

    def __init__(self, path: str) -> None:
        self.path, self.pos, self.rest = path, 0, ""

    def lines(self) -> list[str]:
        try:
            with open(self.path, errors="replace") as f:
                f.seek(self.pos)
                data = f.read()
                self.pos = f.tell()
        except FileNotFoundError:
            return []
        data = self.rest + data
        *done, self.rest = data.split("\n")
        return done


def main() -> int:
    argv = sys.argv[1:]
    passthrough = argv[argv.index("--") + 1 :] if "--" in argv else []
    own = argv[: argv.index("--")] if "--" in argv else argv
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument(
        "--workdir", help="where the data, the run and Ray's temp dir go (default: a new /tmp dir)"
    )
    ap.add_argument("--data", help="instances (default: built from the bundled sample)")
    ap.add_argument("--tokenizer", help="tokenizer (default: built from the bundled sample)")
    ap.add_argument("--steps", type=int, default=300, help="--max-steps of the run")
    ap.add_argument("--after", type=int, default=30, help="steps to train at each size before the next event")
    ap.add_argument("--max-nodes", type=int, default=2, help="max_workers of the fake node type")
    ap.add_argument(
        "--linger", type=float, default=30, help="seconds to watch the idle nodes go after the run"
    )
    ap.add_argument("--timeout", type=float, default=900, help="seconds before giving up")
    ap.add_argument("--keep", action="store_true", help="keep the work dir (logs, run folder)")
    ap.add_argument("--prepare-only", metavar="DIR", help=argparse.SUPPRESS)
    a = ap.parse_args(own)
    if a.prepare_only:
        print(json.dumps(prepare(a.prepare_only)))
        return 0
    if (a.data is None) != (a.tokenizer is None):
        ap.error("give both --data and --tokenizer, or neither")

    # SIGTERM/SIGHUP → SystemExit, so the finally below stops the cluster
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, lambda signum, _frame: sys.exit(128 + signum))

    # short: Ray's unix sockets live under the temp dir (paths are limited to ~107 characters)
    work = a.workdir or tempfile.mkdtemp(prefix="efas-", dir="/tmp")
    os.makedirs(work, exist_ok=True)
    ray_tmp = os.path.join(work, "ray")
    runs = os.path.join(work, "runs")
    name = "fake-autoscaler"
    run = os.path.join(runs, name)
    token = uuid.uuid4().hex
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "RAY_enable_autoscaler_v2")}
    env.update(
        {
            MARKER: token,
            "RAY_USAGE_STATS_ENABLED": "0",
            "RAY_AUTH_MODE": "disabled",
            "TOKENIZERS_PARALLELISM": "false",
        }
    )

    t0 = time.time()
    timeline: list[dict] = []

    def note(what: str, **kw) -> None:
        at = round(time.time() - t0, 1)
        timeline.append({"t": at, "event": what, **kw})
        extra = " ".join(f"{k}={v}" for k, v in kw.items())
        print(f"{at:7.1f}s  {what}{'  ' + extra if extra else ''}", flush=True)

    job = None
    connected = False
    code = None
    summary: dict = {"workdir": work}
    try:
        if a.data is None:
            print(
                f"building instances and a tokenizer from the bundled sample in {work}/data ...", flush=True
            )
            p0 = time.time()
            out = subprocess.run(
                [sys.executable, os.path.abspath(__file__), "--prepare-only", os.path.join(work, "data")],
                env={**env, "RAY_TMPDIR": os.path.join(work, "rp")},
                capture_output=True,
                text=True,
                cwd=ROOT,
            )
            stop_all(token, grace=2)  # nothing of the local Ray may remain
            if out.returncode != 0:
                print(out.stdout[-3000:], out.stderr[-3000:], sep="\n", file=sys.stderr)
                raise SystemExit("building the sample data failed")
            built = json.loads(out.stdout.strip().splitlines()[-1])
            a.data, a.tokenizer = built["data"], built["tokenizer"]
            print(f"  done in {time.time() - p0:.0f} s", flush=True)

        import ray
        from ray._private.services import get_node_ip_address

        ip = get_node_ip_address()
        port = free_port()
        address = f"{ip}:{port}"
        config_path = os.path.join(work, "autoscaling.yaml")
        write_config(config_path, address, a.max_nodes, a.max_nodes)
        head_env = {
            **env,
            "RAY_FAKE_CLUSTER": "1",
            "AUTOSCALER_UPDATE_INTERVAL_S": "1",
            # a node without heartbeats for 10 s (default 30) is "lost contact" and gets replaced;
            # for this provider's nodes it never fires (see "crash" above and the docs)
            "AUTOSCALER_HEARTBEAT_TIMEOUT_S": "10",
        }
        head_cmd = [
            os.path.join(os.path.dirname(sys.executable), "ray"),
            "start",
            "--head",
            f"--autoscaling-config={config_path}",
            f"--port={port}",
            "--num-cpus=0",
            f"--object-store-memory={OBJECT_STORE}",
            "--include-dashboard=false",
            f"--ray-client-server-port={free_port()}",
            f"--dashboard-agent-listen-port={free_port()}",
            f"--temp-dir={ray_tmp}",
            "--disable-usage-stats",
            # GCS declares a dead node dead in ~2 s instead of ~15 s
            "--system-config="
            + json.dumps(
                {
                    "health_check_initial_delay_ms": 0,
                    "health_check_period_ms": 500,
                    "health_check_timeout_ms": 500,
                    "health_check_failure_threshold": 3,
                },
                separators=(",", ":"),
            ),
        ]
        t0 = time.time()
        print("$ RAY_FAKE_CLUSTER=1 ray " + " ".join(head_cmd[1:]), flush=True)
        start = subprocess.run(head_cmd, env=head_env, capture_output=True, text=True, cwd=work)
        if start.returncode != 0:
            print(start.stdout[-3000:], start.stderr[-3000:], sep="\n", file=sys.stderr)
            raise SystemExit("ray start --head failed")
        note("head up", address=address)
        monitor_log = Tail(os.path.join(ray_tmp, "session_latest", "logs", "monitor.log"))

        os.environ.update({MARKER: token, "RAY_USAGE_STATS_ENABLED": "0", "RAY_AUTH_MODE": "disabled"})
        ray.init(address=address, log_to_driver=False, configure_logging=False)
        connected = True

        cmd = [
            sys.executable,
            os.path.join(ROOT, "jobs", "pretrain.py"),
            "--data",
            a.data,
            "--tokenizer",
            a.tokenizer,
            "--storage-path",
            runs,
            "--name",
            name,
            "--preset",
            "tiny",
            "--num-workers",
            "1:2",
            "--max-steps",
            str(a.steps),
            "--total-steps",
            str(a.steps),
            "--batch-size",
            "32",
            "--micro-batch-size",
            "16",
            "--lr",
            "2e-3",
            "--warmup-steps",
            "10",
            "--checkpoint-every",
            "10",
            "--keep-checkpoints",
            "2",
            "--log-every",
            "10",
            "--eval-every",
            str(a.steps),
            "--eval-instances",
            "16",
            "--seed",
            "3",
            "--max-failures",
            "10",
            "--resize-check-s",
            "5",
            *passthrough,
        ]
        os.makedirs(runs, exist_ok=True)
        log_path = os.path.join(work, "pretrain.log")
        log = open(log_path, "w")
        job_env = {**env, "RAY_ADDRESS": address, "RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S": "30"}
        job = subprocess.Popen(
            cmd, env=job_env, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT, start_new_session=True
        )
        note("pretrain job started", cmd="jobs/pretrain.py --num-workers 1:2 --preset tiny ...")
        job_log = Tail(log_path)

        nodes_up: dict[str, float] = {}
        last_report = 0.0
        # lines shown, to drop repeats: the fake nodes share the head's log folder, so each node's
        # log monitor forwards every worker's lines again (the job log has each line 2-4 times)
        recent: dict[str, float] = {}
        # (action, world size to train at for --after steps before it)
        plan = [("shrink", 2), ("grow", 1), ("crash", 2)]
        events: list[dict] = []
        since = 0.0
        deadline = t0 + a.timeout
        finished_at = None

        def show(prefix: str, line: str) -> None:
            text = prefix + ANSI.sub("", line).strip()[:170]
            if time.time() - recent.get(text, -1e9) > 60:
                note(text)
            recent[text] = time.time()

        while time.time() < deadline:
            time.sleep(0.5)
            # nodes, as GCS sees them
            alive = {
                n["NodeID"]: n.get("Resources", {}).get("CPU", 0)
                for n in ray.nodes()
                if n["Alive"] and n["NodeID"] != FAKE_HEAD_NODE_ID
            }
            for node_id in sorted(set(alive) - set(nodes_up)):
                nodes_up[node_id] = time.time()
                note("node up", node=node_id[-5:], cpus=alive[node_id], nodes=len(alive))
            for node_id in sorted(set(nodes_up) - set(alive)):
                del nodes_up[node_id]
                note("node gone", node=node_id[-5:], nodes=len(alive))
            for line in monitor_log.lines():
                if any(p in line for p in MONITOR_PATTERNS):
                    show("autoscaler: ", re.sub(r"^.*? -- (:event_summary:)?", "", line))
            for line in job_log.lines():
                if any(p in line for p in JOB_PATTERNS):
                    show("job: ", re.sub(r"^(\x1b\[[0-9;]*m)?\(.*?\)(\x1b\[0m)?\s*", "", line))
            # reports (rows at or after a resume step are rewritten: follow them by time)
            rs = rows(run)
            for r in rs:
                if r.get("time", 0) > last_report:
                    last_report = r["time"]
                    note("report", step=r["step"], workers=r.get("workers"), loss=round(r["loss"], 3))
                    if events:
                        events[-1]["reports_after"] += 1
            if finished_at is None and job.poll() is not None:
                code = job.returncode
                finished_at = time.time()
                note("job exited", returncode=code)
            if finished_at is not None:
                if not nodes_up or time.time() - finished_at > a.linger:
                    break
                continue
            if not plan:
                continue
            action, world = plan[0]
            fresh = [r for r in rs if r.get("time", 0) > since and r.get("workers") == world]
            if len(fresh) < 2 or fresh[-1]["step"] - fresh[0]["step"] < a.after:
                continue
            seen = {"step": fresh[-1]["step"], "workers": world}
            if action == "crash":
                hosts = train_worker_nodes(token)
                if not hosts:
                    continue
                pid, node_id = hosts[0]
                n = kill_tree(pid)
                seen.update(node=node_id[-5:], processes=n)
                note("crash: SIGKILL of a training node's raylet and its processes", **seen)
            else:
                size = 1 if action == "shrink" else a.max_nodes
                write_config(config_path, address, a.max_nodes, size)
                note(f"{action}: config rewritten, ray.worker.cpu max_workers={size}", **seen)
            since = time.time()
            events.append({"action": action, "at": round(since - t0, 1), **seen, "reports_after": 0})
            plan.pop(0)
        else:
            note("timeout: stopping the job")
        sizes = [r.get("workers") for r in rows(run)]
        summary.update(
            {
                "returncode": code,
                "final_step": rows(run)[-1]["step"] if rows(run) else None,
                "events": events,
                "size_changes": [w for i, w in enumerate(sizes) if i == 0 or w != sizes[i - 1]],
                "nodes_left": len(nodes_up),
            }
        )
    finally:
        if job is not None and job.poll() is None:
            try:
                os.killpg(job.pid, signal.SIGTERM)
                job.wait(10)
            except (ProcessLookupError, subprocess.TimeoutExpired):
                try:
                    os.killpg(job.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                job.wait()
        if connected:
            import ray

            ray.shutdown()
        stopped = stop_all(token)
        print(f"stopped {stopped} process(es) of this scenario", flush=True)
        events = summary.get("events", [])
        ok = (
            code == 0
            and summary.get("final_step") == a.steps
            and [e["action"] for e in events] == ["shrink", "grow", "crash"]
            and all(e["reports_after"] > 0 for e in events)
        )
        if not ok:
            try:
                with open(os.path.join(work, "pretrain.log")) as f:
                    summary["log_tail"] = f.read()[-3000:]
            except OSError:
                pass
        if ok and not a.keep and not a.workdir:
            shutil.rmtree(work, ignore_errors=True)
        elif not a.workdir:
            print(f"kept {work} (logs: pretrain.log, ray/session_latest/logs/)", flush=True)

    summary.update({"ok": ok, "seconds": round(time.time() - t0, 1), "timeline": timeline})
    print(json.dumps(summary))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
