"""The tokenizer stage: count MeCab words across the cluster, train WordPiece, write the HF folder.

Counting runs on Ray Data: Parquet reads (light, 0 CPUs reserved so they are never starved) feed an
autoscaling actor pool, one MeCab tagger per actor; each batch returns its word counts and the
driver merges them (memory: one entry per distinct word, a few million for all of Wikipedia).
Pages whose id falls in the held-out fraction are not counted; their sentences measure the
vocabulary's UNK rate afterwards.
"""

from __future__ import annotations

import time
from collections import Counter
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from electra_ray import __version__, storage
from electra_ray.config import TokenizerConfig
from electra_ray.data.resources import actor_pool
from electra_ray.tokenization.vocab import (
    SPECIAL_ORDERS,
    count_sentences,
    is_heldout,
    train_wordpiece,
    vocab_checksum,
    write_tokenizer_folder,
)


def corpus_files(corpus: str) -> list[str]:
    files = storage.list_files(corpus, ".parquet")
    if not files:
        raise FileNotFoundError(
            f"{corpus}: no corpus shards (part-*.parquet); run jobs/prepare_corpus.py first"
        )
    return files


def count_batch(batch: pa.Table, heldout_fraction: float) -> tuple[Counter, dict[str, int]]:
    """Word counts of one batch of corpus rows (held-out pages skipped), and the batch's tallies."""
    counts: Counter = Counter()
    tally = {"pages": 0, "sentences": 0, "words": 0, "chars": 0}
    ids = batch.column("page_id").to_pylist()
    docs = batch.column("sentences").to_pylist()
    for pid, sentences in zip(ids, docs):
        if is_heldout(pid, heldout_fraction):
            continue
        tally["pages"] += 1
        tally["sentences"] += len(sentences)
        tally["chars"] += sum(map(len, sentences))
        tally["words"] += count_sentences(sentences, counts)
    return counts, tally


def read_corpus_file(uri: str) -> pa.Table:
    return pq.read_table(pa.BufferReader(storage.read_bytes(uri)), columns=["page_id", "sentences"])


_TALLY = ("pages", "sentences", "chars")


class WordCounter:
    """Actor: the word counts of whole corpus shards; one MeCab tagger per actor (built on first use).

    Each actor reads its shard itself: no upstream read tasks compete for the CPUs the actors hold
    (on a small cluster that competition deadlocks an actor pool).
    """

    def __init__(self, heldout_fraction: float) -> None:
        self.heldout_fraction = heldout_fraction

    def __call__(self, batch: pa.Table) -> pa.Table:
        counts: Counter = Counter()
        tally = dict.fromkeys(_TALLY, 0)
        for uri in batch.column("file").to_pylist():
            c, t = count_batch(read_corpus_file(uri), self.heldout_fraction)
            counts.update(c)
            for k in _TALLY:
                tally[k] += t[k]
        words = list(counts)
        pad = [0] * max(0, len(words) - 1)
        # one output row per distinct word; the shard's tallies ride on the first row
        return pa.table(
            {
                "word": words,
                "count": [counts[w] for w in words],
                **{k: [tally[k], *pad] if words else [] for k in _TALLY},
            },
            schema=pa.schema(
                [("word", pa.string()), ("count", pa.int64())] + [(k, pa.int64()) for k in _TALLY]
            ),
        )


def count_words_ray(
    corpus: str, heldout_fraction: float, max_workers: int | None
) -> tuple[Counter, dict[str, int]]:
    """MeCab word counts of the corpus (held-out pages skipped) on the Ray cluster."""
    import ray

    files = corpus_files(corpus)
    ds = ray.data.from_items([{"file": f} for f in files], override_num_blocks=len(files))
    ds = ds.map_batches(
        WordCounter,
        fn_constructor_kwargs={"heldout_fraction": heldout_fraction},
        batch_size=1,
        batch_format="pyarrow",
        compute=actor_pool(max_workers, len(files)),
        num_cpus=1,
    )
    counts: Counter = Counter()
    tally = {"pages": 0, "sentences": 0, "words": 0, "chars": 0}
    for batch in ds.iter_batches(batch_format="pyarrow", batch_size=None):
        words = batch.column("word").to_pylist()
        cs = batch.column("count").to_pylist()
        for w, c in zip(words, cs):
            counts[w] += c
        tally["words"] += sum(cs)
        for k in _TALLY:
            tally[k] += sum(batch.column(k).to_pylist())
    return counts, tally


def count_words_local(corpus: str, heldout_fraction: float) -> tuple[Counter, dict[str, int]]:
    """The same counts in this process, without Ray (for tests and small corpora)."""
    counts: Counter = Counter()
    tally = {"pages": 0, "sentences": 0, "words": 0, "chars": 0}
    for f in corpus_files(corpus):
        c, t = count_batch(read_corpus_file(f), heldout_fraction)
        counts.update(c)
        for k in tally:
            tally[k] += t[k]
    return counts, tally


def heldout_sentences(corpus: str, fraction: float, limit: int) -> list[str]:
    out: list[str] = []
    for f in corpus_files(corpus):
        table = read_corpus_file(f)
        for pid, sentences in zip(table.column("page_id").to_pylist(), table.column("sentences").to_pylist()):
            if is_heldout(pid, fraction):
                out.extend(sentences)
                if len(out) >= limit:
                    return out[:limit]
    return out


def unk_rate(vocab: list[str], sentences: list[str]) -> dict[str, Any]:
    """Share of [UNK] among the ids of ``sentences`` under ``vocab`` (in id order)."""
    from electra_ray.tokenization.wordpiece import JapaneseWordPieceTokenizer

    enc = JapaneseWordPieceTokenizer({t: i for i, t in enumerate(vocab)})
    tokens = unk = 0
    for ids in enc.encode_batch(sentences):
        tokens += len(ids)
        unk += ids.count(enc.unk_id)
    return {
        "sentences": len(sentences),
        "tokens": tokens,
        "unk": unk,
        "unk_rate": round(unk / tokens, 6) if tokens else None,
    }


def train_tokenizer(cfg: TokenizerConfig, *, use_ray: bool = True, log=print) -> dict[str, Any]:
    t0 = time.time()
    log(
        f"counting MeCab words in {cfg.corpus} ({'Ray' if use_ray else 'one process'}), "
        f"holding out {cfg.heldout_fraction:.1%} of the pages"
    )
    if use_ray:
        counts, tally = count_words_ray(cfg.corpus, cfg.heldout_fraction, cfg.max_workers)
    else:
        counts, tally = count_words_local(cfg.corpus, cfg.heldout_fraction)
    if not counts:
        raise ValueError(f"{cfg.corpus}: no words to train on (empty corpus, or everything held out)")
    t_count = time.time() - t0
    log(
        f"{tally['words']:,} words, {len(counts):,} distinct, from {tally['sentences']:,} sentences in {t_count:.1f} s; training WordPiece"
    )
    specials = SPECIAL_ORDERS[cfg.special_order]
    vocab, facts = train_wordpiece(
        counts,
        vocab_size=cfg.vocab_size,
        min_frequency=cfg.min_frequency,
        limit_alphabet=cfg.limit_alphabet,
        special_tokens=specials,
    )
    heldout = heldout_sentences(cfg.corpus, cfg.heldout_fraction, cfg.unk_eval_sentences)
    unk = unk_rate(vocab, heldout)
    corpus_manifest = None
    if storage.exists(storage.join(cfg.corpus, "manifest.json")):
        cm = storage.read_json(storage.join(cfg.corpus, "manifest.json"))
        corpus_manifest = {"fingerprint": cm.get("fingerprint"), "counts": cm.get("counts")}
    manifest = {
        "format_version": 1,
        "stage": "tokenizer",
        "complete": True,
        "corpus": {"uri": cfg.corpus, "manifest": corpus_manifest},
        "counts": {**tally, "distinct_words": len(counts)},
        "vocab": {**facts, "sha256": vocab_checksum(vocab), "special_tokens": list(specials)},
        "heldout": {"fraction": cfg.heldout_fraction, **unk},
        "config": cfg.to_dict(),
        "versions": {
            "electra_ray": __version__,
            "tokenizers": _version("tokenizers"),
            "fugashi": _version("fugashi"),
            "ipadic": _version("ipadic"),
        },
        "seconds": {"count": round(t_count, 2), "total": round(time.time() - t0, 2)},
    }
    write_tokenizer_folder(cfg.output, vocab, manifest)
    return manifest


def _version(pkg: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(pkg)
    except PackageNotFoundError:
        return "unknown"
