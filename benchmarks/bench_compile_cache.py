"""How long the fast step takes to get ready on a node: compiled from scratch, from the run folder's
compile cache (a node that never compiled it: train/compile_cache.py), and from the node's own
local Inductor cache (a worker restarted where it ran before).

    python benchmarks/bench_compile_cache.py --device cpu --preset tiny [--overlap] [--fuse-linears]
    python benchmarks/bench_compile_cache.py --device cuda --preset small --overlap

Three fresh processes, each building the job's FastStep (benchmarks/bench_train.py's setup) and
timing its warm-up (compilation and, on a GPU, the CUDA graph capture):
  cold       an empty local cache and an empty run folder; writes the run folder's cache file
  new_node   an empty local cache; the run folder's cache file loaded first
  same_node  the cold process's local cache, no run folder
The last line is one JSON object with the seconds and the cache hits and misses of each.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

CHILD = r"""
import json, sys, time
sys.path[:0] = [sys.argv[1], sys.argv[1] + "/benchmarks"]
import torch
from torch._dynamo.utils import counters
from bench_train import fast_setup
from electra_ray.train import compile_cache

device, preset, batch, run, use_run, overlap, fuse = sys.argv[2:9]
dev = torch.device(device)
if device == "cpu":
    torch.set_num_threads(2)
_, fast, _, _ = fast_setup(preset, device, int(batch), 2, overlap=overlap == "1", fuse_linears=fuse == "1")
t = time.perf_counter()
loaded = compile_cache.load(run, dev, fast.variant) if use_run == "1" else frozenset()
load_s = time.perf_counter() - t
ready_s = fast.warm_up()
saved = compile_cache.save(run, dev, fast.variant, loaded=loaded) if use_run == "1" else 0
print(json.dumps({"warm_up_s": round(ready_s, 1), "load_s": round(load_s, 2), "graphs_loaded": len(loaded),
                  "graphs_saved": saved, "fxgraph_hits": counters["inductor"]["fxgraph_cache_hit"],
                  "fxgraph_misses": counters["inductor"]["fxgraph_cache_miss"]}))
"""


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    p.add_argument("--preset", default="tiny")
    p.add_argument("--batch", type=int, default=None, help="sequences per step (default: bench_train.py's)")
    p.add_argument("--overlap", action="store_true", help="FastStep(overlap=True), as one GPU worker runs it")
    p.add_argument("--fuse-linears", action="store_true")
    p.add_argument("--timeout", type=float, default=900)
    a = p.parse_args()
    sys.path[:0] = [ROOT, os.path.join(ROOT, "benchmarks")]
    from bench_train import CPU_BATCH

    batch = a.batch or (CPU_BATCH.get(a.preset, 16) if a.device == "cpu" else 128)
    scratch = tempfile.mkdtemp(prefix="bench_compile_cache_")
    run = os.path.join(scratch, "run")
    caches = {"cold": "a", "new_node": "b", "same_node": "a"}
    out: dict = {
        "device": a.device,
        "preset": a.preset,
        "batch": batch,
        "overlap": a.overlap,
        "fuse_linears": a.fuse_linears,
    }
    for name in ("cold", "new_node", "same_node"):
        env = {**os.environ, "TORCHINDUCTOR_CACHE_DIR": os.path.join(scratch, "inductor-" + caches[name])}
        args = [a.device, a.preset, str(batch), run, "0" if name == "same_node" else "1"]
        args += ["1" if a.overlap else "0", "1" if a.fuse_linears else "0"]
        r = subprocess.run(
            [sys.executable, "-c", CHILD, ROOT, *args],
            capture_output=True,
            text=True,
            env=env,
            timeout=a.timeout,
        )
        if r.returncode != 0:
            print(r.stderr[-3000:], file=sys.stderr)
            raise SystemExit(f"{name}: exit status {r.returncode}")
        out[name] = json.loads(r.stdout.strip().splitlines()[-1])
        print(name, out[name], flush=True)
    out["cache_file_bytes"] = sum(
        os.path.getsize(os.path.join(run, "compile_cache", f))
        for f in os.listdir(os.path.join(run, "compile_cache"))
    )
    print(json.dumps(out))


if __name__ == "__main__":
    main()
