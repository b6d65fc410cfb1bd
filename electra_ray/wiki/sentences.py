"""Paragraphs → sentences: bracket-aware splitting, NFKC, filters that count every drop.

Splitting happens on the text as written, before NFKC, so that the full-width ``！``/``？`` a
Japanese writer uses to end a sentence stay distinct from the ASCII ``!`` of ``Yahoo!``: a
sentence ends after ``。`` (or ``｡``) and after a run of full-width ``！``/``？``, but only
outside brackets and quotes (``「吾輩は猫である。名前はまだ無い。」という…`` is one sentence).
A paragraph whose brackets never close would otherwise become one giant "sentence": any piece
longer than the length limit is split again ignoring brackets.
"""

from __future__ import annotations

import re
import unicodedata
from collections import Counter
from collections.abc import Iterable

from electra_ray.config import CleanConfig
from electra_ray.wiki.clean import HOLE, Unit

_OPENERS = "「『（(【〔［[｛{〈《“‘"
_CLOSERS = "」』）)】〕］]｝}〉》”’"
_ENDERS = "。｡！？"
_SCAN = re.compile("[" + re.escape(_OPENERS + _CLOSERS + _ENDERS) + "]")
_FLAT = re.compile(r"[^。｡！？]*(?:[。｡]|[！？]+)|[^。｡！？]+$")

# Markup that must never reach the corpus (checked after NFKC).
_LEAK = re.compile(
    r"\{\{|\}\}|\[\[|\]\]|\{\||\|\}|\||''|</?[a-zA-Z][a-zA-Z0-9]*(?:\s[^<>]*)?/?>|&[a-zA-Z]+;|&#\d+;|__[A-Z]+__|=="
)
_TERMINAL = ("。", "!", "?", "」", "』", ")")
_SPACES = re.compile(r"\s+")


def split_sentences(text: str) -> list[str]:
    """Split on sentence enders outside brackets. Pieces keep their ender; whitespace is stripped."""
    out: list[str] = []
    depth = 0
    start = 0
    n = len(text)
    for m in _SCAN.finditer(text):
        c = m.group()
        i = m.start()
        if c in _OPENERS:
            depth += 1
        elif c in _CLOSERS:
            if depth:
                depth -= 1
        elif depth == 0 and i >= start:
            end = i + 1
            if c in "！？":
                while end < n and text[end] in "！？":
                    end += 1
            piece = text[start:end].strip()
            if piece:
                out.append(piece)
            start = end
    tail = text[start:].strip()
    if tail:
        out.append(tail)
    return out


def split_flat(text: str) -> list[str]:
    """Split on every ender, ignoring brackets (the fallback for unbalanced paragraphs)."""
    return [s.strip() for s in _FLAT.findall(text) if s.strip()]


def normalize(sentence: str) -> str:
    """NFKC, then whitespace runs collapse to one space."""
    s = unicodedata.normalize("NFKC", sentence)
    if "  " in s or "\t" in s or "\u3000" in s:
        s = _SPACES.sub(" ", s)
    return s.strip()


def sentences_of(units: Iterable[Unit], cfg: CleanConfig, drops: Counter) -> list[str]:
    """The kept sentences of a page's units, in order; ``drops`` counts the rest by reason."""
    kept: list[str] = []
    lo, hi = cfg.min_sentence_chars, cfg.max_sentence_chars
    for unit in units:
        if unit.is_list and not cfg.keep_list_items:
            drops["list_item"] += 1
            continue
        pieces = split_sentences(unit.text)
        if any(len(p) > hi for p in pieces):
            pieces = [q for p in pieces for q in (split_flat(p) if len(p) > hi else (p,))]
        for piece in pieces:
            if HOLE in piece:
                drops["hole"] += 1
                continue
            s = normalize(piece)
            if not s:
                continue
            if len(s) < lo:
                drops["too_short"] += 1
            elif len(s) > hi:
                drops["too_long"] += 1
            elif _LEAK.search(s):
                drops["markup"] += 1
            elif unit.is_list and not s.endswith(_TERMINAL):
                drops["list_fragment"] += 1
            else:
                kept.append(s)
    return kept
