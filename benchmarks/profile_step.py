"""Where a fast step's time goes: torch.profiler over a few steps, and the optimizer update alone.

    python benchmarks/profile_step.py --preset small [--steps 10] [--overlap] [--fuse-linears]  # a GPU
    python benchmarks/profile_step.py --device cpu --preset small --batch 4 --steps 2
    … --update pertensor                                                            # the update before

On a GPU: kernels per step, kernel time per step and the top kernels (CUDA graphs off, so each
kernel shows), the kernel time by kind (GEMMs, attention, Triton's fused kernels, the rest) and by
CUDA stream (with `--overlap`, the job's default on one GPU, the generator's backward pass runs on a
second stream, and the next step's batch is built on a third: what is left on the first is the
step's critical path). On the CPU: the host-side operators per step, counted by name (what would be
launches on a GPU: gradient accumulations, GEMMs, foreach ops). Both then time the update alone
(clip, non-finite skip, Adam; `--update flat`, the default, or `pertensor`) on random gradients.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def kernel_kind(name: str) -> str:
    """A GPU kernel's kind, from its name (cuBLAS/CUTLASS GEMMs, attention, Inductor's Triton)."""
    low = name.lower()
    if any(k in low for k in ("fmha", "flash", "attention", "cudnn")):
        return "attention"
    if any(k in low for k in ("gemm", "cutlass", "nvjet", "xmma", "cublas")):
        return "gemm"
    if low.startswith("triton"):
        return "triton"
    return "other"


def kernel_totals(kernels: list[dict], key) -> dict:
    """{key: (kernels, microseconds)} over a Chrome trace's kernel events."""
    out: dict = collections.defaultdict(lambda: [0, 0.0])
    for e in kernels:
        row = out[key(e)]
        row[0] += 1
        row[1] += float(e.get("dur", 0.0))
    return {k: tuple(v) for k, v in out.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", choices=("cuda", "cpu"), default="cuda")
    ap.add_argument("--preset", default="small")
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--top", type=int, default=25)
    ap.add_argument(
        "--update",
        choices=("flat", "pertensor"),
        default="flat",
        help="flat buffers and a compiled update (the default) or the per-tensor foreach update",
    )
    ap.add_argument("--update-iters", type=int, default=10, help="updates timed after the first")
    ap.add_argument("--overlap", action="store_true", help="the generator's backward on a second stream")
    ap.add_argument(
        "--fuse-linears", action="store_true", help="query, key and value compiled as one linear layer"
    )
    a = ap.parse_args()
    import torch
    from bench_train import SEQ, batch_builder, fast_setup  # benchmarks/ is on sys.path
    from torch.profiler import ProfilerActivity, profile

    from electra_ray.train.fast import BatchesAhead

    cuda = a.device == "cuda"
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    # graphs off: the profiler sees each kernel (a replayed graph shows as one launch)
    cfg, fast, data, order = fast_setup(
        a.preset,
        a.device,
        a.batch,
        a.steps + 20,
        graphs=False,
        flat=a.update == "flat",
        overlap=a.overlap,
        fuse_linears=a.fuse_linears,
    )
    slots = cfg.max_predictions(SEQ)
    t = time.perf_counter()
    fast.warm_up()
    print(
        f"{a.preset} on {a.device}, {a.update} update{', overlap' if a.overlap else ''}"
        f"{', fused linears' if a.fuse_linears else ''}: "
        f"compile {time.perf_counter() - t:.0f} s",
        flush=True,
    )

    # as the job builds them: the next step's batch on a side stream during the step (a GPU)
    batches = BatchesAhead(batch_builder(data, order, a.batch, slots), torch.device(a.device))

    def one(step):
        b = batches.take(step)
        fast.micro_step(b.ids, b.types, b.att, b.masks, b.gen_den, b.disc_den, seed=step)
        fast.step(1e-4)
        batches.ahead(step + 1)

    for s in range(2 if not cuda else 5):
        one(s)
    sync()
    with profile(activities=[ProfilerActivity.CUDA if cuda else ProfilerActivity.CPU]) as prof:
        for s in range(a.steps):
            one(5 + s)
        sync()
    if cuda:
        events = [e for e in prof.events() if e.device_type.name == "CUDA"]
        busy = sum(getattr(e, "device_time", 0) or getattr(e, "cuda_time", 0) for e in events) / 1e3 / a.steps
        print(f"{len(events) / a.steps:.0f} kernels per step, {busy:.2f} ms of kernel time per step")
        print(prof.key_averages().table(sort_by="cuda_time_total", row_limit=a.top, max_name_column_width=70))
        trace = os.path.join(tempfile.mkdtemp(prefix="profile_step_"), "trace.json")
        prof.export_chrome_trace(trace)
        with open(trace) as f:
            kernels = [e for e in json.load(f).get("traceEvents", []) if e.get("cat") == "kernel"]
        for title, key in (
            ("kind", lambda e: kernel_kind(e["name"])),
            ("stream", lambda e: e.get("args", {}).get("stream")),
        ):
            print(f"kernel time per step by {title}:")
            for k, (n, us) in sorted(kernel_totals(kernels, key).items(), key=lambda kv: -kv[1][1]):
                print(f"  {str(k):>10}: {n / a.steps:6.0f} kernels, {us / 1e3 / a.steps:6.2f} ms")
    else:
        counts = collections.Counter(e.name for e in prof.events())
        ops = {k: v / a.steps for k, v in counts.items() if k.startswith("aten::")}
        print(f"{sum(ops.values()):.0f} aten operators per step; by name:")
        for name, n in sorted(ops.items(), key=lambda kv: -kv[1])[: a.top]:
            print(f"  {n:7.0f}  {name}")
        acc = counts.get("torch::autograd::AccumulateGrad", 0) / a.steps
        print(f"  {acc:7.0f}  AccumulateGrad runs (autograd's per-tensor gradient accumulation)")
        print(
            f"  {ops.get('aten::_foreach_add_', 0):7.0f}  aten::_foreach_add_ (on the CPU it adds tensor by tensor)"
        )

    # the update alone, on random gradients (nothing is learned: the model is not used again)
    grads = [p.grad for p in fast.model.parameters() if p.grad is not None]

    def refill() -> None:
        for g in grads:
            g.normal_(mean=0.0, std=1e-3)

    def timed(work) -> float:
        sync()
        t = time.perf_counter()
        for _ in range(a.update_iters):
            work()
        sync()
        return (time.perf_counter() - t) / a.update_iters

    fast.lr.fill_(1e-4)
    refill()
    fast._step()  # the first call compiles
    per = timed(lambda: (refill(), fast._step())) - timed(refill)  # the refill is timed too: take it off
    print(f"update alone ({a.update}): {per * 1e3:.1f} ms per step")


if __name__ == "__main__":
    main()
