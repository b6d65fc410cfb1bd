"""The training loop's data path at the size of all of Japanese Wikipedia: what it costs per step
against the fast step's target rate, and once per epoch.

    python benchmarks/bench_data_path.py --device cpu [--tokens 750e6] [--steps 200]
    python benchmarks/bench_data_path.py --device cuda --quick

Synthetic instances stand in for the corpus (``--tokens`` token ids as uint16, ~1.5 GB for the
default 750M; 128-token sequences, one in ten shorter, as tokenize_corpus.py packs them). The
work timed is what train/loop.py does for one worker and global batch 128 at 128 tokens:

  setup        split_rows (the held-out slice) and DeviceInstances (the token ids on the device:
               no copy on a CPU, an upload on a GPU)
  epoch_start  the first batch of an epoch: the epoch's permutation of the training rows, on the
               host, uploaded to the device (data_batch_on_device → DeviceInstances.rows_of_epoch)
  host         per step, on the host: the batch's rows (global_rows) and their digest (rows_digest)
  fast_build   per step: the fast step's batch (data_batch_on_device: gather, pad, masks); on a
               GPU the host's time to enqueue it and the device's time to run it (CUDA events)
  plain_build  per step: the plain step's batch (masked_batch: numpy gather, CPU masks), for
               comparison

Shares are of a 10-ms step (the issue's 100 steps/s for ``small`` on one H100) or ``--step-ms``.
On a GPU the fast step's batch is built on a side stream during the previous step (BatchesAhead),
so its device time overlaps the step; the host's part must stay well below the step for the host
to keep ahead. The last line is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import numpy as np  # noqa: E402
import torch  # noqa: E402
from bench_train import SEQ, SPECIAL, sync  # noqa: E402  (the script's folder is on sys.path)

from electra_ray.config import model_preset  # noqa: E402
from electra_ray.model.masking import masked_batch  # noqa: E402
from electra_ray.train.data import InstanceArrays, global_rows, rows_digest, split_rows  # noqa: E402
from electra_ray.train.fast import DeviceInstances, data_batch_on_device  # noqa: E402

BATCH, SEED = 128, 7
CLS, SEP, PAD, MASK = SPECIAL


def corpus(tokens: int, vocab: int, seed: int = 0) -> InstanceArrays:
    """Packed instances of ``tokens`` ids in all: SEQ long, one in ten 8..SEQ-1 (the short ones)."""
    rng = np.random.default_rng(seed)
    n = max(tokens // SEQ, BATCH + 100)
    lengths = np.full(n, SEQ, dtype=np.int64)
    short = rng.random(n) < 0.1
    lengths[short] = rng.integers(8, SEQ, int(short.sum()))
    offsets = np.zeros(n + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    ids = rng.integers(5, vocab, int(offsets[-1]), dtype=np.uint16)
    ids[offsets[:-1]] = CLS
    ids[offsets[1:] - 1] = SEP
    b_start = lengths // 2
    ids[offsets[:-1] + b_start - 1] = SEP
    return InstanceArrays(ids=ids, offsets=offsets, b_start=b_start)


def rss_mb() -> float:
    """The process's resident memory now (Linux), else its peak."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 1e6
    except OSError:
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    p.add_argument("--tokens", type=float, default=750e6, help="token ids in the corpus (default 750e6)")
    p.add_argument("--steps", type=int, default=200, help="steps timed")
    p.add_argument("--step-ms", type=float, default=10.0, help="the step the shares are of (default 10)")
    p.add_argument("--eval-instances", type=int, default=10_000)
    p.add_argument("--threads", type=int, default=None, help="CPU: torch threads (default: all cores)")
    p.add_argument("--quick", action="store_true", help="a 20M-token corpus, 50 steps (a smoke run)")
    a = p.parse_args()
    if a.quick:
        a.tokens, a.steps = min(a.tokens, 20e6), min(a.steps, 50)
    dev = torch.device(a.device)
    if a.threads:
        torch.set_num_threads(a.threads)
    mcfg = model_preset("small", vocab_size=32768, pad_token_id=PAD)
    mask_kw = dict(
        special_ids=SPECIAL,
        mask_prob=mcfg.mask_prob,
        mask_token_prob=mcfg.mask_token_prob,
        max_predictions=mcfg.max_predictions(SEQ),
    )
    out: dict = {"device": a.device, "step_ms": a.step_ms, "batch": BATCH, "seq_len": SEQ}

    t = time.perf_counter()
    arr = corpus(int(a.tokens), 32768)
    out["corpus"] = {
        "tokens": int(arr.offsets[-1]),
        "instances": arr.n,
        "ids_gb": round(arr.ids.nbytes / 1e9, 2),
        "made_s": round(time.perf_counter() - t, 1),
    }
    print(
        f"corpus: {arr.n:,} instances, {arr.offsets[-1]:,} tokens ({arr.ids.nbytes / 1e9:.2f} GB as uint16)"
    )

    rss0 = rss_mb()
    t = time.perf_counter()
    train_rows, _ = split_rows(arr.n, a.eval_instances, SEED)
    split_s = time.perf_counter() - t
    t = time.perf_counter()
    data = DeviceInstances(arr, dev)
    sync(dev)
    out["setup"] = {
        "split_rows_s": round(split_s, 2),
        "device_instances_s": round(time.perf_counter() - t, 2),
        "device_mb": round(
            sum(x.numel() * x.element_size() for x in (data.ids, data.offsets, data.b_start)) / 1e6
        ),
        "host_rss_growth_mb": round(rss_mb() - rss0),  # what split_rows and any host copy added
        # on a CPU the token ids are the corpus's own memory (the object store's, in the job)
        "zero_copy": dev.type == "cpu" and data.ids.data_ptr() == arr.ids.ctypes.data,
    }
    print(f"setup: {out['setup']}")

    def build(cursor: int):
        return data_batch_on_device(
            data, train_rows, cursor, batch_size=BATCH, seed=SEED, seq_len=SEQ, pad_id=PAD, **mask_kw
        )

    # the first batch of each of two epochs: the permutation and its upload
    per_epoch = len(train_rows) // BATCH
    starts = []
    for cursor in (0, per_epoch):
        sync(dev)
        t = time.perf_counter()
        build(cursor)
        sync(dev)
        starts.append(time.perf_counter() - t)
    out["epoch_start"] = {
        "s": round(max(starts), 3),
        "steps_per_epoch": per_epoch,
        "share_of_epoch": max(starts) / (per_epoch * a.step_ms / 1e3),
    }
    print(f"epoch start: {max(starts) * 1e3:.0f} ms once per {per_epoch:,} steps")

    cursors = range(per_epoch + 1, per_epoch + 1 + a.steps)  # inside the epoch just started
    t = time.perf_counter()
    digest = 0
    for c in cursors:
        rows = train_rows[global_rows(c, BATCH, len(train_rows), SEED)]
        digest += rows_digest(rows, c)
    host_s = (time.perf_counter() - t) / a.steps

    for c in list(cursors)[:3]:  # warm-up
        build(c)
    sync(dev)
    if dev.type == "cuda":
        ev = [(torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)) for _ in cursors]
        enqueue = 0.0
        for (e0, e1), c in zip(ev, cursors):
            t = time.perf_counter()
            e0.record()
            build(c)
            e1.record()
            enqueue += time.perf_counter() - t
        sync(dev)
        fast = {
            "host_ms": 1e3 * enqueue / a.steps,
            "device_ms": sum(e0.elapsed_time(e1) for e0, e1 in ev) / a.steps,
        }
    else:
        t = time.perf_counter()
        for c in cursors:
            build(c)
        fast = {"host_ms": 1e3 * (time.perf_counter() - t) / a.steps}

    t = time.perf_counter()
    for c in cursors:
        rows = train_rows[global_rows(c, BATCH, len(train_rows), SEED)]
        masked_batch(arr, rows, SEQ, PAD, SPECIAL, mcfg, SEED, c)
    plain_ms = 1e3 * (time.perf_counter() - t) / a.steps

    share = lambda ms: round(ms / a.step_ms, 4)  # noqa: E731
    out["host"] = {"ms": round(1e3 * host_s, 4), "share": share(1e3 * host_s)}
    out["fast_build"] = {k: round(v, 4) for k, v in fast.items()} | {
        f"{k.split('_')[0]}_share": share(v) for k, v in fast.items()
    }
    out["plain_build"] = {"ms": round(plain_ms, 3), "share": share(plain_ms)}
    print(
        f"per step, host (rows, digest): {1e3 * host_s:.3f} ms ({100 * host_s * 1e3 / a.step_ms:.2f}% of {a.step_ms:g} ms)"
    )
    print(
        "per step, the fast step's batch: "
        + ", ".join(f"{k} {v:.3f} ms ({100 * v / a.step_ms:.1f}%)" for k, v in fast.items())
    )
    print(
        f"per step, the plain step's batch (numpy, CPU masks): {plain_ms:.3f} ms ({100 * plain_ms / a.step_ms:.1f}%)"
    )
    print(json.dumps(out))


if __name__ == "__main__":
    main()
