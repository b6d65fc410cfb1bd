"""Training step speed: the fast step vs the plain eager step vs a straightforward transformers
implementation, on the CPU or a GPU; on the CPU also our loop under Ray Train (its overhead).

    python benchmarks/bench_train.py --device cuda --preset small,base [--quick]
    python benchmarks/bench_train.py --device cpu --preset tiny,small [--variants plain,hf,ray] [--threads N]

(fast)     train/fast.py: compiled forward+loss and update (Inductor, static shapes; parameters,
           gradients and moments in one flat buffer each), CUDA graphs on a GPU, batches gathered
           and masked on the device from the token ids resident there, metrics summed on the device
(pertensor) the fast step with the per-tensor foreach update it had before (~1,200 small kernels
           for small instead of a compiled loop over four flat tensors)
(overlap)  the fast step with the generator's and the discriminator's halves compiled apart and, on
           a GPU, the generator's backward on a second stream beside the discriminator's forward
           and backward (FastStep(overlap=True); both halves' kernels are small for `small`):
           what the pretraining job runs on one GPU (--fast-overlap auto); `fast` is one stream
(inline)   `overlap` with each batch built on the main stream before its step: every other fast
           variant, like the job, builds the next step's batch on a side stream during the step
           (train.fast.BatchesAhead; on a GPU, else in line as here)
(compiled) the same without CUDA graphs (a diagnostic: what the graphs add)
(buckets)  the fast step as each of several workers runs it, on a one-rank process group (gloo;
           NCCL on a GPU): the forward compiled in pieces, the gradient all-reduced by 25 MiB
           buckets during the backward pass (captured in the graph on a GPU); against `fast`, what
           the multi-worker machinery costs one GPU (the collectives themselves are trivial here)
(allreduce) the same with one all-reduce of the whole gradient after the backward pass
           (--allreduce-bucket-mb 0)
(V+fused)  a fast variant V with the linear layers that read the same tensor (each attention's
           query, key and value) compiled as one (train/graph_passes.py; e.g. overlap+fused)
(plain)    the same model, masking, loss and optimizer run eagerly, batches built on the host
           (bf16 autocast on a GPU): the loop's step without --fast-step
(hf)       a straightforward implementation: full-vocabulary generator logits at every
           position, sampling over the full vocabulary, torch's AdamW, ``.item()`` every step
           (bf16 autocast on a GPU)
(ray)      CPU only: train/loop.py under Ray Train, 1 worker with both CPUs; tokens/s as the loop
           measures it between reports (start-up excluded), and the CPU cores the worker and all
           other processes (Ray's services, the driver, anything else on the machine) used meanwhile
Each variant runs in its own process (peak memory: CUDA's max allocated, or the process's max RSS).
Random token ids, full sequences. MFU counts both networks (model.electra.flops_per_token) against
the card's dense bf16 peak. The last line is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time

from cpu_accounting import cpu_seconds, snapshot

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

CPU_BATCH = {"tiny": 32, "small": 16, "small-samegen": 16, "base": 8}
SEQ = 128
VOCAB = 32768
SPECIAL = (1, 2, 3, 4)  # [CLS] [SEP] [PAD] [MASK]
THREADS = os.cpu_count() or 1  # torch threads on the CPU (--threads), = the Ray worker's CPUs
FUSE_LINEARS = False  # a variant named with "+fused": FastStep(fuse_linears=True)


def arrays(n: int, seq: int = SEQ, seed: int = 0):
    import numpy as np

    from electra_ray.train.data import InstanceArrays

    rng = np.random.default_rng(seed)
    ids = rng.integers(15, VOCAB, size=(n, seq), dtype=np.int64).astype(np.uint16)
    ids[:, 0], ids[:, seq // 2], ids[:, -1] = 1, 2, 2  # [CLS] A [SEP] B [SEP]
    offsets = np.arange(n + 1, dtype=np.int64) * seq
    return InstanceArrays(ids.reshape(-1), offsets, np.full(n, seq // 2 + 1, dtype=np.int32))


def _setup(preset: str, device: str, batch: int, steps: int):
    import torch

    from electra_ray.config import model_preset

    torch.manual_seed(0)
    if device == "cpu":
        torch.set_num_threads(THREADS)
    cfg = model_preset(preset, vocab_size=VOCAB, pad_token_id=3, max_position_embeddings=max(SEQ, 128))
    return cfg, arrays(batch * (steps + 8))


def _result(device: str, times: float, steps: int, batch: int, cfg, extra: dict | None = None) -> dict:
    import torch

    from electra_ray.model.electra import flops_per_token
    from electra_ray.train.fast import peak_flops

    dt = times / steps
    tokens_s = batch * SEQ / dt
    res = {"step_s": dt, "steps_per_s": 1 / dt, "tokens_per_s": tokens_s, "batch": batch}
    res["tflops_per_s"] = tokens_s * flops_per_token(cfg, SEQ) / 1e12
    peak = peak_flops(torch.device(device))
    if peak:
        res["mfu"] = res["tflops_per_s"] * 1e12 / peak
    if device == "cuda":
        res["peak_mem_mb"] = torch.cuda.max_memory_allocated() / 2**20
        res["gpu"] = torch.cuda.get_device_name()
    res.update(extra or {})
    return res


def _model_and_optimizer(cfg, dev):
    from electra_ray.model.electra import ElectraPretrainer
    from electra_ray.train.optim import make_optimizer

    model = ElectraPretrainer(cfg).to(dev)
    model.tie()
    opt, sched = make_optimizer(
        model, lr=5e-4, betas=(0.9, 0.999), eps=1e-6, weight_decay=0.01, warmup=10, total=10**6
    )
    return model, opt, sched


def fast_setup(
    preset: str,
    device: str,
    batch: int,
    steps: int,
    *,
    graphs: bool = True,
    flat: bool = True,
    overlap: bool = False,
    bucket_mb: float | None = None,
    fuse_linears: bool = False,
):
    """(cfg, FastStep, DeviceInstances, the epoch's order on the device) for ``steps`` steps.
    ``bucket_mb``: the step of one of several workers (on a one-rank process group)."""
    import torch
    import torch.distributed as dist

    from electra_ray.train.data import epoch_order
    from electra_ray.train.fast import DeviceInstances

    cfg, arr = _setup(preset, device, batch, steps)
    dev = torch.device(device)
    if bucket_mb is not None:
        store = os.path.join(tempfile.mkdtemp(prefix="bench_train_pg_"), "store")
        backend = "nccl" if device == "cuda" else "gloo"
        dist.init_process_group(backend, init_method=f"file://{store}", rank=0, world_size=1)
    model, opt, _ = _model_and_optimizer(cfg, dev)
    data = DeviceInstances(arr, dev)
    fast = make_fast(
        cfg,
        model,
        opt,
        dev,
        batch,
        graphs=graphs and device == "cuda",
        flat=flat,
        overlap=overlap,
        all_reduce=bucket_mb is not None,
        bucket_mb=bucket_mb or 0.0,
        fuse_linears=fuse_linears,
    )
    return cfg, fast, data, data.rows_of_epoch(0, lambda: epoch_order(arr.n, 0, 0))


def make_fast(cfg, model, opt, dev, batch: int, **options):
    """The benchmarks' FastStep: micro-batches of ``batch`` × SEQ, the reference's clip norm."""
    from electra_ray.train.fast import FastStep

    slots = cfg.max_predictions(SEQ)
    return FastStep(
        model,
        opt,
        device=dev,
        micro=batch,
        seq_len=SEQ,
        slots=slots,
        mask_id=SPECIAL[3],
        clip_norm=1.0,
        **options,
    )


def batch_builder(data, order, batch: int, slots: int):
    """``build(k)``: data batch ``k`` (rows ``order[k·batch : (k+1)·batch]``) gathered and masked on
    the device as the job's fast step builds its batches, with the reference's masking rates."""
    from electra_ray.train.fast import device_batch

    mask_kw = dict(special_ids=SPECIAL, seed=0, mask_prob=0.15, mask_token_prob=0.85, max_predictions=slots)
    pad = SPECIAL[2]
    return lambda k: device_batch(data, order[k * batch : (k + 1) * batch], SEQ, pad, key=k, **mask_kw)


def sync(device) -> None:
    """Wait for the device's queued work (a GPU; nothing on a CPU): ``device`` a name or a torch.device."""
    import torch

    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


class _Clock:
    """Wall time of a window of steps: synchronises the device at the window's ends only."""

    def __init__(self, device: str):
        self.device = device

    def now(self) -> float:
        sync(self.device)
        return time.perf_counter()


def run_plain(preset: str, device: str, batch: int, steps: int, warmup: int) -> dict:
    import torch

    from electra_ray.model.masking import draw_masks, step_generator
    from electra_ray.train.data import build_batch, global_rows

    cfg, arr = _setup(preset, device, batch, steps + warmup)
    dev = torch.device(device)
    model, opt, sched = _model_and_optimizer(cfg, dev)
    amp = (
        torch.autocast("cuda", dtype=torch.bfloat16)
        if device == "cuda"
        else torch.autocast("cpu", enabled=False)
    )
    acc = torch.zeros(8, device=dev, dtype=torch.float64)
    clock = _Clock(device)
    for step in range(warmup + steps):
        if step == warmup:
            t0 = clock.now()
        ids, types, att = (
            torch.from_numpy(x) for x in build_batch(arr, global_rows(step, batch, arr.n, 0), SEQ, 3)
        )
        m = draw_masks(
            ids,
            att,
            SPECIAL,
            mask_prob=0.15,
            mask_token_prob=0.85,
            max_predictions=cfg.max_predictions(SEQ),
            generator=step_generator(0, step),
        )
        torch.manual_seed(step)
        with amp:
            out = model(ids.to(dev), types.to(dev), att.to(dev), m.to(dev), 4)
        out.loss.backward()
        acc += out.metrics()
        norm = torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step(ok=torch.isfinite(norm))
        sched.step()
        opt.zero_grad(set_to_none=True)
    t1 = clock.now()
    return _result(device, t1 - t0, steps, batch, cfg, {"gen_loss": float(acc[0] / acc[1])})


def run_fast(
    preset: str,
    device: str,
    batch: int,
    steps: int,
    warmup: int,
    graphs: bool = True,
    flat: bool = True,
    overlap: bool = False,
    bucket_mb: float | None = None,
    ahead: bool = True,
) -> dict:
    import torch

    from electra_ray.train.fast import BatchesAhead
    from electra_ray.train.optim import lr_factor

    cfg, fast, data, order = fast_setup(
        preset,
        device,
        batch,
        steps + warmup,
        graphs=graphs,
        flat=flat,
        overlap=overlap,
        bucket_mb=bucket_mb,
        fuse_linears=FUSE_LINEARS,
    )
    compile_s = fast.warm_up()
    build = batch_builder(data, order, batch, cfg.max_predictions(SEQ))
    # as the job does: the next step's batch built on a side stream during the step (a GPU), or
    # (`inline`) each batch built on the main stream before its step
    batches = BatchesAhead(build, torch.device(device)) if ahead else None
    clock = _Clock(device)
    events = []
    for step in range(warmup + steps):
        if step == warmup:
            t0 = clock.now()
        if device == "cuda" and step >= warmup:
            e = [torch.cuda.Event(enable_timing=True) for _ in range(3)]
            e[0].record()
        b = batches.take(step) if batches else build(step)
        if device == "cuda" and step >= warmup:
            e[1].record()
        fast.micro_step(b.ids, b.types, b.att, b.masks, b.gen_den, b.disc_den, seed=step)
        fast.step(5e-4 * lr_factor(step, 10, 10**6))
        if device == "cuda" and step >= warmup:
            e[2].record()
            events.append(e)
        if batches and step + 1 < warmup + steps:
            batches.ahead(step + 1)
    t1 = clock.now()
    extra = {"compile_s": compile_s, **fast.state(), "gen_loss": float(fast.acc[0] / fast.acc[1])}
    if events:  # the main stream's time from a step's start to its batch being there
        data_ms = sum(e[0].elapsed_time(e[1]) for e in events)
        step_ms = sum(e[0].elapsed_time(e[2]) for e in events)
        extra["data_gpu_share"] = data_ms / step_ms
    return _result(device, t1 - t0, steps, batch, cfg, extra)


def run_compiled(preset: str, device: str, batch: int, steps: int, warmup: int) -> dict:
    return run_fast(preset, device, batch, steps, warmup, graphs=False)


def run_pertensor(preset: str, device: str, batch: int, steps: int, warmup: int) -> dict:
    return run_fast(preset, device, batch, steps, warmup, flat=False)


def run_overlap(preset: str, device: str, batch: int, steps: int, warmup: int) -> dict:
    return run_fast(preset, device, batch, steps, warmup, overlap=True)


def run_inline(preset: str, device: str, batch: int, steps: int, warmup: int) -> dict:
    return run_fast(preset, device, batch, steps, warmup, overlap=True, ahead=False)


def run_buckets(preset: str, device: str, batch: int, steps: int, warmup: int) -> dict:
    return run_fast(preset, device, batch, steps, warmup, bucket_mb=25.0)


def run_allreduce(preset: str, device: str, batch: int, steps: int, warmup: int) -> dict:
    return run_fast(preset, device, batch, steps, warmup, bucket_mb=0.0)


def run_hf(preset: str, device: str, batch: int, steps: int, warmup: int) -> dict:
    import torch
    import torch.nn.functional as F
    from transformers import ElectraForMaskedLM, ElectraForPreTraining

    from electra_ray.model.electra import hf_configs
    from electra_ray.train.data import build_batch, global_rows

    cfg, arr = _setup(preset, device, batch, steps + warmup)
    dev = torch.device(device)
    gen_cfg, disc_cfg = hf_configs(cfg)
    gen, disc = ElectraForMaskedLM(gen_cfg).to(dev), ElectraForPreTraining(disc_cfg).to(dev)
    disc.electra.embeddings = gen.electra.embeddings
    params = list({id(p): p for p in list(gen.parameters()) + list(disc.parameters())}.values())
    opt = torch.optim.AdamW(params, lr=5e-4, eps=1e-6, weight_decay=0.01)
    amp = (
        torch.autocast("cuda", dtype=torch.bfloat16)
        if device == "cuda"
        else torch.autocast("cpu", enabled=False)
    )
    clock = _Clock(device)
    for step in range(warmup + steps):
        if step == warmup:
            t0 = clock.now()
        ids, types, att = (
            torch.from_numpy(x).to(dev) for x in build_batch(arr, global_rows(step, batch, arr.n, 0), SEQ, 3)
        )
        special = (ids == 1) | (ids == 2) | (att == 0)
        mask = (torch.rand(ids.shape, device=dev) < 0.15) & ~special
        masked = torch.where(mask & (torch.rand(ids.shape, device=dev) < 0.85), torch.full_like(ids, 4), ids)
        labels = torch.where(mask, ids, torch.full_like(ids, -100))
        with amp:
            logits = gen(input_ids=masked, attention_mask=att, token_type_ids=types).logits  # full vocab
        gen_loss = F.cross_entropy(logits.float().view(-1, VOCAB), labels.view(-1), ignore_index=-100)
        with torch.no_grad():
            sampled = torch.distributions.Categorical(logits=logits.float()).sample()
            fake = torch.where(mask, sampled, ids)
        with amp:
            d = disc(input_ids=fake, attention_mask=att, token_type_ids=types).logits
        disc_loss = F.binary_cross_entropy_with_logits(
            d.float()[att.bool()], (fake != ids).float()[att.bool()]
        )
        loss = gen_loss + 50 * disc_loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        loss.item()  # the per-step host sync straightforward loops do
    t1 = clock.now()
    return _result(device, t1 - t0, steps, batch, cfg)


def run_ray(preset: str, device: str, batch: int, steps: int, warmup: int) -> dict:
    import numpy as np
    import pyarrow as pa
    import ray

    from electra_ray import storage
    from electra_ray.config import TrainConfig
    from electra_ray.data.instances import instances_table
    from electra_ray.tokenization.vocab import write_tokenizer_folder
    from electra_ray.train.trainer import pretrain

    if device != "cpu":
        raise ValueError("the Ray Train variant is measured on the CPU")
    tmp = tempfile.mkdtemp(prefix="bench-train-")
    b = batch
    arr = arrays(b * (steps + 2) + 8)
    inst = [
        (
            arr.ids[arr.offsets[i] : arr.offsets[i + 1]].astype(np.int64).tolist(),
            [0] * (SEQ // 2 + 1) + [1] * (SEQ // 2 - 1),
        )
        for i in range(arr.n)
    ]
    storage.write_bytes(
        os.path.join(tmp, "inst", "part-00000.parquet"),
        storage.parquet_bytes(instances_table(inst, pa.uint16())),
    )
    vocab = ["[UNK]", "[CLS]", "[SEP]", "[PAD]", "[MASK]"] + [f"w{i}" for i in range(VOCAB - 5)]
    write_tokenizer_folder(os.path.join(tmp, "tok"), vocab, {"note": "bench"})
    ray.init(
        address="local", num_cpus=2, include_dashboard=False, log_to_driver=False, object_store_memory=1 << 30
    )
    log_every = max(1, steps // 2)
    cfg = TrainConfig(
        data=os.path.join(tmp, "inst"),
        tokenizer=os.path.join(tmp, "tok"),
        storage_path=os.path.join(tmp, "runs"),
        name="b",
        preset=preset,
        max_steps=1 + 2 * log_every,
        batch_size=b,
        lr=5e-4,
        warmup_steps=10,
        checkpoint_every=10**6,
        log_every=log_every,
        eval_every=10**6,
        eval_instances=8,
        max_failures=0,
        cpus_per_worker=THREADS,
    )
    samples = _CpuSampler()
    s = pretrain(cfg, log=lambda *_: None)
    samples.stop()
    ray.shutdown()
    hist = [json.loads(ln) for ln in open(os.path.join(s["run"], "metrics.jsonl"))]
    # the first report spans compilation/warm-up steps; the following ones are steady state
    steady = [h for h in hist if h["step"] > 1 + log_every] or hist[-1:]
    tps = sum(h["tokens_per_s"] for h in steady) / len(steady)
    from electra_ray.config import model_preset

    cfg = model_preset(preset, vocab_size=VOCAB, pad_token_id=3)
    res = _result(device, b * SEQ / tps, 1, b, cfg)
    # where the machine's CPUs went between the first and the last steady-state report
    start = max(h["time"] for h in hist if h["step"] <= 1 + log_every)
    res.update(samples.split(start, steady[-1]["time"], worker="ray::RayTrainWorker"))
    return res


class _CpuSampler:
    """Every process's CPU seconds (from /proc), sampled once a second in a thread."""

    def __init__(self) -> None:
        import threading

        self.samples: list[tuple[float, dict]] = []
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._done.is_set():
            self.samples.append((time.time(), snapshot()))
            self._done.wait(1.0)

    def stop(self) -> None:
        self._done.set()
        self._thread.join()

    def split(self, t0: float, t1: float, worker: str) -> dict:
        """CPU cores used by the worker and by every other process between t0 and t1."""
        a = min(self.samples, key=lambda s: abs(s[0] - t0))
        b = min(self.samples, key=lambda s: abs(s[0] - t1))
        wall = b[0] - a[0]
        if wall <= 0:
            return {}
        work = other = 0.0
        for secs, cmd in cpu_seconds(a[1], b[1]):
            if cmd.startswith(worker):
                work += secs
            else:
                other += secs
        return {
            "cpu_window_s": round(wall, 1),
            "worker_cores": round(work / wall, 3),
            "other_cores": round(other / wall, 3),
        }


VARIANTS = {
    "fast": run_fast,
    "pertensor": run_pertensor,
    "overlap": run_overlap,
    "inline": run_inline,
    "buckets": run_buckets,
    "allreduce": run_allreduce,
    "compiled": run_compiled,
    "plain": run_plain,
    "hf": run_hf,
    "ray": run_ray,
}


def parse_inductor(items: list[str], ap: argparse.ArgumentParser) -> dict:
    """--inductor KEY=VALUE settings, checked against torch._inductor.config and typed like the
    setting they replace (a Python literal: True, 4, 'name')."""
    import ast

    import torch._inductor.config as ic

    out = {}
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep:
            ap.error(f"--inductor {item!r}: expected KEY=VALUE")
        if not hasattr(ic, key):
            ap.error(f"--inductor {item!r}: torch._inductor.config has no setting {key!r}")
        try:
            value = ast.literal_eval(raw)
        except (ValueError, SyntaxError):
            value = raw
        current = getattr(ic, key)
        if current is not None and not isinstance(value, type(current)):
            ap.error(f"--inductor {item!r}: {key} is a {type(current).__name__} (now {current!r})")
        out[key] = value
    return out


def child(spec: str) -> None:
    global THREADS, VOCAB, FUSE_LINEARS
    a = json.loads(spec)
    THREADS = a.get("threads") or THREADS
    base, *mods = a["variant"].split("+")
    FUSE_LINEARS = "fused" in mods
    VOCAB = a.get("vocab") or VOCAB
    inductor = a.get("inductor") or {}
    if inductor:  # Inductor's settings are global: every compile of this variant's process uses them
        import torch._inductor.config as ic

        for key, value in inductor.items():
            setattr(ic, key, value)
    res = VARIANTS[base](a["preset"], a["device"], a["batch"], a["steps"], a["warmup"])
    res["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps(res))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    ap.add_argument(
        "--preset",
        "--presets",
        dest="preset",
        default=None,
        help="preset(s), comma-separated (default: tiny,small on the CPU, small,base on a GPU)",
    )
    ap.add_argument(
        "--variants", default=None, help="comma-separated (default: fast,plain,hf; on the CPU also ray)"
    )
    ap.add_argument("--batch", type=int, default=None, help="sequences per step (default: 128 on a GPU)")
    ap.add_argument("--steps", type=int, default=None, help="timed steps per variant")
    ap.add_argument("--quick", action="store_true", help="fewer steps (a smoke run)")
    ap.add_argument(
        "--threads",
        type=int,
        default=None,
        help="CPU: torch threads of every variant and the Ray worker's CPUs (default: all cores)",
    )
    ap.add_argument(
        "--vocab", type=int, default=VOCAB, help=f"vocabulary size (default {VOCAB}; e.g. the demo's 4000)"
    )
    ap.add_argument("--timeout", type=float, default=900, help="seconds per variant before it is abandoned")
    ap.add_argument(
        "--budget",
        type=float,
        default=None,
        help="seconds for the whole run: a variant gets at most what is left, those that no longer "
        "fit are skipped, and the JSON line is printed all the same (a limit from outside would "
        "kill the run before it)",
    )
    ap.add_argument(
        "--inductor",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="an Inductor setting for the compiled variants (torch._inductor.config; repeatable), "
        "e.g. combo_kernels=True (independent small kernels launched as one) or "
        "coordinate_descent_tuning=True; recorded in the JSON",
    )
    ap.add_argument("--_child", default=None, help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a._child:
        return child(a._child)
    import torch

    gpu = a.device == "cuda"
    if gpu and not torch.cuda.is_available():
        ap.error("--device cuda: no CUDA device is visible to torch")
    presets = (a.preset or ("small,base" if gpu else "tiny,small")).split(",")
    variants = (a.variants or ("fast,plain,hf" if gpu else "fast,plain,hf,ray")).split(",")
    for v in variants:
        base, *mods = v.split("+")
        if base not in VARIANTS:
            ap.error(f"unknown variant {v!r}; choose from {', '.join(VARIANTS)}")
        if mods and (mods != ["fused"] or base in ("plain", "hf", "ray")):
            ap.error(f"variant {v!r}: only a fast-step variant takes a modifier, and only +fused")
    inductor = parse_inductor(a.inductor, ap)
    steps = a.steps or ((20 if a.quick else 100) if gpu else (2 if a.quick else 6))
    warmup = (5 if a.quick else 10) if gpu else 1
    figures: dict = {
        "device": torch.cuda.get_device_name() if gpu else "cpu",
        "machine": {
            "cpu_count": os.cpu_count(),
            "platform": platform.platform(),
            "torch": torch.__version__,
            "threads": a.threads or THREADS,
        },
        "seq_len": SEQ,
        "vocab": a.vocab,
        "steps": steps,
        "inductor": inductor,
    }
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0", "RAY_AUTH_MODE": "disabled"}
    deadline = time.monotonic() + a.budget if a.budget else None
    for preset in presets:
        batch = a.batch or (128 if gpu else CPU_BATCH.get(preset, 8))
        res: dict = {}
        for variant in variants:
            spec = dict(
                variant=variant,
                preset=preset,
                device=a.device,
                batch=batch,
                steps=steps,
                warmup=warmup,
                threads=a.threads,
                vocab=a.vocab,
                inductor=inductor,
            )
            limit = a.timeout if deadline is None else min(a.timeout, deadline - time.monotonic())
            if limit < 5:
                print(f"{preset}/{variant}: skipped, the --budget of {a.budget:.0f} s is spent", flush=True)
                continue
            t = time.perf_counter()
            try:
                r = subprocess.run(
                    [sys.executable, __file__, "--_child", json.dumps(spec)],
                    capture_output=True,
                    text=True,
                    env=env,
                    timeout=limit,
                )
            except subprocess.TimeoutExpired:
                print(f"{preset}/{variant}: abandoned after {limit:.0f} s", flush=True)
                continue
            if r.returncode != 0:
                print(f"{preset}/{variant} failed: {r.stderr[-3000:]}", flush=True)
                continue
            res[variant] = v = json.loads(r.stdout.strip().splitlines()[-1])
            mem = v.get("peak_mem_mb", v["peak_rss_mb"])
            more = "".join(
                f", {k} {v[k]:.3g}"
                for k in ("mfu", "compile_s", "data_gpu_share", "gen_loss", "worker_cores", "other_cores")
                if k in v
            )
            print(
                f"{preset:6s} {variant:13s} {batch}×{SEQ}: {v['steps_per_s']:8.2f} steps/s, "
                f"{v['tokens_per_s']:10.0f} tokens/s, {v['tflops_per_s']:7.2f} TFLOP/s, "
                f"peak {'GPU' if 'peak_mem_mb' in v else 'RSS'} {mem:.0f} MB{more} "
                f"({time.perf_counter() - t:.0f} s with start-up)",
                flush=True,
            )
        if "plain" in res and "ray" in res:
            res["ray_overhead"] = round(res["plain"]["tokens_per_s"] / res["ray"]["tokens_per_s"] - 1, 4)
        for other in ("plain", "hf"):
            if "fast" in res and other in res:
                res[f"fast_vs_{other}"] = round(res["fast"]["steps_per_s"] / res[other]["steps_per_s"], 3)
        if "plain" in res and "hf" in res:
            res["plain_vs_hf"] = round(res["plain"]["steps_per_s"] / res["hf"]["steps_per_s"], 3)
        print(
            f"{preset}: " + ", ".join(f"{k} {res[k]}" for k in res if not isinstance(res[k], dict)),
            flush=True,
        )
        figures[preset] = res
    first = figures[presets[0]]
    for v in dict.fromkeys([*VARIANTS, *variants]):
        figures[f"{v}_steps_per_s"] = first.get(v, {}).get("steps_per_s")
    best = first.get("fast") or first.get("plain") or {}
    figures["preset"] = presets[0]
    figures["tokens_per_s"] = best.get("tokens_per_s")
    figures["mfu"] = best.get("mfu")
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
