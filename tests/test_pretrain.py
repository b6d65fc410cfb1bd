"""Pretraining on Ray Train, end to end on the sample (tiny preset, local Ray, local and S3 storage)."""

from __future__ import annotations

import glob
import json
import os
import subprocess
import sys
import tempfile

import pytest
import torch
from conftest import ROOT

from electra_ray import storage
from electra_ray.config import ConfigError, FastStepError, TrainConfig
from electra_ray.train.checkpoint import load_model_state
from electra_ray.train.loop import fast_step_error
from electra_ray.train.trainer import pretrain

quiet = {"log": lambda *_: None}


def cfg(prepared, storage_path, name, **kw):
    base = dict(
        preset="tiny",
        max_steps=6,
        total_steps=12,
        batch_size=16,
        micro_batch_size=8,
        lr=2e-3,
        warmup_steps=2,
        checkpoint_every=3,
        log_every=3,
        eval_every=6,
        eval_instances=16,
        seed=3,
    )
    base.update(kw)
    return TrainConfig(
        data=prepared["data"], tokenizer=prepared["tokenizer"], storage_path=storage_path, name=name, **base
    )


def cli_args(c: TrainConfig) -> list[str]:
    """jobs/pretrain.py flags for ``c``'s data, tokenizer, preset and training settings (the caller
    adds --storage-path and --name)."""
    args = ["--data", c.data, "--tokenizer", c.tokenizer, "--preset", c.preset]
    for name in (
        "max_steps",
        "total_steps",
        "batch_size",
        "micro_batch_size",
        "lr",
        "warmup_steps",
        "checkpoint_every",
        "keep_checkpoints",
        "log_every",
        "eval_every",
        "eval_instances",
        "seed",
    ):
        args += ["--" + name.replace("_", "-"), str(getattr(c, name))]
    return args


@pytest.fixture
def job_module():
    """Imports jobs/NAME.py as a module (the jobs are scripts, not a package)."""
    import importlib.util

    def load(name: str):
        spec = importlib.util.spec_from_file_location(name, os.path.join(ROOT, "jobs", f"{name}.py"))
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)
        return mod

    return load


def params(run: str, step: int) -> dict[str, torch.Tensor]:
    return load_model_state(os.path.join(run, f"step_{step:08d}"))


# A plain one-worker run of 6 steps, with a non-finite loss injected at data batch 4 (skipped),
# that other runs are compared with (fixture plain_run). Resuming bit for bit is tested in
# test_fault_tolerance.py (stops mid-epoch and at an epoch boundary).
PLAIN = dict(max_steps=6, checkpoint_every=3, log_every=1, eval_every=6, inject_nonfinite=(4,))


@pytest.fixture(scope="module")
def plain_run(prepared, tmp_path_factory):
    runs = str(tmp_path_factory.mktemp("plain"))
    s = pretrain(cfg(prepared, runs, "plain", **PLAIN), **quiet)
    rows = [json.loads(ln) for ln in open(os.path.join(s["run"], "metrics.jsonl"))]
    return {**s, "rows": rows}


def test_two_workers_match_one(prepared, plain_run, tmp_path):
    one = plain_run
    assert one["step"] == 6 and [r["step"] for r in one["rows"]] == [1, 2, 3, 4, 5, 6]
    assert os.listdir(os.path.join(one["run"], "tensorboard")), "TensorBoard event files"
    png = open(os.path.join(one["run"], "plots", "curves.png"), "rb").read()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000
    # two workers, same global batch and micro-batch: same update up to reduction order
    two = pretrain(
        cfg(prepared, str(tmp_path), "two", num_workers_min=2, num_workers_max=2, **PLAIN), **quiet
    )
    a, c = params(one["run"], 6), params(two["run"], 6)
    worst = max((a[k] - c[k]).abs().max().item() for k in a)
    assert worst < 1e-4, worst
    assert two["final"]["gen_loss"] == pytest.approx(one["final"]["gen_loss"], rel=1e-4)
    assert two["final"]["workers"] == 2 and two["final"]["nonfinite_steps"] == 1
    # the same with the gradients summed in bf16 (--allreduce-dtype bf16: DDP's bf16 compression
    # hook): close to the fp32 sum, not equal to it
    bf = dict(num_workers_min=2, num_workers_max=2, allreduce_dtype="bf16")
    half = pretrain(cfg(prepared, str(tmp_path), "two-bf16", **bf, **PLAIN), **quiet)
    b = params(half["run"], 6)
    off = max((c[k] - b[k]).abs().max().item() for k in c)
    assert 0 < off < 5e-3, off  # 2.6e-4 measured (parameters after 6 steps, lr 2e-3)
    assert half["final"]["gen_loss"] == pytest.approx(two["final"]["gen_loss"], rel=1e-2)


def dead_pid() -> int:
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


def test_tiny_model_learns_straight_from_a_corpus(prepared, tmp_path):
    """--corpus: the tokenize pipeline into the object store gives the instances of the Parquet
    path, and the tiny model trained on them learns. The run leaves no local folders behind; those
    of a killed worker (a checkpoint not yet uploaded) and of a killed driver (TensorBoard files)
    are removed when a run starts. Frequent reports do not hold training up: Ray Train's controller
    takes one report per worker each time it polls, every 2 s by default, and the loop would wait
    that long in every ray.train.report."""
    import ray

    from electra_ray.data.tokenize import instances_dataset
    from electra_ray.train.data import arrays_from_tables, load_instances

    ds = instances_dataset(prepared["corpus"], prepared["tokenizer"], max_seq_length=64)
    mem = arrays_from_tables(ray.get(ref) for ref in ds.to_arrow_refs())
    disk = load_instances(prepared["data"])
    assert (
        (mem.ids == disk.ids).all()
        and (mem.offsets == disk.offsets).all()
        and (mem.b_start == disk.b_start).all()
    )
    tmp = tempfile.gettempdir()
    stale = [tempfile.mkdtemp(prefix=f"electra-{kind}-{dead_pid()}-", dir=tmp) for kind in ("ckpt", "tb")]
    open(os.path.join(stale[0], "model.pt"), "wb").close()
    before = set(glob.glob(os.path.join(tmp, "electra-*")))
    c = cfg(
        prepared,
        str(tmp_path),
        "learn",
        max_steps=60,
        total_steps=60,
        checkpoint_every=60,
        log_every=2,
        eval_every=60,
    )
    c = TrainConfig.from_dict(
        {**c.to_dict(), "data": None, "corpus": prepared["corpus"], "max_seq_length": 64}
    )
    s = pretrain(c, **quiet)
    assert s["step"] == 60
    hist = [json.loads(ln) for ln in open(os.path.join(s["run"], "metrics.jsonl"))]
    assert [h["step"] for h in hist] == list(range(2, 61, 2))
    gaps = sorted(b["time"] - a["time"] for a, b in zip(hist, hist[1:]))
    assert gaps[len(gaps) // 2] < 1.0, f"reports every {gaps[len(gaps) // 2]:.2f} s: they wait for the poll"
    assert all(0 <= h["report_wait_share"] < 1 for h in hist[1:])
    assert hist[-1]["gen_loss"] < hist[0]["gen_loss"] - 0.5
    assert hist[-1]["loss"] < hist[0]["loss"]
    f = s["final"]
    assert f["eval_gen_acc"] > 1 / 2000 * 10, "generator far above chance on held-out instances"
    assert not any(map(os.path.exists, stale)), "dead processes' local folders are removed"
    left = set(glob.glob(os.path.join(tmp, "electra-*"))) - before
    assert not left, f"the run left local folders behind: {left}"


def test_stale_local_checkpoint_folders(tmp_path):
    """Only the folders of processes that are gone are removed."""
    from electra_ray.train.checkpoint import local_checkpoint_folder, remove_stale_checkpoint_folders

    dead = tmp_path / f"electra-ckpt-{dead_pid()}-abc"
    live = tmp_path / f"electra-ckpt-{os.getpid()}-abc"
    other = tmp_path / "electra-ckpt-notapid"
    for d in (dead, live, other):
        d.mkdir()
    assert remove_stale_checkpoint_folders(str(tmp_path)) == [str(dead)]
    assert live.exists() and other.exists() and not dead.exists()
    mine = local_checkpoint_folder()
    try:
        assert os.path.basename(mine).startswith(f"electra-ckpt-{os.getpid()}-")
        assert mine not in remove_stale_checkpoint_folders()
    finally:
        os.rmdir(mine)


def test_s3_run_folder_and_resume_with_other_settings_refuses(prepared, bucket):
    runs = f"{bucket}/runs"
    s = pretrain(cfg(prepared, runs, "s3run", max_steps=3), **quiet)
    assert s["step"] == 3
    names = {storage.basename(u) for u in storage.list_files(f"{bucket}/runs/s3run/step_00000003")}
    assert {"model.pt", "train_state.pt", "meta.json"} <= names
    assert storage.exists(f"{bucket}/runs/s3run/tokenizer/vocab.txt")
    assert storage.exists(f"{bucket}/runs/s3run/metrics.jsonl") and storage.exists(
        f"{bucket}/runs/s3run/plots/curves.png"
    )
    assert storage.list_files(f"{bucket}/runs/s3run/tensorboard")
    # the checkpoint's settings, read from the bucket, refuse another batch size before anything starts
    with pytest.raises(Exception, match="batch_size: checkpoint 16, run 32"):
        pretrain(cfg(prepared, runs, "s3run", batch_size=32), **quiet)
    # a preset override reaches the model config, which the checkpoint keeps
    with pytest.raises(Exception, match="temperature: checkpoint 3.0, run 1.0"):
        pretrain(cfg(prepared, runs, "s3run", model_set={"temperature": 1.0}), **quiet)


def test_config_errors():
    base = dict(data="d", tokenizer="t", storage_path="s", name="n")
    with pytest.raises(ConfigError, match="does not divide --batch-size 16"):
        TrainConfig(**base, batch_size=16, micro_batch_size=6)
    with pytest.raises(ConfigError, match="4 workers need at least one micro-batch each"):
        TrainConfig(**base, batch_size=16, micro_batch_size=8, num_workers_min=2, num_workers_max=4)
    # any world size in an elastic range: micro-batches fixed, dealt unevenly when needed
    assert TrainConfig(**base, batch_size=128, num_workers_min=2, num_workers_max=8).micro_batch == 16
    assert TrainConfig(**base, batch_size=128, num_workers_min=1, num_workers_max=3).micro_batch == 32
    assert TrainConfig(**base, batch_size=128, num_workers_min=4, num_workers_max=4).micro_batch == 32
    with pytest.raises(ConfigError, match="--allreduce-dtype must be fp32 or bf16, not 'fp16'"):
        TrainConfig(**base, allreduce_dtype="fp16")
    with pytest.raises(ConfigError, match="unknown preset 'huge'"):
        TrainConfig(data="d", tokenizer="t", storage_path="s", name="n", preset="huge")
    with pytest.raises(ConfigError, match="either --data"):
        TrainConfig(data="d", corpus="c", tokenizer="t", storage_path="s", name="n")
    with pytest.raises(ConfigError, match="vocab_size comes from the tokenizer"):
        TrainConfig(**base, model_set={"vocab_size": 100})
    with pytest.raises(ConfigError, match="the model has no field 'heads'"):
        TrainConfig(**base, model_set={"heads": 2})
    with pytest.raises(ConfigError, match="width 256 is not divisible by 3 attention heads"):
        TrainConfig(**base, model_set={"num_heads": 3})
    with pytest.raises(ConfigError, match="temperature takes float values"):
        TrainConfig(**base, model_set={"temperature": "hot"})


def test_model_set_flags(job_module, capsys):
    """--model-set FIELD=VALUE, repeatable: typed by the model field. A flag without "=" is a usage
    error; a field or value the model refuses is a ConfigError (the job's "error:" and exit 2)."""
    pretrain_job = job_module("pretrain")
    base = ["--data", "d", "--tokenizer", "t", "--storage-path", "s", "--name", "n", "--preset", "tiny"]
    c = pretrain_job.parse_args(
        base
        + ["--model-set", "temperature=1", "--model-set", "gen-num-layers=1", "--model-set", "mask_prob=0.2"]
    )
    assert c.model_set == {"temperature": 1.0, "gen_num_layers": 1, "mask_prob": 0.2}
    assert isinstance(c.model_set["temperature"], float) and isinstance(c.model_set["gen_num_layers"], int)
    assert TrainConfig.from_dict(json.loads(c.to_json())) == c  # kept in train_config.json
    assert pretrain_job.parse_args(base).model_set == {}
    with pytest.raises(SystemExit) as e:
        pretrain_job.parse_args(base + ["--model-set", "temperature"])
    assert e.value.code == 2 and "expected FIELD=VALUE" in capsys.readouterr().err
    for bad, said in (
        ("gen_num_layers=1.5", "gen_num_layers takes int values, got '1.5'"),
        ("temperature=hot", "temperature takes float values, got 'hot'"),
        ("colour=red", "the model has no field 'colour'"),
        ("pad_token_id=0", "pad_token_id comes from the tokenizer"),
        ("num_heads=3", "width 64 is not divisible by 3 attention heads"),
    ):
        with pytest.raises(ConfigError) as e:
            pretrain_job.parse_args(base + ["--model-set", bad])
        assert said in str(e.value), bad


def test_a_worker_group_that_cannot_be_placed(prepared, tmp_path, monkeypatch):
    """On a Ray this process started (it cannot grow) a run that needs more than the machine has
    stops at once with what is missing and writes nothing; on a cluster that may grow it says what
    it waits for. (Ray Train alone retries the placement for minutes, then times out.)"""
    import electra_ray.train.trainer as trainer

    runs = str(tmp_path / "runs")
    cases = (
        (
            {"use_gpu": True},
            "1 CPU + 1 GPU each do not fit on this Ray (1 node(s), 2 CPU, 0 GPU; room for 0)",
        ),
        (
            {"num_workers_min": 3, "num_workers_max": 3, "batch_size": 24},
            "3 training worker(s) of 1 CPU each",
        ),
        ({"cpus_per_worker": 3}, "of 3 CPU each do not fit on this Ray (1 node(s), 2 CPU; room for 0)"),
    )
    for kw, want in cases:
        with pytest.raises(ValueError, match="this job started a local Ray, which cannot grow") as e:
            pretrain(cfg(prepared, runs, "nofit", **kw), **quiet)
        assert want in str(e.value)
        hint = "drop --use-gpu" if kw.get("use_gpu") else "lower --num-workers or --cpus-per-worker"
        assert hint in str(e.value)
    assert not os.path.exists(runs)
    # an elastic range whose lower end fits is fine; a cluster that may grow is waited for
    trainer.check_cluster_fits(cfg(prepared, runs, "e", num_workers_min=2, num_workers_max=4, batch_size=32))
    said = []
    monkeypatch.setattr(trainer, "_started_here", lambda: False)
    trainer.check_cluster_fits(cfg(prepared, runs, "w", use_gpu=True), log=said.append)
    assert said and "waiting for the cluster to add nodes" in said[0]


def _job(*args, **env_vars):
    env = {**os.environ, "RAY_AUTH_MODE": "disabled", "RAY_ADDRESS": "local", **env_vars}
    return subprocess.run(
        [sys.executable, os.path.join(ROOT, "jobs", "pretrain.py"), *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )


def test_cli_errors(prepared, tmp_path):
    other = tmp_path / "other_tok"
    other.mkdir()
    for name in os.listdir(prepared["tokenizer"]):
        data = open(os.path.join(prepared["tokenizer"], name), "rb").read()
        if name == "vocab.txt":
            data = data.replace(b"\n", b"\n", 1) + b"extra1\nextra2\n"
        (other / name).write_bytes(data)
    base = ["--storage-path", str(tmp_path / "runs"), "--name", "x", "--preset", "tiny"]
    r = _job("--data", prepared["data"], "--tokenizer", str(other), *base)
    assert r.returncode == 2 and "another vocabulary" in r.stderr, r.stderr[-2000:]
    empty = tmp_path / "empty"
    empty.mkdir()
    r = _job("--data", str(empty), "--tokenizer", prepared["tokenizer"], *base)
    assert r.returncode == 2 and "no instance shards" in r.stderr, r.stderr[-2000:]
    r = _job(
        "--data",
        prepared["data"],
        "--tokenizer",
        prepared["tokenizer"],
        *base,
        "--num-workers",
        "3",
        "--batch-size",
        "16",
        "--micro-batch-size",
        "8",
    )
    assert r.returncode == 2 and "3 workers need at least one micro-batch each" in r.stderr, r.stderr[-2000:]


def test_fast_step_trains_like_the_plain_step(prepared, plain_run, tmp_path):
    """--fast-step on, compiled on the CPU, in the real loop: same data, masks and schedule as the
    plain step; only the random streams of dropout and Gumbel noise differ (the compiled step
    draws them from the global generator), so the losses agree closely, not bit for bit.

    A fast run on one worker stops at its step-3 checkpoint and is resumed on two workers (an
    elastic resize: flat buffers rebuilt from the checkpoint, the flat gradient all-reduced during
    the backward pass). It must follow an uninterrupted one-worker fast run with the query, key
    and value projections fused (--fast-fuse-linears on) to float tolerance: the noise is keyed by
    micro-batch, not by worker, and the fused projections only reorder sums. The non-finite loss
    injected at batch 4 goes through the skip on two workers. The compiled graphs travel in the
    run folder: the resumed launch (one gradient bucket: the same graphs) takes them all from
    there (test_compile_cache.py: a node with an empty local cache compiles from the file alone)."""
    runs = str(tmp_path)
    fast = {**PLAIN, "fast_step": "on"}
    first = pretrain(cfg(prepared, runs, "fast", **{**fast, "max_steps": 3}), **quiet)
    assert [h["step"] for h in first["history"]] == [1, 2, 3]
    # one bucket: the compiled graph is not cut (the graph cut into pieces along several buckets
    # is tested in test_fast_step.py)
    two = dict(num_workers_min=2, num_workers_max=2, allreduce_bucket_mb=1e3)
    s = pretrain(cfg(prepared, runs, "fast", **fast, **two), **quiet)
    assert [h["step"] for h in s["history"]] == [4, 5, 6], "resumed from the step-3 checkpoint"
    was, now = first["fast_step"], s["fast_step"]
    assert was["cache_loaded"] == 0 and was["cache_saved"] > 0, was
    assert now["cache_loaded"] == was["cache_saved"] and now["cache_saved"] == 0, now
    assert (was["reduce_dtype"], now["reduce_dtype"]) == (None, "float32")  # --allreduce-dtype fp32
    one = pretrain(cfg(prepared, runs, "fused", **fast, fast_fuse_linears="on"), **quiet)
    assert one["fast_step"]["cache_loaded"] == 0 and one["fast_step"]["compile_s"] > 0
    # one file per variant of the step (the fused projections are another graph)
    (plain_file,) = os.listdir(os.path.join(s["run"], "compile_cache"))
    (fused_file,) = os.listdir(os.path.join(one["run"], "compile_cache"))
    assert plain_file.endswith("slots.bin") and fused_file == plain_file.replace(".bin", "-fused.bin")

    ha = [json.loads(ln) for ln in open(os.path.join(s["run"], "metrics.jsonl"))]
    hb = [json.loads(ln) for ln in open(os.path.join(one["run"], "metrics.jsonl"))]
    hp = plain_run["rows"]
    assert [h["step"] for h in ha] == [h["step"] for h in hp] == [h["step"] for h in hb] == [1, 2, 3, 4, 5, 6]
    assert (
        [h["sample_digest"] for h in ha]
        == [h["sample_digest"] for h in hp]
        == [h["sample_digest"] for h in hb]
    )
    assert [h["workers"] for h in ha] == [1, 1, 1, 2, 2, 2] and {h["workers"] for h in hb} == {1}
    for p, a, b in zip(hp, ha, hb):
        assert a["gen_loss"] == pytest.approx(p["gen_loss"], rel=0.02), (p, a)
        assert a["disc_loss"] == pytest.approx(p["disc_loss"], rel=0.1), (p, a)
        assert b["loss"] == pytest.approx(a["loss"], rel=1e-4), (a, b)
    assert ha[-1]["nonfinite_steps"] == hp[-1]["nonfinite_steps"] == hb[-1]["nonfinite_steps"] == 1
    assert "eval_gen_loss" in ha[-1] and "eval_gen_loss" in hb[-1]
    a, b = params(s["run"], 6), params(one["run"], 6)
    worst = max((a[k] - b[k]).abs().max().item() for k in b)
    assert worst < 1e-4, worst

    # a fast run's checkpoint resumes under the plain step (what a fast step that cannot compile
    # tells the user to do: test_a_fast_step_that_cannot_compile_says_where_why_and_what_to_do),
    # weights and Adam moments included: its steps 7-8 follow the fused fast run's own resume
    eight = {**PLAIN, "max_steps": 8}
    p8 = pretrain(cfg(prepared, runs, "fast", **eight), **quiet)
    f8 = pretrain(cfg(prepared, runs, "fused", **eight, fast_step="on", fast_fuse_linears="on"), **quiet)
    assert not p8["fast_step"] and f8["fast_step"]["cache_loaded"] > 0
    assert [h["step"] for h in p8["history"]] == [h["step"] for h in f8["history"]] == [7, 8]
    for p, f in zip(p8["history"], f8["history"]):
        assert p["gen_loss"] == pytest.approx(f["gen_loss"], rel=0.02), (p, f)
        assert p["disc_loss"] == pytest.approx(f["disc_loss"], rel=0.1), (p, f)


def test_a_fast_step_that_cannot_compile_says_where_why_and_what_to_do(prepared, tmp_path):
    """A worker's node without a working C++ compiler (Inductor needs one on CPUs, Triton on GPUs):
    the job ends with one error line naming the worker, its node and device, the cause and the
    flag that trains without the fast step, not with Ray's and Inductor's tracebacks; and at the
    first attempt, though --max-failures allows restarts (each would compile again, and fail)."""
    c = cfg(prepared, str(tmp_path / "runs"), "nocc", max_steps=2)
    r = _job(
        *cli_args(c),
        *("--storage-path", c.storage_path, "--name", c.name, "--fast-step", "on", "--max-failures", "2"),
        CXX=str(tmp_path / "no-such-compiler"),
        TORCHINDUCTOR_CACHE_DIR=str(tmp_path / "inductor"),  # cold: a cached graph needs no compiler
    )
    assert r.returncode == 2, r.stderr[-3000:]
    # the last "error:" line: Ray's log lines from the workers may still come after it
    said = [ln for ln in r.stderr.splitlines() if ln.startswith("error: ")][-1]
    assert said.startswith("error: the fast step (--fast-step on) could not start on worker 0 (node "), said
    assert ", CPU): " in said and "compiler" in said, said
    assert said.endswith(
        "--fast-step off trains the same model with the plain eager step (slower; checkpoints resume across the two)"
    )
    assert json.loads(r.stdout.strip().splitlines()[-1]) == {"ok": False, "error": said[len("error: ") :]}
    assert (r.stdout + r.stderr).count("fast step: compiling") == 1, "one attempt, no restart"
    # a worker that had loaded compiled graphs from the run folder also names that way out
    e = fast_step_error(RuntimeError("boom\nand more"), "auto", 1, torch.device("cpu"), cached=3)
    assert "(--fast-step auto) could not start on worker 1 (node " in str(e), e
    assert ", CPU): RuntimeError: boom — it had loaded 3 compiled graphs from the run folder's" in str(e), e
    assert "--fast-compile-cache off" in str(e) and "and more" not in str(e), e


def test_the_worker_error_that_says_why_is_the_one_reported_and_not_retried():
    """Several workers fail together: the one whose error is ours (here rank 1's FastStepError) is
    the job's error line, not rank 0's collective torn down by it; and a FastStepError on any
    worker is not retried (a restart would compile again and fail again)."""
    from ray.train import WorkerGroupError

    from electra_ray.cli import root_cause
    from electra_ray.train.failures import cannot_be_cured_by_a_restart

    torn = RuntimeError("[../gloo/transport/tcp/pair.cc:534] Connection closed by peer")
    why = FastStepError("the fast step (--fast-step on) could not start on worker 1 (node 10.0.0.2, CPU): …")
    both = WorkerGroupError("2 workers failed", {0: torn, 1: why})
    assert root_cause(both) is why and cannot_be_cured_by_a_restart(both)
    first = FastStepError("worker 0's")
    assert root_cause(WorkerGroupError("", {1: why, 0: first})) is first  # the lowest rank among ours
    lost = WorkerGroupError("a node died", {0: torn, 1: RuntimeError("worker died")})
    assert root_cause(lost) is lost and not cannot_be_cured_by_a_restart(lost)  # retried, as before


@pytest.mark.parametrize(
    "job", ["prepare_corpus", "train_tokenizer", "tokenize_corpus", "pretrain", "export"]
)
def test_job_help_shows_the_usage_and_the_defaults(job, job_module, capsys):
    mod = job_module(job)
    with pytest.raises(SystemExit) as e:
        mod.main(["--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    assert f"python jobs/{job}.py" in out  # the usage example, as written
    if job == "pretrain":
        assert "--tokenizer out/tokenizer \\\n        --storage-path" in out  # the example's line break
        options = out.split("\noptions:\n", 1)[1]
        helps = {}  # each flag's help text, its wrapped lines joined
        for line in options.splitlines():
            if line.startswith("  -"):
                flag, current = line.split()[0].rstrip(","), line
                helps[flag] = current
            else:
                helps[flag] += line
        for flag, default in (("--batch-size", "128"), ("--num-workers", "1"), ("--lr", "0.0005")):
            text = " ".join(helps[flag].split())
            assert f"(default: {default})" in text, text
        assert "(default: None)" not in out
