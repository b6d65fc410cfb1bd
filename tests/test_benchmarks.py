"""The benchmark scripts still start: each answers --help (their imports and argument parsers work).

Their figures are measured by running them (docs/performance.md); this only keeps them from
rotting when the code they drive changes.
"""

from __future__ import annotations

import glob
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
