"""How fast a small discriminator learns to spot replaced tokens, without a generator.

    python benchmarks/disc_probe.py --task unigram --steps 1500          # after `make demo`
    python benchmarks/disc_probe.py --task uniform --steps 500           # the control

Trains only the discriminator of a preset (default `tiny`) on the demo's instances, with 15% of
the non-special tokens replaced by a fixed rule instead of generator samples:

  uniform  a token drawn uniformly from the vocabulary: rare tokens give it away (the control)
  unigram  a token drawn from the corpus's unigram frequencies: the token alone says nothing,
           only its context does; close to what an ELECTRA generator produces early on
  repeat   the previous token, repeated: a purely positional rule

and prints, on held-out instances with fixed replacements, the discriminator's loss next to the
entropy of the prior (the loss of always predicting the replaced share), its accuracy next to the
all-"original" baseline, and its recall of replaced tokens. The last line is one JSON object.
This is why the demo's `tiny` model does not beat the all-"original" baseline on held-out data
(see the closing notes of issue 4 and docs/performance.md).
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
    ap.add_argument("--task", choices=("uniform", "unigram", "repeat"), default="unigram")
    ap.add_argument("--preset", default="tiny")
    ap.add_argument("--steps", type=int, default=1500)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--dropout", type=float, default=None, help="default: the preset's")
    ap.add_argument("--heldout", type=int, default=64, help="held-out instances")
    ap.add_argument("--eval-every", type=int, default=250)
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()

    import torch

    from electra_ray.config import model_preset
    from electra_ray.model.electra import ElectraPretrainer
    from electra_ray.tokenization import JapaneseWordPieceTokenizer
    from electra_ray.train.data import build_batch, global_rows, load_instances, split_rows

    for path, what in ((a.instances, "instances"), (a.tokenizer, "tokenizer")):
        if not os.path.isdir(path):
            ap.error(f"--{what} {path}: no such folder (run `make demo` first, or point it at yours)")
    if a.threads:
        torch.set_num_threads(a.threads)
    vocab = JapaneseWordPieceTokenizer.from_pretrained(a.tokenizer).vocab
    specials = torch.tensor([vocab[t] for t in ("[UNK]", "[CLS]", "[SEP]", "[PAD]", "[MASK]")])
    pad = vocab["[PAD]"]
    arrays = load_instances(a.instances)
    seq_len = int(max(arrays.offsets[1:] - arrays.offsets[:-1]))  # the instances' max_seq_length
    over = {} if a.dropout is None else {"dropout": a.dropout}
    cfg = model_preset(a.preset, vocab_size=len(vocab), pad_token_id=pad, **over)
    torch.manual_seed(a.seed)
    disc = ElectraPretrainer(cfg).discriminator
    opt = torch.optim.AdamW(disc.parameters(), lr=a.lr, weight_decay=0.01)
    train_rows, heldout_rows = split_rows(arrays.n, a.heldout, a.seed)

    weights = torch.bincount(torch.from_numpy(arrays.ids.astype("int64")), minlength=cfg.vocab_size).float()
    if a.task == "uniform":
        weights = torch.ones(cfg.vocab_size)
    weights[specials] = 0

    def batch(rows, gen: torch.Generator):
        ids, types, att = (torch.from_numpy(x).long() for x in build_batch(arrays, rows, seq_len, pad))
        eligible = att.bool() & ~torch.isin(ids, specials)
        replace = (torch.rand(ids.shape, generator=gen) < 0.15) & eligible
        if a.task == "repeat":
            other = torch.cat([ids[:, :1], ids[:, :-1]], 1)
        else:
            other = torch.multinomial(weights, ids.numel(), replacement=True, generator=gen).view(ids.shape)
        x = torch.where(replace, other, ids)
        return x, types, att, (x != ids).float()

    def loss_of(x, types, att, labels):
        logits = disc(input_ids=x, attention_mask=att, token_type_ids=types).logits
        keep = att.bool()
        loss = torch.nn.functional.binary_cross_entropy_with_logits(logits[keep], labels[keep])
        return loss, logits, keep

    g_eval = torch.Generator().manual_seed(a.seed + 1)
    heldout = [batch(heldout_rows[k : k + 16], g_eval) for k in range(0, len(heldout_rows), 16)]

    def evaluate() -> dict:
        disc.eval()
        tot = dict(loss=0.0, n=0, correct=0, replaced=0, found=0)
        with torch.no_grad():
            for x, types, att, labels in heldout:
                loss, logits, keep = loss_of(x, types, att, labels)
                pred = logits > 0
                n = int(keep.sum())
                tot["loss"] += float(loss) * n
                tot["n"] += n
                tot["correct"] += int(((pred == labels.bool()) & keep).sum())
                tot["replaced"] += int(labels.sum())
                tot["found"] += int((pred & labels.bool()).sum())
        disc.train()
        q = tot["replaced"] / tot["n"]
        return {
            "heldout_loss": tot["loss"] / tot["n"],
            "prior_entropy": -(q * math.log(q) + (1 - q) * math.log(1 - q)),
            "accuracy": tot["correct"] / tot["n"],
            "baseline": 1 - q,
            "recall": tot["found"] / max(tot["replaced"], 1),
        }

    g = torch.Generator().manual_seed(a.seed)
    t0 = time.perf_counter()
    r: dict = {}
    for step in range(1, a.steps + 1):
        loss, _, _ = loss_of(*batch(train_rows[global_rows(step, a.batch, len(train_rows), a.seed)], g))
        loss.backward()
        torch.nn.utils.clip_grad_norm_(disc.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        if step % a.eval_every == 0 or step == a.steps:
            r = evaluate()
            print(
                f"{a.task} step {step}: held-out loss {r['heldout_loss']:.4f} (prior {r['prior_entropy']:.4f}), "
                f"accuracy {r['accuracy']:.3f} (baseline {r['baseline']:.3f}), recall {r['recall']:.3f} "
                f"({time.perf_counter() - t0:.0f} s)",
                flush=True,
            )
    print(
        json.dumps({"task": a.task, "preset": a.preset, "steps": a.steps, "batch": a.batch, "lr": a.lr, **r})
    )


if __name__ == "__main__":
    main()
