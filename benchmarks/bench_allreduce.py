"""The gradient all-reduce of several workers: what each bucket of the fast step's gradient costs,
when the backward pass has it ready, and the scaling efficiency that follows for 1 → 8 → 32 GPUs.

    python benchmarks/bench_allreduce.py --device cpu --ranks 2 --preset small,base
    python benchmarks/bench_allreduce.py --device cuda --preset small,base     (every visible GPU)
    torchrun --nnodes 4 --nproc-per-node 8 [rendezvous flags] benchmarks/bench_allreduce.py --device cuda

Per preset, on every rank, the gradient as each of several workers' fast step holds it (FastStep:
one flat buffer, cut into buckets of --bucket-mb in the order the backward pass fills them; NCCL
on GPUs, gloo on CPUs):

  arrival    eager forward and backward passes of --batch sequences (the median of --passes,
             after a warm-up pass), the device synchronised at each parameter's gradient: when
             each bucket is complete (its all-reduce can start), as a fraction of the backward
             pass, and the backward pass's share of forward + backward
  buckets    each bucket's all-reduce alone: median of --iters, the slowest rank's; and its bus
             bandwidth (bytes × 2(n−1)/n ÷ time, NCCL's convention)
  whole      one all-reduce of the whole flat gradient (what --allreduce-bucket-mb 0 runs)
             (with --allreduce-dtype bf16 the gradient is summed in bf16, as pretrain.py's flag
             does: half the bytes; the casts around it are not timed)
  pipelined  every bucket launched at once and waited for, as the step's last bucket finds them

Then the scaling model (docs/performance.md, "Several GPUs"): each GPU's step takes t ms, its
backward pass the measured share of it; bucket k's all-reduce starts when the bucket is complete
and bucket k−1's is done (one collective stream); what runs past the end of the backward pass is
exposed. Efficiency = t ÷ (t + exposed), and without overlap t ÷ (t + whole). t is --step-ms (by
default the one-GPU fast step measured on an H200) ÷ n at a fixed global batch of 128 (`strong`:
optimistic, since small shares do not run n times faster) or t itself at 128 sequences per GPU
(`weak`). The all-reduce times are the measured ones where this run had that many GPUs; otherwise
they are predicted from --bus-gbps (assumed bus bandwidths by world size) and --latency-us. On a
CPU the run's own row uses its own eager step and gloo's measured times: it checks the method, it
says nothing about GPUs. The last line is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from bench_train import SEQ, SPECIAL, VOCAB, arrays, sync  # noqa: E402  (the script's folder is on sys.path)

# the one-GPU fast step (ms) measured on one H200, 2026-11-29 (docs/performance.md): the step
# several workers run (no second stream), at 128 × 128
STEP_MS = {"small": 12.43, "base": 36.4}
# assumed bus bandwidths (GB/s): one node's GPUs on NVLink/NVSwitch; 4 nodes over the network
BUS_GBPS = {8: 400.0, 32: 45.0}
GLOBAL_BATCH = 128


def ring_ms(nbytes: float, n: int, bus_gbps: float, latency_us: float) -> float:
    """A ring all-reduce of ``nbytes`` over ``n`` ranks at a bus bandwidth of ``bus_gbps``."""
    if n <= 1:
        return 0.0
    return latency_us / 1e3 + 2 * (n - 1) / n * nbytes / (bus_gbps * 1e9) * 1e3


def exposed_ms(backward_ms: float, ready: list[float], comm_ms: list[float]) -> float:
    """How long the all-reduces run past the end of a backward pass of ``backward_ms``: bucket k
    is ready at ``ready[k]`` (a fraction of the backward pass) and takes ``comm_ms[k]``; one
    collective at a time, in bucket order (one stream, the same order on every rank)."""
    end = 0.0
    for r, c in zip(ready, comm_ms, strict=True):
        end = max(end, r * backward_ms) + c
    return max(0.0, end - backward_ms)


def bus_gbps(nbytes: float, n: int, ms: float) -> float | None:
    """The bus bandwidth of an all-reduce of ``nbytes`` over ``n`` ranks that took ``ms`` (NCCL's
    convention: ``ring_ms`` inverted, latency included); None for one rank."""
    return 2 * (n - 1) / n * nbytes / (ms / 1e3) / 1e9 if n > 1 else None


def bus_gbps_for(n: int, table: dict[int, float]) -> float:
    """The assumed bus bandwidth of the smallest listed world size >= n (else the largest's)."""
    sizes = sorted(table)
    return table[next((s for s in sizes if s >= n), sizes[-1])]


def _setup(preset: str, dev, world: int, batch: int, bucket_mb: float):
    import torch
    from bench_train import _model_and_optimizer, make_fast

    from electra_ray.config import model_preset

    torch.manual_seed(0)
    cfg = model_preset(preset, vocab_size=VOCAB, pad_token_id=SPECIAL[2], max_position_embeddings=SEQ)
    model, opt, _ = _model_and_optimizer(cfg, dev)
    opts = dict(compile=False, graphs=False, world=world, all_reduce=True, bucket_mb=bucket_mb)
    return cfg, model, make_fast(cfg, model, opt, dev, batch, **opts)


def arrival(cfg, model, fast, dev, batch: int, passes: int) -> dict:
    """Eager forward + backward passes with the device synchronised at each parameter's gradient:
    each bucket's ready time as a fraction of the backward pass, in bucket (launch) order; the
    median of ``passes`` passes after a warm-up pass."""
    import torch

    from electra_ray.model.masking import draw_masks, step_generator
    from electra_ray.train.data import build_batch, global_rows

    grad = fast.flat[1]
    params = [p for p in model.parameters() if p.requires_grad]
    arr = arrays(batch)
    ids, types, att = (torch.from_numpy(x) for x in build_batch(arr, global_rows(0, batch, arr.n, 0), SEQ, 3))
    m = draw_masks(
        ids, att, SPECIAL, mask_prob=0.15, mask_token_prob=0.85,
        max_predictions=cfg.max_predictions(SEQ), generator=step_generator(0, 0),
    )  # fmt: skip
    ids, types, att, m = (x.to(dev) for x in (ids, types, att, m))
    amp = torch.autocast(dev.type, dtype=torch.bfloat16, enabled=dev.type == "cuda")
    seen: dict[int, float] = {}

    def hook(p):
        def at(_grad):
            sync(dev)
            seen[id(p)] = time.perf_counter()

        return at

    handles = [p.register_hook(hook(p)) for p in params]
    runs = []
    for i in range(passes + 1):  # the first pass warms up the kernels and the allocator
        seen.clear()
        sync(dev)
        t0 = time.perf_counter()
        with amp:
            loss = model(ids, types, att, m, SPECIAL[3]).loss
        sync(dev)
        t1 = time.perf_counter()
        loss.backward()
        sync(dev)
        t2 = time.perf_counter()
        grad.zero_()
        done = [t1] * len(fast.buckets)
        for p in params:  # a parameter without a gradient (unused) holds its bucket to the end
            b = fast.bucket_of[id(p)]
            done[b] = max(done[b], seen.get(id(p), t2))
        ready, latest = [], t1
        for t in done:  # launched in bucket order: a bucket waits for the ones before it
            latest = max(latest, t)
            ready.append((latest - t1) / (t2 - t1))
        if i:
            runs.append((ready, (t1 - t0) * 1e3, (t2 - t1) * 1e3))
    for h in handles:
        h.remove()
    med = statistics.median
    return {
        "ready": [med(r[0][b] for r in runs) for b in range(len(fast.buckets))],
        "forward_ms": med(r[1] for r in runs),
        "backward_ms": med(r[2] for r in runs),
    }


def time_allreduce(dist, dev, tensors, iters: int, together: bool = False) -> float:
    """Median ms of all-reducing ``tensors`` one after another (``together``: all launched at once,
    then waited for), the slowest rank's."""
    import torch

    times = []
    for i in range(iters + 2):  # two warm-up rounds
        dist.barrier()
        sync(dev)
        t0 = time.perf_counter()
        if together:
            for w in [dist.all_reduce(t, async_op=True) for t in tensors]:
                w.wait()
        else:
            for t in tensors:
                dist.all_reduce(t)
        sync(dev)
        if i >= 2:
            times.append((time.perf_counter() - t0) * 1e3)
    med = torch.tensor([statistics.median(times)], device=dev, dtype=torch.float64)
    dist.all_reduce(med, op=dist.ReduceOp.MAX)
    return float(med.item())


def measure(preset: str, dev, world: int, a) -> dict:
    import torch
    import torch.distributed as dist

    cfg, model, fast = _setup(preset, dev, world, a.batch, a.bucket_mb)
    when = arrival(cfg, model, fast, dev, a.batch, a.passes)
    grad = fast.flat[1]  # what goes on the wire: the flat gradient, or its copy in bf16
    if a.allreduce_dtype == "bf16":
        grad = torch.zeros_like(grad, dtype=torch.bfloat16)
    size = grad.element_size()
    slices = [grad[s:e] for s, e in fast.buckets]
    buckets = []
    for sl, ready in zip(slices, when["ready"]):
        ms = time_allreduce(dist, dev, [sl], a.iters)
        nbytes = sl.numel() * size
        buckets.append(
            {"mb": nbytes / 2**20, "ready": ready, "ms": ms, "bus_gbps": bus_gbps(nbytes, world, ms)}
        )
    whole_ms = time_allreduce(dist, dev, [grad], a.iters)
    pipelined_ms = time_allreduce(dist, dev, slices, a.iters, together=True)
    return {
        "grad_mb": grad.numel() * size / 2**20,
        "params_m": sum(p.numel() for p in model.parameters()) / 1e6,
        "forward_ms": when["forward_ms"],
        "backward_ms": when["backward_ms"],
        "backward_share": when["backward_ms"] / (when["forward_ms"] + when["backward_ms"]),
        "buckets": buckets,
        "whole_ms": whole_ms,
        "whole_bus_gbps": bus_gbps(grad.numel() * size, world, whole_ms),
        "pipelined_ms": pipelined_ms,
    }


def model_rows(m: dict, step_ms: float | None, world: int, device: str, a) -> list[dict]:
    """The scaling model's rows for ``m`` (one preset's measurements)."""
    ready = [b["ready"] for b in m["buckets"]]
    nbytes = [b["mb"] * 2**20 for b in m["buckets"]]
    whole_bytes = m["grad_mb"] * 2**20
    rows = []
    if device == "cpu" and world > 1:  # this run itself: its eager step and gloo's measured times
        t = m["forward_ms"] + m["backward_ms"]
        rows.append(_row("here", world, t, m["backward_share"], ready, [b["ms"] for b in m["buckets"]],
                         m["whole_ms"], f"measured (gloo, {world} CPU processes, eager step)", a.batch))  # fmt: skip
    if step_ms is None:
        return rows
    share = m["backward_share"] if a.backward_share is None else a.backward_share
    for n in sorted(set(a.gpus) | ({world} if device == "cuda" else set())):
        if device == "cuda" and n == world:
            comm, whole, source = [b["ms"] for b in m["buckets"]], m["whole_ms"], f"measured ({n} GPUs)"
        else:
            bw = bus_gbps_for(n, a.bus_gbps)
            comm = [ring_ms(x, n, bw, a.latency_us) for x in nbytes]
            whole = ring_ms(whole_bytes, n, bw, a.latency_us)
            source = f"assumed {bw:g} GB/s, {a.latency_us:g} µs" if n > 1 else "-"
        for scaling, t in (("strong", step_ms / n), ("weak", step_ms)):
            if n == 1 and scaling == "weak":
                continue
            rows.append(_row(scaling, n, t, share, ready, comm, whole, source))
    return rows


def _row(scaling, n, t, share, ready, comm, whole, source, batch=None) -> dict:
    exp = exposed_ms(share * t, ready, comm)
    return {
        "scaling": scaling,
        "gpus": n,
        "per_gpu_batch": batch or (GLOBAL_BATCH // n if scaling == "strong" else GLOBAL_BATCH),
        "backward_share": share,
        "compute_ms": t,
        "allreduce_ms": sum(comm),
        "exposed_ms": exp,
        "efficiency": t / (t + exp),
        "efficiency_no_overlap": t / (t + whole),
        "source": source,
    }


def _pairs(text: str, key=str) -> dict:
    out = {}
    for item in filter(None, text.split(",")):
        k, _, v = item.partition("=")
        out[key(k.strip())] = float(v)
    return out


def worker(rank: int, world: int, folder: str | None, a) -> None:
    import torch
    import torch.distributed as dist

    cuda = a.device == "cuda"
    if cuda:
        dev = torch.device("cuda", int(os.environ.get("LOCAL_RANK", rank)) % torch.cuda.device_count())
        torch.cuda.set_device(dev)
    else:
        dev = torch.device("cpu")
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // world))
    init = f"file://{folder}/store" if folder else "env://"
    dist.init_process_group("nccl" if cuda else "gloo", init_method=init, rank=rank, world_size=world)
    say = print if rank == 0 else (lambda *_, **__: None)
    try:
        out = {"device": torch.cuda.get_device_name(dev) if cuda else "cpu", "backend": dist.get_backend(),
               "ranks": world, "bucket_mb": a.bucket_mb, "allreduce_dtype": a.allreduce_dtype, "batch": a.batch,
               "presets": {}}  # fmt: skip
        for preset in a.presets:
            t0 = time.perf_counter()
            m = measure(preset, dev, world, a)
            step_ms = a.step_ms.get(preset, STEP_MS.get(preset))
            m["step_ms"] = step_ms
            m["model"] = model_rows(m, step_ms, world, a.device, a)
            out["presets"][preset] = m
            say(f"\n{preset}: {m['params_m']:.1f}M parameters, gradient {m['grad_mb']:.1f} MB in "
                f"{len(m['buckets'])} buckets; eager forward {m['forward_ms']:.1f} ms, backward "
                f"{m['backward_ms']:.1f} ms ({m['backward_share']:.0%}); {world} ranks ({dist.get_backend()}), "
                f"{time.perf_counter() - t0:.0f} s")  # fmt: skip
            for k, b in enumerate(m["buckets"]):
                bw = f", bus {b['bus_gbps']:.2f} GB/s" if b["bus_gbps"] else ""
                say(f"  bucket {k}: {b['mb']:7.2f} MB, ready at {b['ready']:5.1%} of the backward pass, "
                    f"all-reduce {b['ms']:8.3f} ms{bw}")  # fmt: skip
            say(f"  whole gradient in one: {m['whole_ms']:.3f} ms; the buckets launched together: "
                f"{m['pipelined_ms']:.3f} ms")  # fmt: skip
            if step_ms is None:
                say(f"  (no --step-ms {preset}=MS: the model's GPU rows are left out)")
            say(
                "  scaling  GPUs  batch/GPU  compute ms  all-reduce ms  exposed ms  efficiency  no overlap  source"
            )
            for r in m["model"]:
                say(f"  {r['scaling']:>7} {r['gpus']:5} {r['per_gpu_batch']:10} {r['compute_ms']:11.2f} "
                    f"{r['allreduce_ms']:14.2f} {r['exposed_ms']:11.2f} {r['efficiency']:11.1%} "
                    f"{r['efficiency_no_overlap']:11.1%}  {r['source']}")  # fmt: skip
        say(json.dumps(out))
    finally:
        dist.barrier()
        dist.destroy_process_group()
    if world > 1:  # gloo's threads can abort a process at its exit ("terminate called without an
        # active exception") after the other rank tore its connections down first: once in a CI run
        # here, despite the barrier; the work is done and printed, so the process ends now
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    p.add_argument("--preset", default="small,base", help="comma-separated model presets")
    p.add_argument("--ranks", type=int, default=None,
                   help="processes to start (default: every visible GPU; 2 on a CPU); under torchrun, "
                   "its WORLD_SIZE")  # fmt: skip
    p.add_argument("--bucket-mb", type=float, default=25.0, help="as pretrain.py's --allreduce-bucket-mb")
    p.add_argument("--allreduce-dtype", choices=("fp32", "bf16"), default="fp32",
                   help="as pretrain.py's: the dtype the gradient is summed in (bf16: half the bytes)")  # fmt: skip
    p.add_argument("--batch", type=int, default=None,
                   help="sequences in the arrival pass (default 128 on a GPU, 8 on a CPU)")  # fmt: skip
    p.add_argument("--iters", type=int, default=10, help="timed all-reduces per measurement")
    p.add_argument("--passes", type=int, default=3, help="timed arrival passes (the median is kept)")
    p.add_argument("--step-ms", default="",
                   help="PRESET=MS,…: the one-GPU step of 128 × 128 (default small=12.43,base=36.4, the H200's)")  # fmt: skip
    p.add_argument("--backward-share", type=float, default=None,
                   help="the backward pass's share of a GPU step in the model (default: as measured here)")  # fmt: skip
    p.add_argument("--gpus", default="1,8,32", help="world sizes of the model's rows")
    p.add_argument("--bus-gbps", default=",".join(f"{n}={g:g}" for n, g in BUS_GBPS.items()),
                   help="N=GB/s,…: assumed bus bandwidth up to N GPUs (NVLink in a node; the network across nodes)")  # fmt: skip
    p.add_argument(
        "--latency-us", type=float, default=25.0, help="assumed time of one collective beyond its bytes"
    )
    a = p.parse_args()
    a.presets = [x for x in a.preset.split(",") if x]
    a.step_ms = _pairs(a.step_ms)
    a.gpus = [int(x) for x in a.gpus.split(",") if x]
    a.bus_gbps = _pairs(a.bus_gbps, int)
    if not a.bus_gbps or min(a.bus_gbps.values()) <= 0:
        p.error("--bus-gbps needs N=GB/s pairs with positive bandwidths")
    if a.backward_share is not None and not 0 < a.backward_share <= 1:
        p.error("--backward-share must be in (0, 1]")
    if a.passes < 1 or a.iters < 1:
        p.error("--passes and --iters must be >= 1")
    if a.bucket_mb <= 0:
        p.error("--bucket-mb must be > 0 (the buckets are what is measured)")
    import torch

    cuda = a.device == "cuda"
    if cuda and not torch.cuda.is_available():
        p.error("--device cuda: no GPU is visible")
    if a.batch is None:
        a.batch = 128 if cuda else 8
    if "RANK" in os.environ and "WORLD_SIZE" in os.environ:  # started by torchrun
        worker(int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"]), None, a)
        return
    if a.ranks is None:
        a.ranks = torch.cuda.device_count() if cuda else 2
    if a.ranks < 1 or (cuda and a.ranks > torch.cuda.device_count()):
        p.error(f"--ranks {a.ranks}: between 1 and the visible GPUs' count on a GPU machine")
    folder = tempfile.mkdtemp(prefix="bench_allreduce_")
    if a.ranks == 1:
        worker(0, 1, folder, a)
    else:
        import torch.multiprocessing as mp

        mp.spawn(worker, args=(a.ranks, folder, a), nprocs=a.ranks, join=True)


if __name__ == "__main__":
    main()
