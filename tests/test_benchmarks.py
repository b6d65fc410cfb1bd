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
