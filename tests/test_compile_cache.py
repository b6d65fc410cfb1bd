"""The fast step's compiled graphs travel with the run folder (electra_ray/train/compile_cache.py).

Each "node" is a fresh process with an empty local Inductor cache (its own TORCHINDUCTOR_CACHE_DIR)
that compiles a small function with its backward pass, as the fast step does, against a run
folder on the moto S3 server. The loop's use of it (saved by the first launch, loaded by the
resumed one) is checked in test_pretrain.py::test_fast_step_trains_like_the_plain_step.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch
from conftest import ROOT, _free_port

from electra_ray import storage
from electra_ray.train import compile_cache

NODE = r"""
import json, os, sys
import torch
from torch._dynamo.utils import counters

from electra_ray.train import compile_cache

run, dead_endpoint = sys.argv[1], sys.argv[2]
cpu, VARIANT = torch.device("cpu"), "16x32-test"
loaded = compile_cache.load(run, cpu, VARIANT)


def layer(x, w, b):
    return torch.nn.functional.gelu(x @ w + b).square().mean()


torch.manual_seed(0)
args = [torch.randn(16, 32, requires_grad=True), torch.randn(32, 32, requires_grad=True), torch.zeros(32, requires_grad=True)]
compiled = torch.compile(layer, dynamic=False)(*args)
grads = torch.autograd.grad(compiled, args)
want = torch.autograd.grad(layer(*args), args)
assert all(torch.allclose(g, h, atol=1e-6) for g, h in zip(grads, want))
saved = compile_cache.save(run, cpu, VARIANT, loaded=loaded)
other = compile_cache.load(run, cpu, "another-variant")
# storage that cannot be reached: a note, and the run goes on
os.environ.update(AWS_ENDPOINT_URL=dead_endpoint, ELECTRA_RAY_IO_RETRIES="1")
unreachable = compile_cache.save(run, cpu, VARIANT)
print(json.dumps({"loaded": len(loaded), "saved": saved, "unreachable": unreachable, "other": len(other),
                  "hits": counters["inductor"]["fxgraph_cache_hit"],
                  "misses": counters["inductor"]["fxgraph_cache_miss"]}))
"""


def _node(uri: str, tmp_path, name: str) -> tuple[dict, str]:
    env = {**os.environ, "TORCHINDUCTOR_CACHE_DIR": str(tmp_path / f"inductor-{name}"), "PYTHONPATH": ROOT}
    r = subprocess.run(
        [sys.executable, "-c", NODE, uri, f"http://127.0.0.1:{_free_port()}"],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    return json.loads(r.stdout.strip().splitlines()[-1]), r.stdout


def test_a_new_node_compiles_from_the_run_folder(bucket, tmp_path):
    run = f"{bucket}/runs/r1"
    first, log1 = _node(run, tmp_path, "a")
    # nothing to load (quietly); forward and backward compiled and written with Dynamo's graphs
    assert first["loaded"] == 0 and first["misses"] == 2 and first["hits"] == 0, first
    assert first["saved"] >= 3 and first["other"] == 0, first
    files = storage.list_files(f"{run}/compile_cache")
    want = os.path.basename(compile_cache.cache_file(run, torch.device("cpu"), "16x32-test"))
    assert [storage.basename(f) for f in files] == [want]
    # the only note: the save to storage that cannot be reached, counted as nothing written
    notes = [ln for ln in log1.splitlines() if ln.startswith("note:")]
    assert len(notes) == 1 and "could not write the compile cache" in notes[0], log1
    assert first["unreachable"] == 0

    second, _ = _node(run, tmp_path, "b")
    # an empty local cache: every graph comes from the run folder, nothing new is written back
    assert second["loaded"] == first["saved"], second
    assert second["hits"] == 2 and second["misses"] == 0, second
    assert second["saved"] == 0
    assert storage.list_files(f"{run}/compile_cache") == files, "no temporary files left behind"


def test_a_damaged_or_unreachable_cache_costs_only_the_compile(tmp_path, monkeypatch):
    run, cpu = str(tmp_path / "run"), torch.device("cpu")
    path = compile_cache.cache_file(run, cpu, "32x128-20slots-overlap")
    assert path == f"{run}/compile_cache/torch-{torch.__version__}-cpu-32x128-20slots-overlap.bin"
    notes: list[str] = []

    def log(*a, **_):
        notes.append(" ".join(map(str, a)))

    load = lambda r: compile_cache.load(r, cpu, "32x128-20slots-overlap", log=log)  # noqa: E731
    assert load(run) == frozenset() and notes == [], "no file yet: quietly nothing"
    os.makedirs(os.path.dirname(path))
    with open(path, "wb") as f:
        f.write(b"not a cache, a truncated upload perhaps")
    assert load(run) == frozenset()
    assert len(notes) == 1 and path in notes[0] and "not usable" in notes[0], notes

    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{_free_port()}")  # nothing listens there
    monkeypatch.setenv("ELECTRA_RAY_IO_RETRIES", "1")
    assert load("s3://bucket/run") == frozenset()
    assert "could not read the compile cache (s3://bucket/run/compile_cache/" in notes[-1], notes
    assert "unreachable" in notes[-1], notes


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
def test_the_cache_file_names_the_gpu():
    path = compile_cache.cache_file("r", torch.device("cuda"), "128x128-20slots")
    major, minor = torch.cuda.get_device_capability()
    assert path.endswith(f"-sm{major}{minor}-128x128-20slots.bin") and " " not in path


def test_the_setting_is_on_or_off():
    from electra_ray.config import ConfigError, TrainConfig

    base = dict(tokenizer="t", storage_path="s", name="n", data="d")
    assert TrainConfig(**base).fast_compile_cache == "on"
    assert TrainConfig(**base, fast_compile_cache="off").fast_compile_cache == "off"
    with pytest.raises(ConfigError, match="--fast-compile-cache must be on or off, not 'auto'"):
        TrainConfig(**base, fast_compile_cache="auto")
