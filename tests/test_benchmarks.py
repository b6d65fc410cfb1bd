"""The benchmark scripts still start: each answers --help (their imports and argument parsers work).

Their figures are measured by running them (docs/performance.md); this only keeps them from
rotting when the code they drive changes.
"""

from __future__ import annotations

import glob
import json
import os
import subprocess
import sys

import pytest
from conftest import ROOT

SCRIPTS = sorted(glob.glob(os.path.join(ROOT, "benchmarks", "*.py")))


def test_there_are_benchmarks():
    names = {os.path.basename(p) for p in SCRIPTS}
    assert {"bench_train.py", "profile_step.py", "bench_corpus.py", "bench_tokenize.py"} <= names


@pytest.mark.parametrize("script", SCRIPTS, ids=os.path.basename)
def test_benchmark_answers_help(script):
    r = subprocess.run(
        [sys.executable, script, "--help"], capture_output=True, text=True, timeout=120, cwd=ROOT
    )
    assert r.returncode == 0, r.stderr[-2000:]
    assert "python benchmarks/" in r.stdout, r.stdout[:500]  # the usage line of its docstring


def test_gpu_benchmark_runs_without_ray(tmp_path):
    """The GPU image has torch and transformers but no Ray (docs/performance.md): bench_train.py's
    step variants must run there. A `ray` package that fails to import stands in for its absence
    (a run on a GPU once trained every variant and then died importing Ray for the MFU figure)."""
    (tmp_path / "ray").mkdir()
    (tmp_path / "ray" / "__init__.py").write_text("raise ImportError('no Ray on the GPU image')\n")
    env = dict(os.environ, PYTHONPATH=str(tmp_path))
    cmd = [sys.executable, "benchmarks/bench_train.py", "--device", "cpu", "--preset", "tiny"]
    cmd += ["--variants", "plain", "--batch", "2", "--steps", "1", "--threads", "1"]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=ROOT, env=env)
    assert r.returncode == 0, r.stderr[-2000:]
    assert json.loads(r.stdout.strip().splitlines()[-1])["plain_steps_per_s"] > 0, r.stdout[-2000:]


def test_bench_budget_skips_what_no_longer_fits_and_still_prints_json():
    """gpu_check.sh gives each stage a --budget: a variant that no longer fits is skipped (not killed
    with the figures of those before it), and the last line is still the JSON object."""
    cmd = [sys.executable, "benchmarks/bench_train.py", "--device", "cpu", "--preset", "tiny"]
    cmd += ["--variants", "plain", "--budget", "1", "--inductor", "combo_kernels=True"]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "tiny/plain: skipped, the --budget of 1 s is spent" in r.stdout, r.stdout
    figures = json.loads(r.stdout.strip().splitlines()[-1])
    assert figures["plain_steps_per_s"] is None and figures["inductor"] == {"combo_kernels": True}


@pytest.mark.parametrize(
    "setting,error",
    [
        ("nosuch=1", "torch._inductor.config has no setting 'nosuch'"),
        ("combo_kernels=3", "combo_kernels is a bool (now False)"),
        ("combo_kernels", "expected KEY=VALUE"),
    ],
)
def test_bench_inductor_settings_are_checked(setting, error):
    cmd = [sys.executable, "benchmarks/bench_train.py", "--device", "cpu", "--preset", "tiny"]
    cmd += ["--variants", "fast", "--inductor", setting]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert r.returncode == 2 and error in r.stderr, r.stderr[-2000:]


@pytest.mark.parametrize("variant", ["plain+fused", "fast+fast"])
def test_bench_variant_modifiers_are_checked(variant):
    """+fused modifies a fast-step variant (overlap+fused); anything else is refused up front."""
    cmd = [sys.executable, "benchmarks/bench_train.py", "--device", "cpu", "--preset", "tiny"]
    cmd += ["--variants", f"fast,{variant}"]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert r.returncode == 2, r.stderr[-2000:]
    assert "only a fast-step variant takes a modifier, and only +fused" in r.stderr, r.stderr[-2000:]


def test_data_path_benchmark_runs_and_builds_on_the_corpus_itself():
    """bench_data_path.py (gpu_check.sh's `data` stage) on a small corpus: its JSON has every figure,
    and on a CPU the fast step's batches read the corpus's own memory (no copy of the token ids)."""
    cmd = [sys.executable, "benchmarks/bench_data_path.py", "--quick", "--tokens", "2e6", "--steps", "5"]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert r.returncode == 0, r.stderr[-2000:]
    out = json.loads(r.stdout.strip().splitlines()[-1])
    assert out["corpus"]["tokens"] > 1.9e6 and out["setup"]["zero_copy"] is True, out
    assert out["epoch_start"]["steps_per_epoch"] == (out["corpus"]["instances"] - 10_000) // 128
    assert out["host"]["ms"] > 0 and out["fast_build"]["host_ms"] > 0 and out["plain_build"]["ms"] > 0


def _bench_allreduce():
    sys.path.insert(0, os.path.join(ROOT, "benchmarks"))
    import bench_allreduce

    return bench_allreduce


def test_the_scaling_model_exposes_what_the_backward_pass_cannot_hide():
    """bench_allreduce.py's model: buckets all-reduced one at a time, each from when the backward
    pass has it ready; only what runs past the backward pass's end costs time."""
    m = _bench_allreduce()
    assert m.exposed_ms(10.0, [0.1, 0.2], [1.0, 1.0]) == 0.0  # both done long before the end
    assert m.exposed_ms(10.0, [0.5, 1.0], [2.0, 3.0]) == pytest.approx(3.0)  # the last one is all exposed
    # the second queues behind the first
    assert m.exposed_ms(10.0, [0.9, 0.9], [2.0, 3.0]) == pytest.approx(4.0)
    assert m.exposed_ms(10.0, [0.0], [25.0]) == pytest.approx(15.0)
    # a ring moves 2(n-1)/n of the bytes per GPU: 1 GB over 8 GPUs at 400 GB/s, plus the latency
    assert m.ring_ms(1e9, 8, 400.0, 0.0) == pytest.approx(4.375)
    assert m.ring_ms(1e9, 8, 400.0, 25.0) == pytest.approx(4.4)
    assert m.ring_ms(1e9, 1, 400.0, 25.0) == 0.0
    table = {8: 400.0, 32: 45.0}
    assert [m.bus_gbps_for(n, table) for n in (2, 8, 9, 32, 64)] == [400.0, 400.0, 45.0, 45.0, 45.0]


def test_allreduce_benchmark_measures_buckets_on_two_ranks(tmp_path):
    """bench_allreduce.py on two gloo processes (without Ray, as on the GPU image): the flat gradient
    cut into buckets that the backward pass fills in order (the shared embeddings', the pass's very
    last gradient, in a late bucket), each bucket's all-reduce timed, and the model's rows
    consistent with the measurements."""
    cmd = [
        sys.executable,
        "benchmarks/bench_allreduce.py",
        "--device",
        "cpu",
        "--ranks",
        "2",
        "--preset",
        "tiny",
    ]
    cmd += ["--bucket-mb", "0.3", "--iters", "2", "--batch", "4", "--step-ms", "tiny=5", "--gpus", "1,8"]
    (tmp_path / "ray").mkdir()  # as on the GPU image: no Ray
    (tmp_path / "ray" / "__init__.py").write_text("raise ImportError('no Ray on the GPU image')\n")
    env = dict(os.environ, PYTHONPATH=str(tmp_path))
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=ROOT, env=env)
    assert r.returncode == 0, r.stderr[-2000:]
    out = json.loads(r.stdout.strip().splitlines()[-1])
    assert (out["ranks"], out["backend"]) == (2, "gloo"), out
    tiny = out["presets"]["tiny"]
    buckets = tiny["buckets"]
    assert len(buckets) >= 3, buckets
    assert sum(b["mb"] for b in buckets) == pytest.approx(tiny["grad_mb"], rel=1e-3)  # but the end's padding
    ready = [b["ready"] for b in buckets]
    assert ready == sorted(ready) and 0 <= ready[0] and ready[-1] <= 1, ready
    assert ready[0] < ready[-1] and ready[-1] > 0.9, ready  # the embeddings' bucket at the end
    assert all(b["ms"] > 0 and b["bus_gbps"] > 0 for b in buckets), buckets
    assert tiny["whole_ms"] > 0 and 0 < tiny["backward_share"] < 1, tiny
    rows = {(x["scaling"], x["gpus"]): x for x in tiny["model"]}
    assert set(rows) == {("here", 2), ("strong", 1), ("strong", 8), ("weak", 8)}, rows
    here = rows["here", 2]
    assert here["allreduce_ms"] == pytest.approx(sum(b["ms"] for b in buckets))
    assert here["compute_ms"] == pytest.approx(tiny["forward_ms"] + tiny["backward_ms"])
    assert rows["strong", 1]["efficiency"] == 1.0 and rows["strong", 8]["compute_ms"] == pytest.approx(5 / 8)
    for x in rows.values():
        assert 0 <= x["exposed_ms"] <= x["allreduce_ms"] + 1e-9, x
        assert x["efficiency"] == pytest.approx(x["compute_ms"] / (x["compute_ms"] + x["exposed_ms"]))
    assert "bucket 0:" in r.stdout and "efficiency" in r.stdout, r.stdout[-2000:]
