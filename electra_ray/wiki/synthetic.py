"""A deterministic generator of large synthetic jawiki-like dumps, for benchmarks.

Pages are made from the bundled sample articles (the project's own writing): each synthetic
article takes a sample article, renames it, shuffles its body paragraphs, perturbs its numbers and
repeats sections to vary its length, so the markup mix (infoboxes, refs, tables, inline templates,
lists, reference sections) stays realistic. Redirects and other-namespace pages are mixed in at
roughly jawiki's proportions. Same seed, same bytes.
"""

from __future__ import annotations

import random
import re
from collections.abc import Iterator

from electra_ray.wiki.dump import Page

_DIGITS = re.compile(r"\d+")
_SECTION = re.compile(r"(?m)^(?===[^=])")


def _mutate(text: str, rng: random.Random, title: str, new_title: str) -> str:
    text = text.replace(title, new_title)
    text = _DIGITS.sub(lambda m: str(rng.randint(1, 10 ** min(len(m.group()), 4))), text)
    sections = _SECTION.split(text)
    if len(sections) > 2:
        lead, body, tail = sections[0], sections[1:-1], sections[-1]
        # repeat and shuffle body sections: page sizes vary like real articles (a long tail)
        extra = [rng.choice(body) for _ in range(int(rng.expovariate(1 / 2.0)))]
        body = body + extra
        rng.shuffle(body)
        text = lead + "".join(body) + tail
    return text


def synthetic_pages(seeds: list[Page], total_bytes: int, seed: int = 0) -> Iterator[Page]:
    """Yield pages until ``total_bytes`` of wikitext (UTF-8) have been produced."""
    rng = random.Random(seed)
    articles = [p for p in seeds if p.ns == 0 and p.redirect is None and p.model == "wikitext"]
    others = [p for p in seeds if p.ns != 0]
    if not articles:
        raise ValueError("synthetic_pages needs at least one article among the seed pages")
    produced = 0
    page_id = 1
    n = 0
    last_title = "記事"
    while produced < total_bytes:
        n += 1
        r = rng.random()
        if r < 0.30:
            page = Page(page_id, f"別名{n}", 0, f"#転送 [[{last_title}]]", redirect=last_title)
        elif r < 0.38 and others:
            o = rng.choice(others)
            page = Page(page_id, f"{o.title}/{n}", o.ns, o.text, redirect=o.redirect, model=o.model)
        else:
            src = rng.choice(articles)
            title = f"{src.title} ({n})"
            page = Page(page_id, title, 0, _mutate(src.text, rng, src.title, title))
            last_title = title
        produced += len(page.text.encode("utf-8"))
        yield page
        page_id += rng.randint(1, 3)
