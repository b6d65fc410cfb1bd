"""Corpus → WordPiece vocabulary folder that loads as BertJapaneseTokenizer (MeCab ipadic).

    python jobs/train_tokenizer.py --corpus out/corpus --output out/tokenizer [--vocab-size 32768]

MeCab word counting runs on the Ray cluster (an actor pool, one tagger per actor); WordPiece is
trained from the counts with the HF `tokenizers` library. The folder holds vocab.txt,
tokenizer_config.json, special_tokens_map.json and manifest.json (counts, settings, UNK rate on
held-out pages).
"""

from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from electra_ray import cli  # noqa: E402
from electra_ray.config import TokenizerConfig, help_of  # noqa: E402


def parse_args(argv: list[str] | None) -> TokenizerConfig:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=cli.HelpFormatter)
    h = lambda name: help_of(TokenizerConfig, name)  # noqa: E731
    p.add_argument("--corpus", required=True, help=h("corpus"))
    p.add_argument("--output", required=True, help=h("output"))
    p.add_argument("--vocab-size", type=int, default=TokenizerConfig.vocab_size, help=h("vocab_size"))
    p.add_argument(
        "--min-frequency", type=int, default=TokenizerConfig.min_frequency, help=h("min_frequency")
    )
    p.add_argument(
        "--limit-alphabet", type=int, default=TokenizerConfig.limit_alphabet, help=h("limit_alphabet")
    )
    p.add_argument(
        "--special-order", choices=["released", "pad-first"], default="released", help=h("special_order")
    )
    p.add_argument(
        "--heldout-fraction", type=float, default=TokenizerConfig.heldout_fraction, help=h("heldout_fraction")
    )
    p.add_argument("--max-workers", type=int, default=None, help=h("max_workers"))
    a = p.parse_args(argv)
    return TokenizerConfig(
        corpus=a.corpus,
        output=a.output,
        vocab_size=a.vocab_size,
        min_frequency=a.min_frequency,
        limit_alphabet=a.limit_alphabet,
        special_order=a.special_order,
        heldout_fraction=a.heldout_fraction,
        max_workers=a.max_workers,
    )


def main(argv: list[str] | None = None) -> dict:
    cfg = parse_args(argv)
    print(cfg.describe(), flush=True)
    from electra_ray.data.vocab import corpus_files, train_tokenizer

    corpus_files(cfg.corpus)  # fail fast on a wrong path, before starting Ray
    cli.init_ray()
    m = train_tokenizer(cfg)
    v, h = m["vocab"], m["heldout"]
    print(
        f"tokenizer: {v['vocab_size']} entries ({v['alphabet']} characters, {v['continuations']} ## forms, {v['learned']} learned pieces) "
        f"in {cfg.output}; UNK rate on {h['sentences']} held-out sentences: {h['unk_rate']}",
        flush=True,
    )
    return {
        "output": cfg.output,
        "vocab_size": v["vocab_size"],
        "unk_rate": h["unk_rate"],
        "sha256": v["sha256"],
    }


if __name__ == "__main__":
    sys.exit(cli.run(main))
