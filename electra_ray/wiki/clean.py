"""Wikitext → plain-text paragraphs, with the visible text of prose templates kept.

Design (speed and quality both matter; the cleaner is the corpus stage's hot loop):

1. Cheap pre-passes cut what is never prose before any parsing: comments, ``<ref>`` and the other
   dropped tags, tables (``{| … |}``, nested), and the reference sections (脚注, 出典, 参考文献,
   関連項目, 外部リンク …, from ``tables.json``) with everything under them. Formulas (``<math>``)
   become a HOLE mark.
2. One linear pass parses templates (``{{ }}``, ``{{{ }}}``) and links (``[[ ]]``) into a small tree,
   with MediaWiki's brace-run rules; unbalanced markup is kept as literal text (and later caught
   by the leak check) instead of swallowing the rest of the page.
3. Rendering is lazy: a template's arguments are rendered only when its rule (``tables.json``)
   needs them, so an infobox costs its parse and nothing more. A template with no rule renders
   a HOLE: a line made only of holes was a block template (infobox, navbox) and vanishes; a
   sentence that contains one would be broken and is dropped by ``sentences.py``, counted.
4. A line pass turns what is left into units: prose paragraphs and list items.

The output keeps the HOLE character (``\\x00``, which XML cannot carry, so it never occurs in a
dump) for the sentence stage to see.
"""

from __future__ import annotations

import html
import json
import re
import time
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources

HOLE = "\x00"


class PageTimeout(Exception):
    """Cleaning a page exceeded its time budget."""


# ---------------------------------------------------------------------------------------------
# the data tables


@dataclass(frozen=True)
class Tables:
    render: dict[str, str]
    drop: frozenset[str]
    drop_prefixes: tuple[str, ...]
    drop_suffixes: tuple[str, ...]
    drop_magic: frozenset[str]
    languages: dict[str, str]
    drop_sections: frozenset[str]
    file_ns: frozenset[str]
    category_ns: frozenset[str]
    interwiki_extra: frozenset[str]
    drop_tags: tuple[str, ...]
    hole_tags: tuple[str, ...]
    disambiguation_templates: frozenset[str]
    disambiguation_title_suffixes: tuple[str, ...]


def normalize_template_name(name: str) -> str:
    """MediaWiki's rules: underscores are spaces, spaces collapse, the first letter is case-insensitive."""
    name = " ".join(name.replace("_", " ").split())
    if name[:9].lower() == "template:":
        name = name[9:].strip()
    elif name.startswith("テンプレート:"):
        name = name[7:].strip()
    return name[:1].upper() + name[1:]


@lru_cache(maxsize=1)
def load_tables() -> Tables:
    raw = json.loads(resources.files("electra_ray.wiki").joinpath("tables.json").read_text("utf-8"))
    norm = normalize_template_name
    return Tables(
        render={norm(k): v for k, v in raw["render"].items()},
        drop=frozenset(norm(k) for k in raw["drop"]),
        drop_prefixes=tuple(raw["drop_prefixes"]),
        drop_suffixes=tuple(raw["drop_suffixes"]),
        drop_magic=frozenset(k.upper() for k in raw["drop_magic"]),
        languages=dict(raw["languages"]),
        drop_sections=frozenset(s.lower() for s in raw["drop_sections"]),
        file_ns=frozenset(raw["namespaces"]["file"]),
        category_ns=frozenset(raw["namespaces"]["category"]),
        interwiki_extra=frozenset(raw["namespaces"]["interwiki_extra"]),
        drop_tags=tuple(raw["drop_tags"]),
        hole_tags=tuple(raw["hole_tags"]),
        disambiguation_templates=frozenset(norm(k) for k in raw["disambiguation"]["templates"]),
        disambiguation_title_suffixes=tuple(raw["disambiguation"]["title_suffixes"]),
    )


# ---------------------------------------------------------------------------------------------
# pre-passes (regular expressions, compiled once)

_COMMENT = re.compile(r"<!--.*?(?:-->|\Z)", re.S)
_HEADING = re.compile(r"^(={1,6})[ \t]*(.+?)[ \t]*\1[ \t]*$", re.M)
_BR = re.compile(r"<br\s*/?>|</br>", re.I)
_NOWIKI = re.compile(r"<nowiki\s*>(.*?)</nowiki\s*>|<nowiki\s*/>", re.S | re.I)
_RUBY_EXTRA = re.compile(r"<(rt|rp)\b[^>]*>.*?</\1\s*>", re.S | re.I)
_ANY_TAG = re.compile(r"</?[a-zA-Z][a-zA-Z0-9]*(?:\s[^<>]*)?/?>")
_EXT_LINK = re.compile(r"\[(?:https?:|ftp:)?//[^\s\]\[<>]+(?:\s+([^\]\n]*))?\]")
_QUOTES = re.compile(r"'{2,}")
_BEHAVIOUR = re.compile(r"__[A-Z目次強制新しい節リンク非表示]+__")
_NOWIKI_ESCAPE = str.maketrans(
    {"[": "［", "]": "］", "{": "｛", "}": "｝", "|": "｜", "<": "＜", ">": "＞", "'": "＇", "=": "＝"}
)


def _tag_res(names: tuple[str, ...]) -> tuple[re.Pattern, re.Pattern]:
    alt = "|".join(sorted(names, key=len, reverse=True))
    paired = re.compile(rf"<({alt})\b(?:[^>]*[^/>])?>.*?</\1\s*>", re.S | re.I)
    single = re.compile(rf"<(?:{alt})\b[^>]*/>", re.I)
    return paired, single


@lru_cache(maxsize=1)
def _compiled() -> tuple[re.Pattern, re.Pattern, re.Pattern, re.Pattern]:
    t = load_tables()
    dp, ds = _tag_res(t.drop_tags)
    hp, hs = _tag_res(t.hole_tags)
    return dp, ds, hp, hs


def _drop_tables(text: str) -> str:
    """Remove ``{| … |}`` tables (nested) line by line; keep what follows a closing ``|}`` on its line."""
    out: list[str] = []
    depth = 0
    for line in text.split("\n"):
        s = line.lstrip(" :")
        if s.startswith("{|"):
            depth += 1
            continue
        if depth:
            if s.startswith("|}"):
                depth -= 1
                rest = s[2:]
                if depth == 0 and rest.strip():
                    out.append(rest)
            continue
        out.append(line)
    return "\n".join(out)


def _drop_sections(text: str, tables: Tables) -> str:
    """Cut each reference-type section (heading in the table) up to the next heading of its level or higher."""
    cut: list[tuple[int, int]] = []
    heads = [(m.start(), len(m.group(1)), m.group(2)) for m in _HEADING.finditer(text)]
    i = 0
    while i < len(heads):
        start, level, title = heads[i]
        title = _QUOTES.sub("", title).strip().lower()
        if title in tables.drop_sections:
            j = i + 1
            while j < len(heads) and heads[j][1] > level:
                j += 1
            end = heads[j][0] if j < len(heads) else len(text)
            cut.append((start, end))
            i = j
        else:
            i += 1
    if not cut:
        return text
    parts, pos = [], 0
    for a, b in cut:
        parts.append(text[pos:a])
        pos = b
    parts.append(text[pos:])
    return "".join(parts)


def prepass(text: str, tables: Tables, holes: dict[str, int] | None = None) -> str:
    """Cut comments, dropped tags, tables and reference sections; formulas become HOLE (counted in ``holes``)."""

    def hole(m: re.Match) -> str:
        if holes is not None:
            name = "<" + (m.group(1) if m.re.groups else m.group().strip("</>").split()[0]).lower() + ">"
            holes[name] = holes.get(name, 0) + 1
        return HOLE

    if "<!--" in text:
        text = _COMMENT.sub("", text)
    if "<" in text:
        drop_paired, drop_single, hole_paired, hole_single = _compiled()
        text = drop_single.sub("", text)
        text = drop_paired.sub("", text)
        text = hole_paired.sub(hole, text)
        text = hole_single.sub(hole, text)
        if "nowiki" in text:
            text = _NOWIKI.sub(lambda m: (m.group(1) or "").translate(_NOWIKI_ESCAPE), text)
        if "<r" in text:
            text = _RUBY_EXTRA.sub("", text)
        text = _BR.sub("\n\n", text)  # a visible line break ends the paragraph
        text = _ANY_TAG.sub("", text)
    if "{|" in text:
        text = _drop_tables(text)
    if "==" in text:
        text = _drop_sections(text, tables)
    return text


# ---------------------------------------------------------------------------------------------
# the template / link parser

_TOKEN = re.compile(r"\{\{+|\}\}+|\[\[|\]\]|\|")

# Node kinds. A node is a tuple (kind, parts); parts is a list of pieces lists; a piece is a str
# or a node. Tuples keep the hot loop cheap.
TPL, PARAM, LINK = 1, 2, 3
_OPEN = {TPL: "{{", PARAM: "{{{", LINK: "[["}
_CLOSE = {TPL: "}}", PARAM: "}}}", LINK: "]]"}


def parse(text: str, deadline: float | None = None) -> list:
    """Parse templates, parameters and links into a tree; everything else stays text.

    Unbalanced markup never swallows text: an unclosed opener becomes literal text again.
    Linear in the text, however deep the unclosed markup: an unclosed frame is handed to its parent
    as one group (a list among the pieces), not copied, and the groups are spread out once, when
    the node holding them closes (or at the end); the open frames of each kind are counted, so
    finding whether a closer has an opener is not a walk down the stack.
    """
    # stack of [kind, parts]; the root has kind 0. opened[kind]: frames of that kind on the stack
    root: list = [0, [[]]]
    stack = [root]
    opened = [0, 0, 0, 0]
    pos = 0
    n = 0
    for m in _TOKEN.finditer(text):
        start = m.start()
        top = stack[-1]
        if start > pos:
            top[1][-1].append(text[pos:start])
        tok = m.group()
        pos = m.end()
        n += 1
        if deadline is not None and not n & 1023 and time.monotonic() > deadline:
            raise PageTimeout()
        c = tok[0]
        if c == "|":
            if top[0]:
                top[1].append([])
            else:
                top[1][-1].append("|")
        elif c == "[":
            if tok == "[[":
                stack.append([LINK, [[]]])
                opened[LINK] += 1
        elif c == "]":
            _close(stack, opened, LINK)
        elif c == "{":
            k = len(tok)
            if k % 2 == 1 and k != 3:
                top[1][-1].append("{")
                k -= 1
            if k == 3:
                stack.append([PARAM, [[]]])
                opened[PARAM] += 1
            else:
                for _ in range(k // 2):
                    stack.append([TPL, [[]]])
                opened[TPL] += k // 2
        else:  # closing braces
            k = len(tok)
            while k >= 2:
                top = stack[-1]
                if top[0] == PARAM and k >= 3:
                    _close(stack, opened, PARAM)
                    k -= 3
                elif opened[TPL]:
                    _close(stack, opened, TPL)
                    k -= 2
                else:
                    break
            if k:
                stack[-1][1][-1].append("}" * k)
    if pos < len(text):
        stack[-1][1][-1].append(text[pos:])
    while len(stack) > 1:
        _unwind_top(stack, opened)
    return _spread(root[1][0])


def _unwind_top(stack: list, opened: list[int]) -> None:
    """An unclosed frame becomes literal text in its parent: one group [opener, part, "|", part …]."""
    kind, parts = stack.pop()
    opened[kind] -= 1
    group: list = [_OPEN[kind]]
    for i, part in enumerate(parts):
        if i:
            group.append("|")
        group.append(part)
    stack[-1][1][-1].append(group)


def _close(stack: list, opened: list[int], kind: int) -> None:
    if not opened[kind]:
        stack[-1][1][-1].append(_CLOSE[kind])
        return
    while stack[-1][0] != kind:
        _unwind_top(stack, opened)
    _, parts = stack.pop()
    opened[kind] -= 1
    stack[-1][1][-1].append((kind, [_spread(part) for part in parts]))


def _spread(pieces: list) -> list:
    """The pieces with their groups (nested lists, from unclosed frames) spread out in order,
    without recursion (groups nest as deep as the unclosed markup)."""
    if not any(type(p) is list for p in pieces):
        return pieces
    out: list = []
    todo = [iter(pieces)]
    while todo:
        for p in todo[-1]:
            if type(p) is list:
                todo.append(iter(p))
                break
            out.append(p)
        else:
            todo.pop()
    return out


# ---------------------------------------------------------------------------------------------
# rendering


_IW_CODE = re.compile(r"^[a-z]{2,3}(?:-[a-z]{2,8})*$")


class Renderer:
    """Renders a parsed tree to text with the rules of ``tables.json``."""

    def __init__(self, tables: Tables, title: str = "", deadline: float | None = None) -> None:
        self.t = tables
        self.title = title
        self.deadline = deadline
        self.holes: dict[str, int] = {}

    def text(self, pieces: list) -> str:
        out = []
        for p in pieces:
            if isinstance(p, str):
                out.append(p)
            elif p[0] == TPL:
                out.append(self.template(p[1]))
            elif p[0] == LINK:
                out.append(self.link(p[1]))
            else:  # {{{param}}}: only meaningful inside template pages
                out.append(self._hole("{{{param}}}"))
        return "".join(out)

    def _hole(self, name: str) -> str:
        self.holes[name] = self.holes.get(name, 0) + 1
        return HOLE

    # -- templates -----------------------------------------------------------------------------

    def template(self, parts: list) -> str:
        if self.deadline is not None and time.monotonic() > self.deadline:
            raise PageTimeout()
        raw_name = self.text(parts[0]).strip()
        if not raw_name:
            return ""
        t = self.t
        if ":" in raw_name:
            head, _, rest = raw_name.partition(":")
            head_u = head.strip().upper()
            if head_u in t.drop_magic or head.strip() in t.drop_magic:
                return ""
            if head_u in ("SUBST", "SAFESUBST"):
                raw_name = rest
            elif raw_name.startswith("#"):
                return self._hole(head.strip())
        name = normalize_template_name(raw_name)
        rule = t.render.get(name)
        if rule is not None:
            return self._apply(rule, name, parts[1:])
        if name in t.drop:
            return ""
        lower = name.lower()
        if lower.startswith("lang-"):
            return self._lang_xx(lower[5:], parts[1:])
        if name.startswith(t.drop_prefixes) or name.endswith(t.drop_suffixes):
            return ""
        return self._hole(name)

    def _args(self, parts: list) -> tuple[list[list], dict[str, list]]:
        positional: list[list] = []
        named: dict[str, list] = {}
        for pieces in parts:
            first = pieces[0] if pieces else ""
            if isinstance(first, str) and "=" in first:
                key, _, val = first.partition("=")
                named[key.strip()] = ([val] if val else []) + pieces[1:]
            else:
                positional.append(pieces)
        return positional, named

    def _arg(self, parts: list, i: int) -> str | None:
        positional, named = self._args(parts)
        if str(i) in named:
            return self.text(named[str(i)]).strip()
        if len(positional) >= i:
            return self.text(positional[i - 1]).strip()
        return None

    def _apply(self, rule: str, name: str, args: list) -> str:
        kind, _, param = rule.partition(":")
        if kind == "literal":
            return param
        if kind == "title":
            return self.title
        if kind == "year":
            v = self._arg(args, 1)
            return f"{v}年" if v else self._hole(name)
        if kind == "arg":
            v = self._arg(args, int(param))
            return v if v is not None else self._hole(name)
        if kind == "label_or_arg":
            positional, named = self._args(args)
            for key in ("label", "表示名", "表示"):
                if key in named:
                    return self.text(named[key]).strip()
            v = self._arg(args, int(param))
            return v if v is not None else self._hole(name)
        if kind == "reading":
            base, reading = self._arg(args, 1), self._arg(args, 2)
            if base is None:
                return self._hole(name)
            return f"{base}（{reading}）" if reading else base
        if kind == "convert":
            return self._convert(name, args)
        if kind == "date":
            k = int(param)
            y, mo, d = (self._arg(args, k + j) for j in range(3))
            if not y:
                return self._hole(name)
            out = f"{y}年"
            if mo:
                out += f"{mo}月"
                if d:
                    out += f"{d}日"
            return out
        return self._hole(name)

    def _lang_xx(self, code: str, args: list) -> str:
        positional, _ = self._args(args)
        if not positional:
            return self._hole("Lang-" + code)
        text = self.text(
            positional[-1] if len(positional) > 1 and code.endswith("-short") else positional[0]
        ).strip()
        lang = self.t.languages.get(code)
        return f"{lang}: {text}" if lang else text

    _RANGE_WORDS = {
        "to": "-",
        "-": "-",
        "–": "-",
        "~": "-",
        "～": "-",
        "and": "and",
        "&": "&",
        "or": "or",
        "x": "×",
        "by": "×",
        "+": "+",
    }

    def _convert(self, name: str, args: list) -> str:
        positional, _ = self._args(args)
        vals = [self.text(p).strip() for p in positional]
        if len(vals) < 2 or not vals[0]:
            return self._hole(name)
        if len(vals) >= 4 and vals[1] in self._RANGE_WORDS:
            return f"{vals[0]} {self._RANGE_WORDS[vals[1]]} {vals[2]} {vals[3]}"
        return f"{vals[0]} {vals[1]}"

    # -- links ---------------------------------------------------------------------------------

    def link(self, parts: list) -> str:
        target = self.text(parts[0]).strip()
        visible = target.startswith(":")
        if visible:
            target = target[1:].lstrip()
        if ":" in target and not visible:
            prefix = target.split(":", 1)[0].strip().lower()
            t = self.t
            if prefix in t.file_ns or prefix in t.category_ns:
                return ""
            if _IW_CODE.match(prefix) or prefix in t.interwiki_extra:
                return ""
        if len(parts) > 1:
            label = "|".join(self.text(p) for p in parts[1:]).strip()
            if label:
                return label
            # pipe trick: [[Foo (bar)|]] shows "Foo"
            base = target.split(":", 1)[-1]
            return re.sub(r"\s*[（(][^（()）]*[)）]\s*$", "", base)
        return target


# ---------------------------------------------------------------------------------------------
# lines → units


@dataclass
class Unit:
    """A paragraph of prose or a list item, with HOLE marks where text could not be rendered."""

    text: str
    is_list: bool = False


def _join(a: str, b: str) -> str:
    if not a:
        return b
    if a[-1].isascii() and a[-1].isalnum() and b[:1].isascii() and b[:1].isalnum():
        return a + " " + b
    return a + b


def to_units(text: str) -> list[Unit]:
    units: list[Unit] = []
    para = ""

    def flush() -> None:
        nonlocal para
        if para.strip(" \t" + HOLE):
            units.append(Unit(para.strip()))
        para = ""

    for line in text.split("\n"):
        s = line.strip()
        if not s:
            flush()
            continue
        c = s[0]
        if c == "=" and s.endswith("="):
            flush()
            continue
        if c in "*#:;":
            flush()
            body = s.lstrip("*#:; \t")
            if c == ";" and ":" in body:
                term, _, definition = body.partition(":")
                for piece in (term, definition):
                    if piece.strip(" \t" + HOLE):
                        units.append(Unit(piece.strip(), is_list=True))
            elif body.strip(" \t" + HOLE):
                units.append(Unit(body.strip(), is_list=True))
            continue
        if s.startswith("----") or c in "|!":
            flush()
            continue
        if not s.strip(HOLE + " \t"):
            # a line of holes only: a block-level template (infobox, navbox) or display formula
            flush()
            continue
        para = _join(para, s)
    flush()
    return units


# ---------------------------------------------------------------------------------------------
# the whole cleaner


@dataclass
class Cleaned:
    units: list[Unit]
    holes: dict[str, int]


def clean_wikitext(text: str, title: str = "", *, max_seconds: float | None = None) -> Cleaned:
    """Clean one page's wikitext into units. Raises PageTimeout past ``max_seconds``."""
    tables = load_tables()
    deadline = time.monotonic() + max_seconds if max_seconds else None
    renderer = Renderer(tables, title=title, deadline=deadline)
    text = prepass(text, tables, renderer.holes)
    if "{{" in text or "[[" in text:
        text = renderer.text(parse(text, deadline))
    if "&" in text:
        text = html.unescape(text)
    if "[" in text:
        text = _EXT_LINK.sub(lambda m: m.group(1) or "", text)
    if "''" in text:
        text = _QUOTES.sub("", text)
    if "__" in text:
        text = _BEHAVIOUR.sub("", text)
    return Cleaned(to_units(text), renderer.holes)


@lru_cache(maxsize=1)
def _disambiguation_re() -> re.Pattern:
    names = []
    for n in load_tables().disambiguation_templates:
        first = (
            f"[{re.escape(n[0].upper())}{re.escape(n[0].lower())}]"
            if n[0].upper() != n[0].lower()
            else re.escape(n[0])
        )
        names.append(first + "".join(r"[ _]+" if c == " " else re.escape(c) for c in n[1:]))
    return re.compile(r"\{\{\s*(?:Template:|テンプレート:)?(?:" + "|".join(names) + r")\s*(?:\||\}\})")


def is_disambiguation(title: str, text: str) -> bool:
    """A disambiguation page: title suffix (曖昧さ回避) or one of the disambiguation templates."""
    tables = load_tables()
    t = title.strip()
    if any(t.endswith(s) or t.endswith(s.replace("(", " (")) for s in tables.disambiguation_title_suffixes):
        return True
    return "{{" in text and _disambiguation_re().search(text) is not None
