"""Write MediaWiki XML exports in the layouts Wikimedia publishes (for the sample and benchmarks).

``write_dump(pages, folder, name)`` writes, from the same pages:

- ``{name}-pages-articles.xml``                 plain XML
- ``{name}-pages-articles.xml.bz2``             one bz2 stream
- ``{name}-pages-articles-multistream.xml.bz2`` a stream for the header, one per ``pages_per_stream``
  pages, one for the closing tag
- ``{name}-pages-articles-multistream-index.txt.bz2``  ``offset:page_id:title`` per page

Output is deterministic (bz2 carries no timestamps), so committed files can be checked against
their sources.
"""

from __future__ import annotations

import bz2
import hashlib
import os
from collections.abc import Iterable, Iterator
from xml.sax.saxutils import escape, quoteattr

from electra_ray.wiki.dump import Page

EXPORT_NS = "http://www.mediawiki.org/xml/export-0.11/"

NAMESPACES = {
    -2: "メディア",
    -1: "特別",
    0: "",
    1: "ノート",
    2: "利用者",
    3: "利用者‐会話",
    4: "Wikipedia",
    5: "Wikipedia‐ノート",
    6: "ファイル",
    7: "ファイル‐ノート",
    8: "MediaWiki",
    9: "MediaWiki‐ノート",
    10: "Template",
    11: "Template‐ノート",
    12: "Help",
    13: "Help‐ノート",
    14: "Category",
    15: "Category‐ノート",
    100: "Portal",
    102: "プロジェクト",
    828: "モジュール",
}


def header(dbname: str = "jawiki") -> str:
    ns = "\n".join(
        f'      <namespace key="{k}" case="first-letter"{" /" if not v else ""}>{v + "</namespace>" if v else ""}'
        for k, v in NAMESPACES.items()
    )
    return (
        f'<mediawiki xmlns="{EXPORT_NS}" xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance" '
        f'xsi:schemaLocation="{EXPORT_NS} http://www.mediawiki.org/xml/export-0.11.xsd" version="0.11" xml:lang="ja">\n'
        "  <siteinfo>\n"
        "    <sitename>Wikipedia</sitename>\n"
        f"    <dbname>{dbname}</dbname>\n"
        "    <base>https://ja.wikipedia.org/wiki/</base>\n"
        "    <generator>MediaWiki 1.43.0</generator>\n"
        "    <case>first-letter</case>\n"
        "    <namespaces>\n"
        f"{ns}\n"
        "    </namespaces>\n"
        "  </siteinfo>\n"
    )


FOOTER = "</mediawiki>\n"


def page_xml(p: Page, rev_id: int | None = None) -> str:
    text = p.text
    sha1 = hashlib.sha1(text.encode()).hexdigest()
    redirect = f"    <redirect title={quoteattr(p.redirect)} />\n" if p.redirect is not None else ""
    fmt = {
        "wikitext": "text/x-wiki",
        "css": "text/css",
        "json": "application/json",
        "javascript": "text/javascript",
    }.get(p.model, "text/plain")
    rid = rev_id if rev_id is not None else p.page_id * 10 + 1
    return (
        "  <page>\n"
        f"    <title>{escape(p.title)}</title>\n"
        f"    <ns>{p.ns}</ns>\n"
        f"    <id>{p.page_id}</id>\n"
        f"{redirect}"
        "    <revision>\n"
        f"      <id>{rid}</id>\n"
        f"      <parentid>{rid - 1}</parentid>\n"
        "      <timestamp>2026-10-01T00:00:00Z</timestamp>\n"
        "      <contributor>\n        <username>SampleEditor</username>\n        <id>1</id>\n      </contributor>\n"
        f"      <model>{escape(p.model)}</model>\n"
        f"      <format>{fmt}</format>\n"
        f'      <text bytes="{len(text.encode())}" xml:space="preserve">{escape(text)}</text>\n'
        f"      <sha1>{sha1}</sha1>\n"
        "    </revision>\n"
        "  </page>\n"
    )


def _chunks(pages: Iterable[Page], n: int) -> Iterator[list[Page]]:
    batch: list[Page] = []
    for p in pages:
        batch.append(p)
        if len(batch) == n:
            yield batch
            batch = []
    if batch:
        yield batch


def write_multistream(
    pages: Iterable[Page], dump_path: str, index_path: str, pages_per_stream: int = 100, level: int = 9
) -> int:
    """Write a multistream dump and its index, streaming. Returns the number of pages."""
    count = 0
    with open(dump_path, "wb") as out, bz2.open(index_path, "wt", encoding="utf-8") as idx:
        out.write(bz2.compress(header().encode(), level))
        for batch in _chunks(pages, pages_per_stream):
            offset = out.tell()
            out.write(bz2.compress("".join(page_xml(p) for p in batch).encode(), level))
            for p in batch:
                idx.write(f"{offset}:{p.page_id}:{p.title}\n")
            count += len(batch)
        out.write(bz2.compress(FOOTER.encode(), level))
    return count


def write_dump(
    pages: list[Page], folder: str, name: str = "jawiki-sample", pages_per_stream: int = 100
) -> dict[str, str]:
    """Write all four files (plain, bz2, multistream, index); returns their paths by kind."""
    os.makedirs(folder, exist_ok=True)
    base = os.path.join(folder, f"{name}-pages-articles")
    xml = header() + "".join(page_xml(p) for p in pages) + FOOTER
    paths = {
        "xml": base + ".xml",
        "bz2": base + ".xml.bz2",
        "multistream": base + "-multistream.xml.bz2",
        "index": base + "-multistream-index.txt.bz2",
    }
    with open(paths["xml"], "w", encoding="utf-8") as f:
        f.write(xml)
    with open(paths["bz2"], "wb") as f:
        f.write(bz2.compress(xml.encode(), 9))
    write_multistream(pages, paths["multistream"], paths["index"], pages_per_stream)
    return paths
