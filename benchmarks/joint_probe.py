"""The ELECTRA loop of `jobs/pretrain.py` in one process, without Ray, scored on held-out instances.

    python benchmarks/joint_probe.py                                   # after `make demo`: its run, 1 process
    python benchmarks/joint_probe.py --lr 2e-3 --set disc_weight=100   # try a setting
    python benchmarks/joint_probe.py --steps 8000 --eval-every 1000    # how long until it passes

Same model, masking, Gumbel sampling, optimizer (Adam without bias correction, warm-up × linear
decay, clip 1.0) and held-out slice (`--eval-instances`, seeded as the job's) as a pretraining
run, on the demo's instances; a quick way to see what a preset or schedule change does to the
discriminator before spending a real run on it. Every `--eval-every` steps it prints, on the
held-out instances, the generator's masked accuracy, the discriminator's loss next to the entropy
of the prior (the loss of always predicting the replaced share), its accuracy next to the
all-"original" baseline and its recall of replaced tokens, as one JSON object per line.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--instances", default=os.path.join(ROOT, "demo_output", "instances"))
    ap.add_argument("--tokenizer", default=os.path.join(ROOT, "demo_output", "tokenizer"))
    ap.add_argument("--preset", default="tiny")
    ap.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE", help="preset overrides")
    ap.add_argument("--steps", type=int, default=1000, help="optimizer steps (default: the demo's 1000)")
    ap.add_argument("--batch", type=int, default=16, help="sequences per step (default: the demo's 16)")
    ap.add_argument("--lr", type=float, default=1e-3, help="peak learning rate (default: the demo's)")
    ap.add_argument("--warmup", type=int, default=100, help="warm-up steps (default: the demo's 100)")
    ap.add_argument(
        "--schedule-steps", type=int, default=None, help="where the decay reaches 0 (default: --steps)"
    )
    ap.add_argument("--eval-instances", type=int, default=64, help="held-out instances (default: the demo's)")
    ap.add_argument("--eval-every", type=int, default=250)
    ap.add_argument("--threads", type=int, default=2, help="torch threads")
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()

    import torch

    from electra_ray.config import TrainConfig, model_preset, parse_model_set
    from electra_ray.model.electra import ElectraPretrainer
    from electra_ray.model.masking import masked_batch, step_generator
    from electra_ray.tokenization import JapaneseWordPieceTokenizer
    from electra_ray.train.data import global_rows, load_instances, split_rows
    from electra_ray.train.loop import _rates, _seed
    from electra_ray.train.optim import optimizer_for

    for path, what in ((a.instances, "instances"), (a.tokenizer, "tokenizer")):
        if not os.path.isdir(path):
            ap.error(f"--{what} {path}: no such folder (run `make demo` first, or point it at yours)")
    torch.set_num_threads(a.threads)
    vocab = JapaneseWordPieceTokenizer.from_pretrained(a.tokenizer).vocab
    special = {
        k: vocab[t] for k, t in (("cls", "[CLS]"), ("sep", "[SEP]"), ("pad", "[PAD]"), ("mask", "[MASK]"))
    }
    special_ids = tuple(special.values())
    arrays = load_instances(a.instances)
    seq_len = int(max(arrays.offsets[1:] - arrays.offsets[:-1]))
    cfg = model_preset(a.preset, vocab_size=len(vocab), pad_token_id=special["pad"], **parse_model_set(a.set))
    # the job's optimizer settings (betas, eps, weight decay) with this probe's schedule
    tcfg = TrainConfig(
        tokenizer=a.tokenizer,
        data=a.instances,
        storage_path=os.devnull,  # nothing is written
        name="joint-probe",
        lr=a.lr,
        warmup_steps=a.warmup,
        max_steps=a.steps,
        total_steps=a.schedule_steps,
        batch_size=a.batch,
    )
    torch.manual_seed(a.seed)
    model = ElectraPretrainer(cfg)
    opt, sched = optimizer_for(model, tcfg)
    train_rows, eval_rows = split_rows(arrays.n, a.eval_instances, a.seed)

    def batch_and_masks(rows, key: int):
        return masked_batch(arrays, rows, seq_len, special["pad"], special_ids, cfg, a.seed, key)

    def evaluate() -> dict:
        model.eval()
        total = None
        with torch.no_grad():
            for k in range(0, len(eval_rows), a.batch):
                ids, types, att, m = batch_and_masks(eval_rows[k : k + a.batch], -1 - k)
                g = torch.Generator().manual_seed(_seed(a.seed, 999, k))
                out = model(ids, types, att, m, special["mask"], generator=g).metrics()
                total = out if total is None else total + out
        model.train()
        return _rates(total)

    t0 = time.perf_counter()
    for step in range(a.steps):
        rows = train_rows[global_rows(step, a.batch, len(train_rows), a.seed)]
        ids, types, att, m = batch_and_masks(rows, step)
        g = step_generator(a.seed + 1, step)
        model(ids, types, att, m, special["mask"], generator=g).loss.backward()
        norm = torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step(ok=torch.isfinite(norm))
        sched.step()
        opt.zero_grad(set_to_none=True)
        if (step + 1) % a.eval_every == 0 or step + 1 == a.steps:
            r = evaluate()
            q = r["replaced_share"]
            print(
                json.dumps(
                    {
                        "step": step + 1,
                        "gen_acc": round(r["gen_acc"], 4),
                        "disc_loss": round(r["disc_loss"], 4),
                        "prior_entropy": round(-(q * math.log(q) + (1 - q) * math.log(1 - q)), 4),
                        "disc_acc": round(r["disc_acc"], 4),
                        "baseline": round(1 - q, 4),
                        "recall": round(r["replaced_recall"], 4),
                        "seconds": round(time.perf_counter() - t0),
                    }
                ),
                flush=True,
            )


if __name__ == "__main__":
    main()
