"""Corpus shards: pages → cleaned rows → Parquet (and text) files, with the books kept.

Pure functions, no Ray: ``clean_shard`` turns a shard's pages into rows and statistics;
``write_shard`` writes the files and, last, the shard's statistics file, which is the shard's
completion marker. A relaunch reads the markers (``completed_shards``) and skips those shards.

Output layout (the contract of ``jobs/prepare_corpus.py``)::

    O/part-00000.parquet        page_id int64, title string, sentences list<string>
    O/text/part-00000.txt       --format text: one sentence a line, a blank line between documents
    O/_shards/part-00000.json   the shard's statistics, written last (= shard complete)
    O/manifest.json             written last of all: input, counts, drops by reason, versions, config
"""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from electra_ray import storage
from electra_ray.config import CleanConfig
from electra_ray.wiki.clean import PageTimeout, clean_wikitext
from electra_ray.wiki.dump import Page
from electra_ray.wiki.sentences import sentences_of

SCHEMA = pa.schema(
    [
        pa.field("page_id", pa.int64(), nullable=False),
        pa.field("title", pa.string(), nullable=False),
        pa.field("sentences", pa.list_(pa.string()), nullable=False),
    ]
)
SHARD_FORMAT_VERSION = 1
COUNT_KEYS = ("pages_in", "articles_in", "articles_kept", "sentences_kept", "chars_kept", "wikitext_bytes")


def shard_name(shard: int) -> str:
    return f"part-{shard:05d}"


@dataclass
class ShardStats:
    """Counts for one shard; they add up across shards into the manifest."""

    shard: int = -1
    pages_in: int = 0
    articles_in: int = 0
    articles_kept: int = 0
    sentences_kept: int = 0
    chars_kept: int = 0
    wikitext_bytes: int = 0
    page_drops: Counter = field(default_factory=Counter)
    sentence_drops: Counter = field(default_factory=Counter)
    holes_by_template: Counter = field(default_factory=Counter)
    first_page_id: int | None = None
    last_page_id: int | None = None
    clean_seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return {
            "shard": self.shard,
            "pages_in": self.pages_in,
            "articles_in": self.articles_in,
            "articles_kept": self.articles_kept,
            "sentences_kept": self.sentences_kept,
            "chars_kept": self.chars_kept,
            "wikitext_bytes": self.wikitext_bytes,
            "page_drops": dict(sorted(self.page_drops.items())),
            "sentence_drops": dict(sorted(self.sentence_drops.items())),
            "holes_by_template": dict(self.holes_by_template.most_common(200)),
            "first_page_id": self.first_page_id,
            "last_page_id": self.last_page_id,
            "clean_seconds": round(self.clean_seconds, 3),
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ShardStats:
        s = cls()
        for k, v in d.items():
            if k in ("page_drops", "sentence_drops", "holes_by_template"):
                setattr(s, k, Counter(v))
            elif hasattr(s, k):
                setattr(s, k, v)
        return s

    def add(self, other: ShardStats) -> None:
        for k in COUNT_KEYS:
            setattr(self, k, getattr(self, k) + getattr(other, k))
        self.page_drops.update(other.page_drops)
        self.sentence_drops.update(other.sentence_drops)
        self.holes_by_template.update(other.holes_by_template)
        self.clean_seconds += other.clean_seconds


def clean_page(page: Page, cfg: CleanConfig, stats: ShardStats) -> list[str] | None:
    """The sentences of one article, or None when the page is dropped (counted in ``stats``)."""
    nbytes = len(page.text.encode("utf-8"))
    stats.wikitext_bytes += nbytes
    if nbytes > cfg.max_page_bytes:
        stats.page_drops["too_large"] += 1
        return None
    try:
        cleaned = clean_wikitext(page.text, page.title, max_seconds=cfg.max_page_seconds)
        sentences = sentences_of(cleaned.units, cfg, stats.sentence_drops)
    except PageTimeout:
        stats.page_drops["timeout"] += 1
        return None
    except RecursionError:
        stats.page_drops["parse_error"] += 1
        return None
    except Exception:  # noqa: BLE001 - one bad page must never kill a shard; it is counted
        stats.page_drops["parse_error"] += 1
        return None
    stats.holes_by_template.update(cleaned.holes)
    if not sentences:
        stats.page_drops["no_sentences"] += 1
        return None
    return sentences


def clean_shard(
    shard: int, pages: list[Page], pages_in: int, page_drops: Counter, cfg: CleanConfig
) -> tuple[pa.Table, ShardStats]:
    """Clean the articles of one shard. ``pages_in``/``page_drops`` come from the reader's filter."""
    t0 = time.perf_counter()
    stats = ShardStats(shard=shard, pages_in=pages_in, articles_in=len(pages), page_drops=Counter(page_drops))
    ids, titles, sents = [], [], []
    for page in pages:
        s = clean_page(page, cfg, stats)
        if s is None:
            continue
        ids.append(page.page_id)
        titles.append(page.title)
        sents.append(s)
        stats.sentences_kept += len(s)
        stats.chars_kept += sum(map(len, s))
    stats.articles_kept = len(ids)
    if ids:
        stats.first_page_id, stats.last_page_id = ids[0], ids[-1]
    stats.clean_seconds = time.perf_counter() - t0
    table = pa.table({"page_id": ids, "title": titles, "sentences": sents}, schema=SCHEMA)
    return table, stats


def corpus_text(table: pa.Table) -> str:
    """The classic corpus format: one sentence a line, a blank line between documents."""
    docs = table.column("sentences").to_pylist()
    return "".join("\n".join(d) + "\n\n" for d in docs)


def write_shard(
    output: str, table: pa.Table, stats: ShardStats, formats: tuple[str, ...], fingerprint: str
) -> None:
    """Write a shard's files, then its statistics file last (the completion marker)."""
    name = shard_name(stats.shard)
    storage.write_bytes(
        storage.join(output, f"{name}.parquet"), storage.parquet_bytes(table, compression="zstd")
    )
    if "text" in formats:
        storage.write_text(storage.join(output, "text", f"{name}.txt"), corpus_text(table))
    marker = {"format_version": SHARD_FORMAT_VERSION, "fingerprint": fingerprint, "stats": stats.to_dict()}
    storage.write_json(storage.join(output, "_shards", f"{name}.json"), marker)


def shard_markers(output: str, fingerprint: str, other: str) -> dict[int, dict]:
    """The stats of the shards already complete in ``output`` (``_shards/*.json``), by shard.

    Raises when a marker was written with another fingerprint; ``other`` says what that means.
    """
    done: dict[int, dict] = {}
    for uri in storage.list_files(storage.join(output, "_shards"), ".json"):
        marker = storage.read_json(uri)
        if marker.get("fingerprint") != fingerprint:
            raise ValueError(
                f"{output} holds shards written with {other} ({uri}); "
                "use a new --output, or delete that folder to start over"
            )
        done[marker["stats"]["shard"]] = marker["stats"]
    return done


def completed_shards(output: str, fingerprint: str) -> dict[int, ShardStats]:
    """Corpus shards already complete in ``output`` (marker present, same settings)."""
    markers = shard_markers(output, fingerprint, "other settings or another dump")
    return {k: ShardStats.from_dict(v) for k, v in markers.items()}


def finished_manifest(output: str, fingerprint: str) -> dict | None:
    """The output's manifest.json when it is complete and was made from the same input and settings."""
    uri = storage.join(output, "manifest.json")
    if storage.exists(uri):
        old = storage.read_json(uri)
        if old.get("fingerprint") == fingerprint and old.get("complete"):
            return old
    return None


def read_corpus(output: str) -> pa.Table:
    """All rows of a corpus folder, in shard order."""
    tables = []
    for uri in storage.list_files(output, ".parquet"):
        tables.append(pq.read_table(pa.BufferReader(storage.read_bytes(uri))))
    return pa.concat_tables(tables) if tables else SCHEMA.empty_table()
