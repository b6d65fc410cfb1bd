"""Per-shard work without Ray: guards, counting, the shard files and their completion marker."""

from __future__ import annotations

import json
import os
from collections import Counter

from electra_ray.config import CleanConfig
from electra_ray.data.corpus import (
    ShardStats,
    clean_page,
    clean_shard,
    completed_shards,
    corpus_text,
    write_shard,
)
from electra_ray.wiki.dump import Page


def test_size_and_time_guards_skip_and_count():
    stats = ShardStats()
    big = Page(1, "大きい", 0, "文章である。" * 1000)
    assert clean_page(big, CleanConfig(max_page_bytes=100), stats) is None
    slow = Page(2, "遅い", 0, "{{a|" * 3000 + "文章である。" + "}}" * 3000)
    assert clean_page(slow, CleanConfig(max_page_seconds=1e-9), stats) is None
    empty = Page(3, "空", 0, "{{Infobox}}\n[[Category:x]]")
    assert clean_page(empty, CleanConfig(), stats) is None
    assert stats.page_drops == Counter({"too_large": 1, "timeout": 1, "no_sentences": 1})
    assert stats.wikitext_bytes == sum(len(p.text.encode()) for p in (big, slow, empty))


def test_a_page_that_crashes_the_cleaner_is_counted_not_fatal(monkeypatch):
    import electra_ray.data.corpus as corpus

    real = corpus.clean_wikitext

    def flaky(text, title, **kw):
        if title == "壊れた":
            raise ValueError("boom")
        return real(text, title, **kw)

    monkeypatch.setattr(corpus, "clean_wikitext", flaky)
    pages = [Page(1, "壊れた", 0, "文章である。"), Page(2, "普通", 0, "普通の文章である。")]
    table, stats = clean_shard(0, pages, 5, Counter({"redirect": 3}), CleanConfig())
    assert table.column("page_id").to_pylist() == [2]
    assert stats.page_drops == Counter({"redirect": 3, "parse_error": 1})
    assert stats.pages_in == 5 and stats.articles_in == 2 and stats.articles_kept == 1


def test_write_shard_writes_the_marker_last_and_relaunch_reads_it(tmp_path):
    pages = [Page(7, "題", 0, "一つ目の文である。二つ目の文である。")]
    table, stats = clean_shard(3, pages, 1, Counter(), CleanConfig())
    out = str(tmp_path)
    write_shard(out, table, stats, ("parquet", "text"), "fp1")
    assert os.path.exists(os.path.join(out, "part-00003.parquet"))
    assert open(os.path.join(out, "text", "part-00003.txt"), encoding="utf-8").read() == corpus_text(table)
    marker = json.load(open(os.path.join(out, "_shards", "part-00003.json")))
    assert marker["fingerprint"] == "fp1" and marker["stats"]["sentences_kept"] == 2
    done = completed_shards(out, "fp1")
    assert list(done) == [3] and done[3].articles_kept == 1
    assert not [f for f in os.listdir(out) if f.startswith(".tmp")]
