"""Reading dumps: the three layouts agree, and every kind of bad input names the file and position."""

from __future__ import annotations

import bz2
import os

import pytest

from electra_ray.wiki.dump import (
    DumpError,
    Page,
    article_drop_reason,
    iter_pages,
    plan_shards,
    read_head,
    read_index,
    read_shard,
)
from electra_ray.wiki.dumpwriter import write_dump


def make_pages(n: int = 23) -> list[Page]:
    pages = []
    for i in range(1, n + 1):
        if i % 6 == 0:
            pages.append(Page(page_id=i, title=f"転送:{i}", ns=0, text="#転送 [[記事1]]", redirect="記事1"))
        elif i % 7 == 0:
            pages.append(Page(page_id=i, title=f"Template:T{i}", ns=10, text="{{{1}}} & <b>"))
        else:
            pages.append(
                Page(
                    page_id=i,
                    title=f"記事:{i}",
                    ns=0,
                    text=f"記事{i}の本文である。<ref>x</ref>\n&lt;タグ&gt;",
                )
            )
    return pages


@pytest.fixture()
def dump(tmp_path):
    pages = make_pages()
    return pages, write_dump(pages, str(tmp_path), pages_per_stream=4)


def _same(a: list[Page], b: list[Page]) -> None:
    assert [(p.page_id, p.title, p.ns, p.text, p.redirect) for p in a] == [
        (p.page_id, p.title, p.ns, p.text, p.redirect) for p in b
    ]


def test_plain_and_bz2_and_multistream_give_the_same_pages(dump):
    pages, paths = dump
    _same(list(iter_pages(paths["xml"])), pages)
    _same(list(iter_pages(paths["bz2"])), pages)
    _same(list(iter_pages(paths["multistream"], chunk_size=1000)), pages)  # many streams, tiny chunks
    index = read_index(paths["index"])
    assert list(index.page_ids) == [p.page_id for p in pages]
    head = read_head(paths["multistream"], index.offsets[0])
    for per_shard in (1, 3, 4, 5, 100):
        specs = plan_shards(index, os.path.getsize(paths["multistream"]), per_shard)
        got = [p for s in specs for p in read_shard(paths["multistream"], head, s)]
        _same(got, pages)


def test_titles_with_colons_survive_the_index(dump):
    pages, paths = dump
    index = read_index(paths["index"])
    assert len(index.offsets) == len(pages)


def test_article_filter():
    assert article_drop_reason(Page(1, "a", 0, "本文")) is None
    assert article_drop_reason(Page(1, "a", 10, "本文")) == "namespace"
    assert article_drop_reason(Page(1, "a", 0, "#REDIRECT [[b]]")) == "redirect"
    assert article_drop_reason(Page(1, "a", 0, "x", redirect="b")) == "redirect"
    assert article_drop_reason(Page(1, "a", 0, "{}", model="json")) == "model"
    assert article_drop_reason(Page(1, "a (曖昧さ回避)", 0, "x")) == "disambiguation"


def test_truncated_bz2(dump, tmp_path):
    _, paths = dump
    data = open(paths["bz2"], "rb").read()
    bad = tmp_path / "cut.xml.bz2"
    bad.write_bytes(data[: len(data) // 2])
    with pytest.raises(DumpError, match=r"cut\.xml\.bz2: truncated bz2 data.*byte 0 .*cut off at byte"):
        list(iter_pages(str(bad)))


def test_corrupt_bz2(dump, tmp_path):
    _, paths = dump
    data = bytearray(open(paths["bz2"], "rb").read())
    data[200:260] = b"\x00" * 60
    bad = tmp_path / "corrupt.xml.bz2"
    bad.write_bytes(bytes(data))
    with pytest.raises(DumpError, match=r"corrupt\.xml\.bz2: corrupt bz2 data"):
        list(iter_pages(str(bad)))


def test_not_bz2_at_all(tmp_path):
    bad = tmp_path / "plain.xml.bz2"
    bad.write_text("<mediawiki/>")
    with pytest.raises(DumpError, match=r"plain\.xml\.bz2: not a bz2 file"):
        list(iter_pages(str(bad)))


def test_empty_file(tmp_path):
    bad = tmp_path / "empty.xml"
    bad.write_bytes(b"")
    with pytest.raises(DumpError, match="empty"):
        list(iter_pages(str(bad)))


def test_malformed_xml_names_line_and_column(dump, tmp_path):
    _, paths = dump
    text = open(paths["xml"], encoding="utf-8").read().replace("</title>", "</titel>", 3)
    bad = tmp_path / "bad.xml"
    bad.write_text(text, encoding="utf-8")
    with pytest.raises(DumpError, match=r"bad\.xml: malformed XML \(line \d+, column \d+"):
        list(iter_pages(str(bad)))


def test_truncated_plain_xml(dump, tmp_path):
    _, paths = dump
    data = open(paths["xml"], "rb").read()
    bad = tmp_path / "cut.xml"
    bad.write_bytes(data[: len(data) - 500])
    with pytest.raises(DumpError, match=r"cut\.xml: malformed XML"):
        list(iter_pages(str(bad)))


def test_not_a_mediawiki_export(tmp_path):
    bad = tmp_path / "page.xml"
    bad.write_text("<html><body><page><id>1</id></page></body></html>")
    with pytest.raises(DumpError, match=r"page\.xml: not a MediaWiki XML export \(root element is <html>"):
        list(iter_pages(str(bad)))
    bz = tmp_path / "page.xml.bz2"
    bz.write_bytes(bz2.compress(b"<html>x</html>"))
    with pytest.raises(DumpError, match="not a MediaWiki XML export"):
        read_head(str(bz), os.path.getsize(bz))


def test_index_of_another_dump(dump, tmp_path):
    _, paths = dump
    other = write_dump(make_pages(40)[5:], str(tmp_path / "other"), pages_per_stream=3)
    index = read_index(other["index"])
    size = os.path.getsize(paths["multistream"])
    with pytest.raises(DumpError, match="does not (belong to|match)"):
        specs = plan_shards(index, size, 4, paths["multistream"], other["index"])
        head = read_head(paths["multistream"], index.offsets[0])
        from electra_ray.wiki.dump import check_stream_starts

        check_stream_starts(paths["multistream"], specs, other["index"])
        for s in specs:
            read_shard(paths["multistream"], head, s, other["index"])


def test_index_with_wrong_page_ids(dump, tmp_path):
    _, paths = dump
    lines = bz2.decompress(open(paths["index"], "rb").read()).decode().splitlines()
    off, pid, title = lines[5].split(":", 2)
    lines[5] = f"{off}:{int(pid) + 1000}:{title}"
    bad = tmp_path / "index.txt"
    bad.write_text("\n".join(lines) + "\n", encoding="utf-8")
    index = read_index(str(bad))
    specs = plan_shards(index, os.path.getsize(paths["multistream"]), 100)
    head = read_head(paths["multistream"], index.offsets[0])
    with pytest.raises(
        DumpError, match=r"index\.txt: the index lists pages .* the index does not match its dump"
    ):
        read_shard(paths["multistream"], head, specs[0], str(bad))


def test_malformed_index_line(tmp_path):
    bad = tmp_path / "index.txt"
    bad.write_text("100:1:a\n100:2:b\ngarbage line\n", encoding="utf-8")
    with pytest.raises(DumpError, match=r"index\.txt: line 3 is not 'offset:page_id:title'"):
        read_index(str(bad))


def test_index_offset_beyond_the_dump(dump, tmp_path):
    _, paths = dump
    bad = tmp_path / "index.txt"
    bad.write_text("100:1:a\n99999999:2:b\n", encoding="utf-8")
    with pytest.raises(DumpError, match="beyond the end"):
        plan_shards(
            read_index(str(bad)), os.path.getsize(paths["multistream"]), 10, paths["multistream"], str(bad)
        )


def test_committed_sample_dump_matches_its_sources():
    import subprocess
    import sys

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    r = subprocess.run(
        [sys.executable, os.path.join(root, "scripts", "build_sample_dump.py"), "--check"],
        capture_output=True,
        text=True,
    )
    assert r.returncode == 0, r.stdout + r.stderr
