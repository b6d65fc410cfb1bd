r"""Japanese Wikipedia dump → clean sentence corpus (Parquet shards + manifest.json).

    python jobs/prepare_corpus.py --dump jawiki-…-multistream.xml.bz2 \
        --index jawiki-…-multistream-index.txt.bz2 --output s3://bucket/corpus [--format text]

Without --index the dump (.xml or .xml.bz2) is read by one streaming reader. A run killed midway
and started again with the same flags skips the shards already complete.
"""

from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from electra_ray import cli  # noqa: E402
from electra_ray.config import CleanConfig, CorpusConfig, help_of  # noqa: E402


def parse_args(argv: list[str] | None) -> CorpusConfig:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=cli.HelpFormatter)
    p.add_argument("--dump", required=True, help=help_of(CorpusConfig, "dump"))
    p.add_argument("--index", default=None, help=help_of(CorpusConfig, "index"))
    p.add_argument("--output", required=True, help=help_of(CorpusConfig, "output"))
    p.add_argument(
        "--format",
        action="append",
        choices=["parquet", "text"],
        default=None,
        help="output format; repeat for several. 'text' adds O/text/part-*.txt (parquet is always written)",
    )
    p.add_argument(
        "--pages-per-shard", type=int, default=10_000, help=help_of(CorpusConfig, "pages_per_shard")
    )
    p.add_argument("--max-workers", type=int, default=None, help=help_of(CorpusConfig, "max_workers"))
    p.add_argument(
        "--min-sentence-chars",
        type=int,
        default=CleanConfig.min_sentence_chars,
        help=help_of(CleanConfig, "min_sentence_chars"),
    )
    p.add_argument(
        "--max-sentence-chars",
        type=int,
        default=CleanConfig.max_sentence_chars,
        help=help_of(CleanConfig, "max_sentence_chars"),
    )
    p.add_argument(
        "--no-list-items", action="store_true", help="drop list items even when they are whole sentences"
    )
    a = p.parse_args(argv)
    formats = tuple(sorted({"parquet", *(a.format or [])}))
    clean = CleanConfig(
        min_sentence_chars=a.min_sentence_chars,
        max_sentence_chars=a.max_sentence_chars,
        keep_list_items=not a.no_list_items,
    )
    return CorpusConfig(
        dump=a.dump,
        index=a.index,
        output=a.output,
        formats=formats,
        pages_per_shard=a.pages_per_shard,
        max_workers=a.max_workers,
        clean=clean,
    )


def main(argv: list[str] | None = None) -> dict:
    cfg = parse_args(argv)
    print(cfg.describe(), flush=True)
    from electra_ray.data.pipeline import check_inputs, prepare_corpus

    check_inputs(cfg)  # before starting Ray: a typo in a path should not cost a cluster start
    cli.init_ray()

    m = prepare_corpus(cfg)
    c = m["counts"]
    print(
        f"corpus: {c['articles_kept']} articles, {c['sentences_kept']} sentences, {c['chars_kept']} characters "
        f"in {m['output']['shards']} shard(s) under {cfg.output}",
        flush=True,
    )
    print(f"dropped pages: {m['page_drops']}  dropped sentences: {m['sentence_drops']}", flush=True)
    return {
        "output": cfg.output,
        "manifest": cfg.output.rstrip("/") + "/manifest.json",
        "counts": c,
        "shards": m["output"]["shards"],
    }


if __name__ == "__main__":
    sys.exit(cli.run(main))
