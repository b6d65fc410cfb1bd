"""How fast a small discriminator learns to spot replaced tokens, apart from the ELECTRA loop.

    python benchmarks/disc_probe.py --task unigram --steps 1500          # after `make demo`
    python benchmarks/disc_probe.py --task uniform --steps 500           # the control
    python benchmarks/disc_probe.py --task unigram --model conv3         # no attention: neighbours only
    python benchmarks/disc_probe.py --task unigram --set attention_init=reference \
        --initializer-range 0.02 --dropout 0.1                          # the reference init: a plateau
    python benchmarks/disc_probe.py --task unigram --set attention_init=reference --local-bias 1
    python benchmarks/disc_probe.py --task generator --generator demo_output/hf/generator

Trains only the discriminator of a preset (default `tiny`) on the demo's instances, with 15% of
the non-special tokens replaced by a fixed rule:

  uniform    a token drawn uniformly from the vocabulary: rare tokens give it away (the control)
  unigram    a token drawn from the corpus's unigram frequencies: the token alone says nothing,
             only its context does; close to what an ELECTRA generator produces early on
  repeat     the previous token, repeated: a purely positional rule
  generator  sampled by a trained, frozen generator (an exported folder) where the pretraining
             loop would sample, at the preset's temperature (`--temperature`): the real task,
             without the generator moving

and prints, on held-out instances with fixed replacements, the discriminator's loss next to the
entropy of the prior (the loss of always predicting the replaced share), its accuracy next to the
all-"original" baseline, and its recall of replaced tokens. For the uniform and unigram tasks it
first scores the same held-out replacements by counting token pairs in the training instances (no
network: what the data alone supports with two neighbours of context). `--model conv3` trains a
control without attention instead of the discriminator; `--local-bias SLOPE` adds −SLOPE·|i − j|
to the discriminator's attention scores (an ALiBi-style oracle that tells it where its neighbours
are); `--set FIELD=VALUE` overrides any preset field (e.g. `attention_init=reference`). The last
line is one JSON object. These runs are how the `tiny` preset got its attention init (README,
"What the demo's tiny model learns"; the closing notes of issue 4).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from types import SimpleNamespace

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)


def Conv3(cfg):
    """Per-token logits from a token and its two neighbours only: embedding → width-3 convolution → MLP."""
    from torch import nn

    class Conv3Detector(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.embed = nn.Embedding(cfg.vocab_size, cfg.embedding_size)
            self.conv = nn.Conv1d(cfg.embedding_size, cfg.hidden_size, 3, padding=1)
            self.head = nn.Sequential(
                nn.GELU(),
                nn.Linear(cfg.hidden_size, cfg.hidden_size),
                nn.GELU(),
                nn.Linear(cfg.hidden_size, 1),
            )

        def forward(self, input_ids, attention_mask, token_type_ids):
            h = self.conv(self.embed(input_ids).transpose(1, 2)).transpose(1, 2)
            return SimpleNamespace(logits=self.head(h).squeeze(-1))

    return Conv3Detector()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--instances", default=os.path.join(ROOT, "demo_output", "instances"))
    ap.add_argument("--tokenizer", default=os.path.join(ROOT, "demo_output", "tokenizer"))
    ap.add_argument("--task", choices=("uniform", "unigram", "repeat", "generator"), default="unigram")
    ap.add_argument(
        "--generator",
        default=os.path.join(ROOT, "demo_output", "hf", "generator"),
        help="for --task generator: an exported generator folder (jobs/export.py)",
    )
    ap.add_argument("--preset", default="tiny")
    ap.add_argument(
        "--temperature",
        type=float,
        default=None,
        help="for --task generator: sampling temperature (default: the preset's; 1 is the reference's)",
    )
    ap.add_argument(
        "--model",
        choices=("electra", "conv3"),
        default="electra",
        help="electra: the preset's discriminator; conv3: a control without attention (the preset's "
        "embedding and hidden sizes, one convolution over each token and its two neighbours, an MLP)",
    )
    ap.add_argument("--steps", type=int, default=1500)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--warmup", type=int, default=0, help="linear warm-up steps (default: none)")
    ap.add_argument("--dropout", type=float, default=None, help="default: the preset's")
    ap.add_argument("--initializer-range", type=float, default=None, help="init std (default: the preset's)")
    ap.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="FIELD=VALUE",
        help="other preset overrides, e.g. hidden_size=128",
    )
    ap.add_argument(
        "--local-bias",
        type=float,
        default=0.0,
        metavar="SLOPE",
        help="add -SLOPE·|i-j| to every attention score (through a 4-D attention mask): the same "
        "discriminator, told where its neighbours are (default 0: off)",
    )
    ap.add_argument(
        "--show-attention",
        action="store_true",
        help="before and after training, the mean attention weight each layer puts on a token's own "
        "position, its neighbours and tokens 20 away (uniform: 1/length)",
    )
    ap.add_argument("--heldout", type=int, default=64, help="held-out instances")
    ap.add_argument("--eval-every", type=int, default=250)
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()

    import torch

    from electra_ray.config import model_preset, parse_model_set
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
    if a.initializer_range is not None:
        over["initializer_range"] = a.initializer_range
    over.update(parse_model_set(a.set))
    cfg = model_preset(a.preset, vocab_size=len(vocab), pad_token_id=pad, **over)
    temperature = cfg.temperature if a.temperature is None else a.temperature
    torch.manual_seed(a.seed)
    disc = ElectraPretrainer(cfg).discriminator if a.model == "electra" else Conv3(cfg)
    opt = torch.optim.AdamW(disc.parameters(), lr=a.lr, weight_decay=0.01)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / a.warmup) if a.warmup else 1.0
    )
    train_rows, heldout_rows = split_rows(arrays.n, a.heldout, a.seed)

    weights = torch.bincount(torch.from_numpy(arrays.ids.astype("int64")), minlength=cfg.vocab_size).float()
    if a.task == "uniform":
        weights = torch.ones(cfg.vocab_size)
    weights[specials] = 0

    mask_id = vocab["[MASK]"]
    sampler = None
    if a.task == "generator":
        from transformers import AutoModelForMaskedLM

        if not os.path.isdir(a.generator):
            ap.error(f"--generator {a.generator}: no such folder (export a run with jobs/export.py)")
        sampler = AutoModelForMaskedLM.from_pretrained(a.generator).eval()
        if sampler.config.vocab_size != cfg.vocab_size:
            ap.error(
                f"--generator {a.generator} has {sampler.config.vocab_size} tokens, the tokenizer {cfg.vocab_size}"
            )

    def batch(rows, gen: torch.Generator):
        ids, types, att = (torch.from_numpy(x).long() for x in build_batch(arrays, rows, seq_len, pad))
        eligible = att.bool() & ~torch.isin(ids, specials)
        replace = (torch.rand(ids.shape, generator=gen) < 0.15) & eligible
        if a.task == "repeat":
            other = torch.cat([ids[:, :1], ids[:, :-1]], 1)
        elif a.task == "generator":  # as in pretraining: 85% of the picked tokens shown as [MASK]
            shown = torch.where(replace & (torch.rand(ids.shape, generator=gen) < 0.85), mask_id, ids)
            with torch.no_grad():
                logits = sampler(input_ids=shown, attention_mask=att, token_type_ids=types).logits.float()
            u = torch.rand(logits.shape, generator=gen).clamp(1e-10, 1.0 - 1e-7)
            other = (logits / temperature - torch.log(-torch.log(u))).argmax(-1)
        else:
            other = torch.multinomial(weights, ids.numel(), replacement=True, generator=gen).view(ids.shape)
        x = torch.where(replace, other, ids)
        return x, types, att, (x != ids).float()

    g_eval = torch.Generator().manual_seed(a.seed + 1)
    heldout = [batch(heldout_rows[k : k + 16], g_eval) for k in range(0, len(heldout_rows), 16)]

    def mask(att: torch.Tensor) -> torch.Tensor:
        """The attention mask the model gets: the padding mask, or with --local-bias an additive 4-D
        mask (B, 1, L, L) holding the padding and the distance penalty."""
        if not a.local_bias or a.model != "electra":
            return att
        pos = torch.arange(att.size(1))
        dist = (pos[None, :] - pos[:, None]).abs().float()
        pad = torch.where(att.bool(), 0.0, torch.finfo(torch.float32).min)
        return (pad[:, None, None, :] - a.local_bias * dist).clamp(min=torch.finfo(torch.float32).min)

    def run(x, types, att, **kw):
        return disc(input_ids=x, attention_mask=mask(att), token_type_ids=types, **kw)

    def tally(tot: dict, logits: torch.Tensor, labels: torch.Tensor, keep: torch.Tensor) -> None:
        loss = torch.nn.functional.binary_cross_entropy_with_logits(
            logits[keep], labels[keep], reduction="sum"
        )
        pred = logits > 0
        tot["loss"] += float(loss)
        tot["n"] += int(keep.sum())
        tot["correct"] += int(((pred == labels.bool()) & keep).sum())
        tot["replaced"] += int(labels.sum())
        tot["found"] += int((pred & labels.bool()).sum())

    def summary(tot: dict) -> dict:
        q = tot["replaced"] / tot["n"]
        return {
            "heldout_loss": tot["loss"] / tot["n"],
            "prior_entropy": -(q * math.log(q) + (1 - q) * math.log(1 - q)),
            "accuracy": tot["correct"] / tot["n"],
            "baseline": 1 - q,
            "recall": tot["found"] / max(tot["replaced"], 1),
        }

    def evaluate() -> dict:
        disc.eval()
        tot = dict(loss=0.0, n=0, correct=0, replaced=0, found=0)
        with torch.no_grad():
            for x, types, att, labels in heldout:
                logits = run(x, types, att).logits
                tally(tot, logits, labels, att.bool())
        disc.train()
        return summary(tot)

    def neighbour_counts() -> dict:
        """The same held-out replacements judged by counting: no network, only token-pair counts.

        Bigram counts c(a, b) and skip-one counts c(a, _, b) over the training instances (add-k,
        interpolated with the unigram distribution). A token x between neighbours p and n is
        scored "replaced" by Bayes' rule: 0.15·w(x)·P(n | p, skip one) against
        0.85·P(x | p)·P(n | x), where w is the replacement distribution. What the data alone
        supports, with only the two neighbours as context.
        """
        v, k = cfg.vocab_size, 0.5
        ids, _, att = build_batch(arrays, train_rows[:20000], seq_len, pad)
        ids, att = torch.from_numpy(ids).long(), torch.from_numpy(att).bool()
        uni = torch.bincount(ids[att], minlength=v).double() + 0.1
        uni /= uni.sum()
        w = (weights / weights.sum()).double()

        def table(gap: int):
            both = att[:, :-gap] & att[:, gap:]
            keys, counts = torch.unique(ids[:, :-gap][both] * v + ids[:, gap:][both], return_counts=True)
            rows = torch.bincount(ids[:, :-gap][both], minlength=v).double()

            def prob(left: torch.Tensor, right: torch.Tensor) -> torch.Tensor:
                key = left * v + right
                at = torch.searchsorted(keys, key).clamp(max=len(keys) - 1)
                c = torch.where(keys[at] == key, counts[at], 0).double()
                return (c + k * v * uni[right]) / (rows[left] + k * v)

            return prob

        pair, skip = table(1), table(2)
        tot = dict(loss=0.0, n=0, correct=0, replaced=0, found=0)
        for x, _, att_h, labels in heldout:
            prev = torch.cat([x[:, :1], x[:, :-1]], 1)
            nxt = torch.cat([x[:, 1:], x[:, -1:]], 1)
            replaced = 0.15 * w[x] * skip(prev, nxt)
            original = 0.85 * pair(prev, x) * pair(x, nxt)
            logits = torch.log(replaced.clamp(min=1e-30)) - torch.log(original)
            logits = torch.where(torch.isin(x, specials), -30.0, logits).float()  # never replaced
            tally(tot, logits, labels, att_h.bool())
        return summary(tot)

    def show_attention(when: str) -> None:
        if not a.show_attention or a.model != "electra":
            return
        disc.eval()
        disc.set_attn_implementation("eager")
        x, types, att, _ = heldout[0]
        with torch.no_grad():
            out = run(x, types, att, output_attentions=True)
        disc.set_attn_implementation("sdpa")
        disc.train()
        real = att.bool()

        def on(w: torch.Tensor, o: int) -> float:  # mean weight of query i on key i + o, both real tokens
            d = torch.diagonal(w, offset=o, dim1=1, dim2=2)
            ok = (
                real[:, max(0, -o) : real.shape[1] - max(0, o)]
                & real[:, max(0, o) : real.shape[1] + min(0, o)]
            )
            return float(d[ok].mean())

        for i, w in enumerate(out.attentions):  # (B, heads, L, L)
            w = w.mean(1)
            print(
                f"attention {when}, layer {i}: own {on(w, 0):.3f}, neighbours {on(w, -1):.3f} {on(w, 1):.3f}, "
                f"20 away {on(w, -20):.3f} {on(w, 20):.3f} (uniform 1/{real.sum(1).float().mean():.0f} = "
                f"{float((1 / real.sum(1).float()).mean()):.3f})",
                flush=True,
            )

    counts = neighbour_counts() if a.task in ("uniform", "unigram") else None
    if counts:
        print(
            f"{a.task}, counting token pairs (no network): held-out loss {counts['heldout_loss']:.4f} "
            f"(prior {counts['prior_entropy']:.4f}), accuracy {counts['accuracy']:.3f} "
            f"(baseline {counts['baseline']:.3f}), recall {counts['recall']:.3f}",
            flush=True,
        )
    show_attention("at init")
    g = torch.Generator().manual_seed(a.seed)
    t0 = time.perf_counter()
    r: dict = {}
    train_loss = 0.0
    for step in range(1, a.steps + 1):
        x, types, att, labels = batch(train_rows[global_rows(step, a.batch, len(train_rows), a.seed)], g)
        logits = run(x, types, att).logits
        keep = att.bool()
        loss = torch.nn.functional.binary_cross_entropy_with_logits(logits[keep], labels[keep])
        loss.backward()
        train_loss = (
            0.98 * train_loss + 0.02 * float(loss.detach()) if step > 1 else float(loss.detach())
        )  # running mean
        torch.nn.utils.clip_grad_norm_(disc.parameters(), 1.0)
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        if step % a.eval_every == 0 or step == a.steps:
            r = evaluate()
            print(
                f"{a.task} step {step}: held-out loss {r['heldout_loss']:.4f} (prior {r['prior_entropy']:.4f}), "
                f"accuracy {r['accuracy']:.3f} (baseline {r['baseline']:.3f}), recall {r['recall']:.3f}, "
                f"training loss {train_loss:.4f} ({time.perf_counter() - t0:.0f} s)",
                flush=True,
            )
    show_attention(f"after {a.steps} steps")
    print(
        json.dumps(
            {
                "task": a.task,
                "model": a.model,
                "preset": a.preset,
                "steps": a.steps,
                "batch": a.batch,
                "lr": a.lr,
                **({"temperature": temperature} if a.task == "generator" else {}),
                **r,
                **({"counts_" + key: val for key, val in counts.items()} if counts else {}),
            }
        )
    )


if __name__ == "__main__":
    main()
