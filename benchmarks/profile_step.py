"""Where a fast step's time goes on a GPU: torch.profiler over a few replayed steps, kernels by time.

    python benchmarks/profile_step.py --preset small [--steps 10]

Prints the number of kernels per step, the busy share of the GPU and the top kernels.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--preset", default="small")
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--top", type=int, default=25)
    a = ap.parse_args()
    import torch
    from bench_train import SEQ, SPECIAL, fast_setup  # benchmarks/ is on sys.path
    from torch.profiler import ProfilerActivity, profile

    # graphs off: the profiler sees each kernel (a replayed graph shows as one launch)
    cfg, fast, data, order = fast_setup(a.preset, "cuda", a.batch, a.steps + 20, graphs=False)
    slots = cfg.max_predictions(SEQ)
    t = time.perf_counter()
    fast.warm_up()
    print(f"compile {time.perf_counter() - t:.0f} s", flush=True)

    def one(step):
        ids, types, att = data.batch(order[step * a.batch : (step + 1) * a.batch], SEQ, 3)
        m = data.masks(
            ids, att, SPECIAL, seed=0, key=step, mask_prob=0.15, mask_token_prob=0.85, max_predictions=slots
        )
        fast.micro_step(ids, types, att, m, m.valid.sum().float(), att.sum().float(), seed=step)
        fast.step(1e-4)

    for s in range(5):
        one(s)
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for s in range(a.steps):
            one(5 + s)
        torch.cuda.synchronize()
    events = [e for e in prof.events() if e.device_type.name == "CUDA"]
    busy = sum(getattr(e, "device_time", 0) or getattr(e, "cuda_time", 0) for e in events) / 1e3 / a.steps
    print(f"{len(events) / a.steps:.0f} kernels per step, {busy:.2f} ms of kernel time per step")
    print(prof.key_averages().table(sort_by="cuda_time_total", row_limit=a.top, max_name_column_width=70))


if __name__ == "__main__":
    main()
