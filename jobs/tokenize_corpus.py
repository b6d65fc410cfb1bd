"""Corpus + tokenizer → packed pretraining instances ([CLS] A [SEP] B [SEP], Parquet) + manifest.

    python jobs/tokenize_corpus.py --corpus out/corpus --tokenizer out/tokenizer --output out/instances

Each corpus shard becomes one instance shard (columns input_ids list<uint16>, token_type_ids
list<uint8>); a relaunch skips finished shards. Instances depend only on --seed and the page id.
"""

from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from electra_ray import cli  # noqa: E402
from electra_ray.config import InstancesConfig, help_of  # noqa: E402


def parse_args(argv: list[str] | None) -> InstancesConfig:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=cli.HelpFormatter)
    h = lambda name: help_of(InstancesConfig, name)  # noqa: E731
    p.add_argument("--corpus", required=True, help=h("corpus"))
    p.add_argument("--tokenizer", required=True, help=h("tokenizer"))
    p.add_argument("--output", required=True, help=h("output"))
    p.add_argument(
        "--max-seq-length", type=int, default=InstancesConfig.max_seq_length, help=h("max_seq_length")
    )
    p.add_argument(
        "--short-seq-prob", type=float, default=InstancesConfig.short_seq_prob, help=h("short_seq_prob")
    )
    p.add_argument("--seed", type=int, default=InstancesConfig.seed, help=h("seed"))
    p.add_argument("--ids-dtype", choices=["auto", "uint16", "int32"], default="auto", help=h("ids_dtype"))
    p.add_argument("--max-workers", type=int, default=None, help=h("max_workers"))
    a = p.parse_args(argv)
    return InstancesConfig(
        corpus=a.corpus,
        tokenizer=a.tokenizer,
        output=a.output,
        max_seq_length=a.max_seq_length,
        short_seq_prob=a.short_seq_prob,
        seed=a.seed,
        ids_dtype=a.ids_dtype,
        max_workers=a.max_workers,
    )


def main(argv: list[str] | None = None) -> dict:
    cfg = parse_args(argv)
    print(cfg.describe(), flush=True)
    from electra_ray.data.tokenize import check_tokenizer, tokenize_corpus
    from electra_ray.data.vocab import corpus_files

    corpus_files(cfg.corpus)  # fail fast, before starting Ray
    check_tokenizer(cfg.tokenizer, cfg.ids_dtype)
    cli.init_ray()
    m = tokenize_corpus(cfg)
    c = m["counts"]
    print(
        f"instances: {c.get('instances', 0)} of at most {cfg.max_seq_length} tokens from {c.get('documents', 0)} documents "
        f"({c.get('tokens', 0)} tokens, UNK rate {m['unk_rate']}, {c.get('sentences_split', 0)} long sentences split) "
        f"in {cfg.output}",
        flush=True,
    )
    return {
        "output": cfg.output,
        "instances": c.get("instances", 0),
        "tokens": c.get("tokens", 0),
        "unk_rate": m["unk_rate"],
    }


if __name__ == "__main__":
    sys.exit(cli.run(main))
