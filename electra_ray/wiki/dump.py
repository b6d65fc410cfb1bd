"""MediaWiki XML dumps: pages from ``.xml``, ``.xml.bz2`` and multistream ``.xml.bz2`` + index.

Two ways in, same pages out:

- :func:`iter_pages` streams a whole dump (plain or bz2, one or many bz2 streams) with bounded
  memory: chunks → incremental bz2 decompression → incremental XML parsing, page by page.
- With a multistream index, :func:`plan_shards` cuts the dump into byte ranges of whole bz2 streams
  (each shard = ``pages_per_shard`` consecutive index entries, so shard boundaries depend on the
  data, never on the worker count) and :func:`read_shard` reads one range with one ranged read and
  parses its pages, checking them against the index.

Every error names the file and the position: :class:`DumpError`.
"""

from __future__ import annotations

import bz2
import re
import xml.etree.ElementTree as ET
from array import array
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

from electra_ray import storage
from electra_ray.wiki.clean import is_disambiguation

BZ2_MAGIC = b"BZh"
_ROOT_START = re.compile(rb"<mediawiki\b[^>]*>")
_EXPORT_NS = "http://www.mediawiki.org/xml/export-"


class DumpError(ValueError):
    """The dump or its index is unreadable; the message names the file and the position."""


@dataclass
class Page:
    page_id: int
    title: str
    ns: int
    text: str
    redirect: str | None = None
    model: str = "wikitext"


# ---------------------------------------------------------------------------------------------
# decompression


def is_bz2(uri: str) -> bool:
    """Whether the file starts with the bz2 magic (an empty or tiny file does not)."""
    n = storage.size(uri)
    return n >= len(BZ2_MAGIC) and storage.read_range(uri, 0, len(BZ2_MAGIC)) == BZ2_MAGIC


def bz2_streams(chunks: Iterable[tuple[int, bytes]], source: str) -> Iterator[bytes]:
    """Decompress a sequence of concatenated bz2 streams, chunk by chunk.

    ``chunks`` yields (byte offset in ``source``, data). Raises DumpError on corrupt data and on a
    stream cut short (a truncated download).
    """
    d = bz2.BZ2Decompressor()
    stream_start = None  # offset where the current stream began (None: no stream open)
    last_end = 0
    for offset, data in chunks:
        pos = offset
        while data:
            if stream_start is None:
                if not data.startswith(BZ2_MAGIC[: len(data)]):
                    raise DumpError(
                        f"{source}: no bz2 stream starts at byte {pos} (corrupt file, or not bz2?)"
                    )
                stream_start = pos
            try:
                out = d.decompress(data)
            except OSError as e:
                raise DumpError(
                    f"{source}: corrupt bz2 data in the stream starting at byte {stream_start}: {e}"
                ) from e
            if out:
                yield out
            if d.eof:
                rest = d.unused_data
                pos += len(data) - len(rest)
                data = rest
                d = bz2.BZ2Decompressor()
                stream_start = None
            else:
                pos += len(data)
                data = b""
        last_end = pos
    if stream_start is not None:
        raise DumpError(
            f"{source}: truncated bz2 data: the stream starting at byte {stream_start} is cut off at byte {last_end} "
            "(incomplete download?)"
        )


def decompressed_chunks(uri: str, chunk_size: int = 4 << 20) -> Iterator[bytes]:
    """The dump's XML bytes, streamed, whether the file is plain or bz2."""
    chunks = storage.iter_chunks(uri, chunk_size)
    first = next(chunks, None)
    if first is None:
        raise DumpError(f"{uri}: the file is empty")

    def again() -> Iterator[tuple[int, bytes]]:
        yield first
        yield from chunks

    if first[1].startswith(BZ2_MAGIC):
        yield from bz2_streams(again(), uri)
    elif uri.endswith(".bz2"):
        raise DumpError(f"{uri}: not a bz2 file (it does not start with 'BZh')")
    else:
        for _, data in again():
            yield data


# ---------------------------------------------------------------------------------------------
# XML → pages


def _local(tag: str) -> str:
    return tag.rpartition("}")[2]


class PageParser:
    """Incremental XML parser that yields completed <page> elements as :class:`Page`."""

    def __init__(self, source: str, prefix: bytes | None = None, where: str = "") -> None:
        self.source = source
        self.where = where
        self._parser = ET.XMLPullParser(events=("start", "end"))
        self._root: ET.Element | None = None
        self._depth = 0
        self._checked = False
        if prefix is not None:
            self.feed(prefix)

    def _error(self, e: ET.ParseError) -> DumpError:
        line, col = getattr(e, "position", (0, 0))
        at = f"{self.where}, " if self.where else ""
        return DumpError(f"{self.source}: malformed XML ({at}line {line}, column {col} of the XML): {e}")

    def feed(self, data: bytes) -> list[Page]:
        try:
            self._parser.feed(data)
            return self._collect()
        except ET.ParseError as e:
            raise self._error(e) from e

    def close(self) -> list[Page]:
        try:
            self._parser.close()
            return self._collect()
        except ET.ParseError as e:
            raise self._error(e) from e

    def _collect(self) -> list[Page]:
        pages = []
        for event, elem in self._parser.read_events():
            if event == "start":
                if self._root is None:
                    self._root = elem
                    if not (_local(elem.tag) == "mediawiki" and elem.tag.startswith("{" + _EXPORT_NS)):
                        raise DumpError(
                            f"{self.source}: not a MediaWiki XML export (root element is <{_local(elem.tag)}>, "
                            f"namespace {elem.tag.partition('}')[0].lstrip('{') or 'none'})"
                        )
                continue
            if _local(elem.tag) == "page":
                pages.append(self._page(elem))
                self._root.clear()
        return pages

    def _page(self, elem: ET.Element) -> Page:
        title, ns, pid, redirect, model, text = "", None, None, None, "wikitext", ""
        for child in elem:
            tag = _local(child.tag)
            if tag == "title":
                title = child.text or ""
            elif tag == "ns":
                ns = child.text
            elif tag == "id":
                pid = child.text
            elif tag == "redirect":
                redirect = child.get("title", "")
            elif tag == "revision":
                for r in child:
                    rt = _local(r.tag)
                    if rt == "text":
                        text = r.text or ""
                    elif rt == "model":
                        model = r.text or "wikitext"
        try:
            page_id = int(pid)  # type: ignore[arg-type]
            ns_i = int(ns) if ns is not None else 0
        except (TypeError, ValueError) as e:
            raise DumpError(
                f"{self.source}: a <page> ({self.where or 'title ' + repr(title)}) has no valid <id>/<ns>"
            ) from e
        return Page(page_id=page_id, title=title, ns=ns_i, text=text, redirect=redirect, model=model)


def check_root(uri: str, chunk_size: int = 1 << 16) -> None:
    """Read only the start of the dump (decompressing as little as it takes) and raise DumpError
    naming the file when its root element is not a MediaWiki export's: a wrong file fails in a
    second, before a cluster starts on it."""
    parser = PageParser(uri)
    for data in decompressed_chunks(uri, chunk_size):
        parser.feed(data)
        if parser._root is not None:
            return
    parser.close()
    raise DumpError(f"{uri}: not a MediaWiki XML export (no root element)")


def iter_pages(uri: str, chunk_size: int = 4 << 20) -> Iterator[Page]:
    """Every page of a dump, in order, streamed with bounded memory."""
    parser = PageParser(uri)
    for data in decompressed_chunks(uri, chunk_size):
        yield from parser.feed(data)
    yield from parser.close()


# ---------------------------------------------------------------------------------------------
# which pages are articles


def article_drop_reason(page: Page) -> str | None:
    """None for a page to keep; else why it is dropped (namespace, redirect, model, disambiguation)."""
    if page.ns != 0:
        return "namespace"
    if page.redirect is not None or page.text[:10].lstrip().upper().startswith(("#REDIRECT", "#転送")):
        return "redirect"
    if page.model != "wikitext":
        return "model"
    if is_disambiguation(page.title, page.text):
        return "disambiguation"
    return None


# ---------------------------------------------------------------------------------------------
# multistream index and shards


@dataclass
class Index:
    """The multistream index: page ids and the offsets of the bz2 streams that hold them."""

    offsets: array  # array('q'): 8 bytes an entry, ~40 MB for all of jawiki's ~2.5M pages
    page_ids: array


def read_index(uri: str) -> Index:
    """Parse ``offset:page_id:title`` lines (bz2 or plain). Titles may contain colons."""
    offsets = array("q")
    ids = array("q")
    if is_bz2(uri):
        chunks = bz2_streams(storage.iter_chunks(uri), uri)
    else:
        chunks = (c for _, c in storage.iter_chunks(uri))
    buf = b""
    lineno = 0

    def take(line: bytes) -> None:
        nonlocal lineno
        lineno += 1
        if not line.strip():
            return
        parts = line.split(b":", 2)
        try:
            off, pid = int(parts[0]), int(parts[1])
            if len(parts) != 3:
                raise ValueError
        except (ValueError, IndexError):
            raise DumpError(
                f"{uri}: line {lineno} is not 'offset:page_id:title': {line[:80].decode('utf-8', 'replace')!r}"
            ) from None
        if offsets and off < offsets[-1]:
            raise DumpError(
                f"{uri}: line {lineno}: offset {off} is smaller than the previous one ({offsets[-1]})"
            )
        offsets.append(off)
        ids.append(pid)

    for chunk in chunks:
        buf += chunk
        lines = buf.split(b"\n")
        buf = lines.pop()
        for line in lines:
            take(line)
    if buf:
        take(buf)
    if not offsets:
        raise DumpError(f"{uri}: the index is empty")
    return Index(offsets, ids)


@dataclass
class ShardSpec:
    """One shard: consecutive index entries [first, first+count) and the bytes that hold them."""

    shard: int
    byte_start: int
    byte_end: int
    skip: int  # pages in the first stream that belong to the previous shard
    page_ids: list[int] = field(default_factory=list)


def plan_shards(
    index: Index, dump_size: int, pages_per_shard: int, dump: str = "", index_uri: str = ""
) -> list[ShardSpec]:
    """Cut the index into shards of ``pages_per_shard`` entries, each a range of whole streams."""
    offs, ids = index.offsets, index.page_ids
    n = len(offs)
    if offs[-1] >= dump_size:
        raise DumpError(
            f"{index_uri}: offset {offs[-1]} (page {ids[-1]}) lies beyond the end of {dump} ({dump_size} bytes): "
            "the index does not belong to this dump"
        )
    # next_stream[o] = the offset of the stream after the one at o
    distinct = sorted(set(offs))
    nxt = {o: (distinct[i + 1] if i + 1 < len(distinct) else dump_size) for i, o in enumerate(distinct)}
    specs = []
    group_first = 0  # index of the first entry in the current entry's stream
    starts = set(range(0, n, pages_per_shard))
    first_of: dict[int, int] = {}
    for i in range(n):
        if i and offs[i] != offs[i - 1]:
            group_first = i
        if i in starts:
            first_of[i] = group_first
    for k, lo in enumerate(range(0, n, pages_per_shard)):
        hi = min(lo + pages_per_shard, n)
        specs.append(ShardSpec(k, offs[lo], nxt[offs[hi - 1]], lo - first_of[lo], list(ids[lo:hi])))
    return specs


def read_head(dump: str, first_offset: int, index_uri: str = "the index") -> bytes:
    """The dump's root start tag (``<mediawiki xmlns=…>``), from the stream before the first page."""
    if first_offset <= 0:
        raise DumpError(
            f"{index_uri}: the first offset is 0; a multistream dump starts with a <siteinfo> stream"
        )
    raw = storage.read_range(dump, 0, first_offset)
    try:
        xml = b"".join(bz2_streams([(0, raw)], dump))
    except DumpError as e:
        if storage.read_range(dump, 0, 3) != BZ2_MAGIC:
            raise
        raise DumpError(
            f"{index_uri}: the first offset {first_offset} is not a bz2 stream boundary of {dump}: "
            "the index does not belong to this dump"
        ) from e
    m = _ROOT_START.search(xml)
    if not m or _EXPORT_NS.encode() not in m.group():
        raise DumpError(
            f'{dump}: not a MediaWiki XML export (no <mediawiki xmlns="{_EXPORT_NS}…"> in its first stream)'
        )
    return m.group()


def check_stream_starts(dump: str, specs: list[ShardSpec], index_uri: str) -> None:
    """Each shard's first offset must start a bz2 stream, else the index belongs to another dump."""
    for s in specs:
        if storage.read_range(dump, s.byte_start, s.byte_start + 3) != BZ2_MAGIC:
            raise DumpError(
                f"{index_uri}: offset {s.byte_start} (page {s.page_ids[0]}) does not start a bz2 stream in {dump}: "
                "the index does not belong to this dump"
            )


def read_shard(dump: str, head: bytes, spec: ShardSpec, index_uri: str = "") -> list[Page]:
    """The pages of one shard: one ranged read, decompression, parsing, checked against the index."""
    raw = storage.read_range(dump, spec.byte_start, spec.byte_end)
    where = f"bz2 streams at bytes {spec.byte_start}-{spec.byte_end}"
    parser = PageParser(dump, prefix=head, where=where)
    pages: list[Page] = []
    for data in bz2_streams([(spec.byte_start, raw)], dump):
        pages.extend(parser.feed(data))
    want = spec.page_ids
    got = pages[spec.skip : spec.skip + len(want)]
    if len(got) != len(want) or any(p.page_id != i for p, i in zip(got, want)):
        found = [p.page_id for p in pages[spec.skip : spec.skip + 3]]
        raise DumpError(
            f"{index_uri or dump}: the index lists pages {want[:3]}… ({len(want)} pages) at bytes "
            f"{spec.byte_start}-{spec.byte_end} of {dump}, but the dump has {found}… ({len(pages) - spec.skip} pages) there: "
            "the index does not match its dump"
        )
    return got


def count_drops(pages: Iterable[Page]) -> tuple[list[Page], Counter]:
    kept, drops = [], Counter()
    for p in pages:
        reason = article_drop_reason(p)
        if reason:
            drops[reason] += 1
        else:
            kept.append(p)
    return kept, drops
