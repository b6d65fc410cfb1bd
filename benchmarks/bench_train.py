"""Training step speed on CPU: our loop under Ray Train vs the same loop in plain PyTorch vs a
straightforward transformers implementation.

    python benchmarks/bench_train.py [--presets tiny,small] [--steps 6]

(a) ``ray``:   jobs' loop (train/loop.py) under Ray Train, 1 worker with both CPUs; tokens/s as the loop measures
               it between reports (start-up excluded)
(b) ``plain``: the same model, masking, loss and optimizer in a plain PyTorch loop, no Ray
(c) ``hf``:    a straightforward implementation: full-vocabulary generator logits at every
               position, torch's Adam, ``.item()`` every step
Each variant runs in its own process (peak RSS = that process's maxrss; for (a) the worker's is not
included). Random token ids, full 128-token sequences. The last line is one JSON object.
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

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

BATCH = {"tiny": 32, "small": 16}
SEQ = 128
VOCAB = 32768


def arrays(n: int, seed: int = 0):
    import numpy as np

    from electra_ray.train.data import InstanceArrays

    rng = np.random.default_rng(seed)
    ids = rng.integers(15, VOCAB, size=(n, SEQ), dtype=np.int64).astype(np.uint16)
    ids[:, 0], ids[:, SEQ // 2], ids[:, -1] = 1, 2, 2  # [CLS] A [SEP] B [SEP]
    offsets = np.arange(n + 1, dtype=np.int64) * SEQ
    return InstanceArrays(ids.reshape(-1), offsets, np.full(n, SEQ // 2 + 1, dtype=np.int32))


def run_plain(preset: str, steps: int) -> dict:
    import torch

    from electra_ray.config import model_preset
    from electra_ray.model.electra import ElectraPretrainer
    from electra_ray.model.masking import draw_masks, step_generator
    from electra_ray.train.data import build_batch, global_rows
    from electra_ray.train.optim import make_optimizer

    torch.manual_seed(0)
    cfg = model_preset(preset, vocab_size=VOCAB, pad_token_id=3)
    b = BATCH[preset]
    arr = arrays(b * (steps + 2))
    model = ElectraPretrainer(cfg)
    opt, sched = make_optimizer(
        model, lr=5e-4, betas=(0.9, 0.999), eps=1e-6, weight_decay=0.01, warmup=10, total=1000
    )
    times = []
    for step in range(steps + 1):
        t = time.perf_counter()
        ids, types, att = (
            torch.from_numpy(x) for x in build_batch(arr, global_rows(step, b, arr.n, 0), SEQ, 3)
        )
        m = draw_masks(
            ids,
            att,
            (1, 2, 3, 4),
            mask_prob=0.15,
            mask_token_prob=0.85,
            max_predictions=cfg.max_predictions(SEQ),
            generator=step_generator(0, step),
        )
        out = model(ids, types, att, m, 4, generator=torch.Generator().manual_seed(step))
        out.loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        times.append(time.perf_counter() - t)
    dt = sum(times[1:]) / steps  # first step excluded (warm-up)
    return {"step_s": dt, "tokens_per_s": b * SEQ / dt}


def run_hf(preset: str, steps: int) -> dict:
    import torch
    import torch.nn.functional as F
    from transformers import ElectraForMaskedLM, ElectraForPreTraining

    from electra_ray.config import model_preset
    from electra_ray.model.electra import hf_configs
    from electra_ray.train.data import build_batch, global_rows

    torch.manual_seed(0)
    cfg = model_preset(preset, vocab_size=VOCAB, pad_token_id=3)
    gen_cfg, disc_cfg = hf_configs(cfg)
    gen, disc = ElectraForMaskedLM(gen_cfg), ElectraForPreTraining(disc_cfg)
    disc.electra.embeddings = gen.electra.embeddings
    params = list({id(p): p for p in list(gen.parameters()) + list(disc.parameters())}.values())
    opt = torch.optim.AdamW(params, lr=5e-4, eps=1e-6, weight_decay=0.01)
    b = BATCH[preset]
    arr = arrays(b * (steps + 2))
    times = []
    for step in range(steps + 1):
        t = time.perf_counter()
        ids, types, att = (
            torch.from_numpy(x) for x in build_batch(arr, global_rows(step, b, arr.n, 0), SEQ, 3)
        )
        special = (ids == 1) | (ids == 2) | (att == 0)
        mask = (torch.rand(ids.shape) < 0.15) & ~special
        masked = torch.where(mask & (torch.rand(ids.shape) < 0.85), torch.full_like(ids, 4), ids)
        labels = torch.where(mask, ids, torch.full_like(ids, -100))
        logits = gen(
            input_ids=masked, attention_mask=att, token_type_ids=types
        ).logits  # full vocab, every position
        gen_loss = F.cross_entropy(logits.view(-1, VOCAB), labels.view(-1), ignore_index=-100)
        with torch.no_grad():
            sampled = torch.distributions.Categorical(logits=logits.float()).sample()
            fake = torch.where(mask, sampled, ids)
        d = disc(input_ids=fake, attention_mask=att, token_type_ids=types).logits
        disc_loss = F.binary_cross_entropy_with_logits(d[att.bool()], (fake != ids).float()[att.bool()])
        loss = gen_loss + 50 * disc_loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        loss.item()  # the per-step host sync straightforward loops do
        times.append(time.perf_counter() - t)
    dt = sum(times[1:]) / steps
    return {"step_s": dt, "tokens_per_s": b * SEQ / dt}


def run_ray(preset: str, steps: int) -> dict:
    import numpy as np
    import pyarrow as pa
    import ray

    from electra_ray import storage
    from electra_ray.config import TrainConfig
    from electra_ray.data.instances import instances_table
    from electra_ray.tokenization.vocab import write_tokenizer_folder
    from electra_ray.train.trainer import pretrain

    tmp = tempfile.mkdtemp(prefix="bench-train-")
    b = BATCH[preset]
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
        cpus_per_worker=2,
    )
    s = pretrain(cfg, log=lambda *_: None)
    ray.shutdown()
    hist = [json.loads(ln) for ln in open(os.path.join(s["run"], "metrics.jsonl"))]
    # the first report spans compilation/warm-up steps; the following ones are steady state
    steady = [h for h in hist if h["step"] > 1 + log_every] or hist[-1:]
    tps = sum(h["tokens_per_s"] for h in steady) / len(steady)
    return {"step_s": b * SEQ / tps, "tokens_per_s": tps}


def child(variant: str, preset: str, steps: int) -> None:
    fn = {"plain": run_plain, "hf": run_hf, "ray": run_ray}[variant]
    res = fn(preset, steps)
    res["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps(res))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--presets", default="tiny,small")
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--_child", nargs=3, default=None, help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a._child:
        return child(a._child[0], a._child[1], int(a._child[2]))
    import torch

    figures: dict = {
        "machine": {
            "cpu_count": os.cpu_count(),
            "platform": platform.platform(),
            "torch": torch.__version__,
            "threads": torch.get_num_threads(),
        },
        "seq_len": SEQ,
        "vocab": VOCAB,
    }
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0", "RAY_AUTH_MODE": "disabled"}
    for preset in a.presets.split(","):
        res = {}
        for variant in ("plain", "hf", "ray"):
            r = subprocess.run(
                [sys.executable, __file__, "--_child", variant, preset, str(a.steps)],
                capture_output=True,
                text=True,
                env=env,
            )
            if r.returncode != 0:
                print(f"{preset}/{variant} failed: {r.stderr[-1500:]}", flush=True)
                continue
            res[variant] = json.loads(r.stdout.strip().splitlines()[-1])
            print(
                f"{preset:6s} {variant:6s} batch {BATCH[preset]}×{SEQ}: {res[variant]['tokens_per_s']:8.0f} tokens/s, "
                f"{res[variant]['step_s'] * 1000:7.1f} ms/step, peak RSS {res[variant]['peak_rss_mb']:.0f} MB",
                flush=True,
            )
        if "plain" in res and "ray" in res:
            res["ray_overhead"] = round(res["plain"]["tokens_per_s"] / res["ray"]["tokens_per_s"] - 1, 4)
        if "plain" in res and "hf" in res:
            res["plain_vs_hf"] = round(res["plain"]["tokens_per_s"] / res["hf"]["tokens_per_s"], 3)
        print(
            f"{preset}: Ray Train overhead {res.get('ray_overhead')}, ours vs straightforward transformers {res.get('plain_vs_hf')}x",
            flush=True,
        )
        figures[preset] = res
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
