"""The bundled sample dump: page sources in ``data/sample/pages/*.wiki`` → dump files.

A source file is a header of ``key: value`` lines (``title``, ``id``, ``ns``, optional
``redirect`` and ``model``), a line ``---``, then the page's wikitext.
"""

from __future__ import annotations

import glob
import os

from electra_ray.wiki.dump import Page

SAMPLE_PAGES_PER_STREAM = 10  # real dumps use 100; smaller streams give the sample several


def read_page_source(path: str) -> Page:
    with open(path, encoding="utf-8") as f:
        raw = f.read()
    head, sep, body = raw.partition("\n---\n")
    if not sep:
        raise ValueError(f"{path}: no '---' line between the header and the wikitext")
    meta = {}
    for n, line in enumerate(head.splitlines(), 1):
        if not line.strip():
            continue
        key, colon, value = line.partition(":")
        if not colon:
            raise ValueError(f"{path}: header line {n} is not 'key: value': {line!r}")
        meta[key.strip()] = value.strip()
    for key in ("title", "id", "ns"):
        if key not in meta:
            raise ValueError(f"{path}: the header has no '{key}:' line")
    return Page(
        page_id=int(meta["id"]),
        title=meta["title"],
        ns=int(meta["ns"]),
        text=body,
        redirect=meta.get("redirect"),
        model=meta.get("model", "wikitext"),
    )


def read_sample_pages(folder: str) -> list[Page]:
    paths = sorted(glob.glob(os.path.join(folder, "*.wiki")))
    if not paths:
        raise FileNotFoundError(f"{folder}: no *.wiki page sources")
    pages = [read_page_source(p) for p in paths]
    ids = [p.page_id for p in pages]
    if ids != sorted(ids) or len(set(ids)) != len(ids):
        raise ValueError(f"{folder}: page ids must be unique and ascending in file-name order")
    return pages
