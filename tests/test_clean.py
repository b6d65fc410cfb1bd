"""The wikitext cleaner: what it keeps, renders and drops (no Ray, no files)."""

from __future__ import annotations

import time
from collections import Counter

import pytest

from electra_ray.config import CleanConfig
from electra_ray.wiki.clean import HOLE, PageTimeout, clean_wikitext, is_disambiguation, parse
from electra_ray.wiki.sentences import sentences_of


def sents(wikitext: str, title: str = "テスト", **cfg) -> list[str]:
    cfg.setdefault("min_sentence_chars", 1)
    drops: Counter = Counter()
    return sentences_of(clean_wikitext(wikitext, title).units, CleanConfig(**cfg), drops)


def text_of(wikitext: str) -> str:
    return "\n".join(u.text for u in clean_wikitext(wikitext).units)


def test_reading_template_keeps_its_text():
    out = sents("'''{{読み仮名|夏目 漱石|なつめ そうせき}}'''は、日本の小説家である。")
    assert out == ["夏目 漱石(なつめ そうせき)は、日本の小説家である。"]


@pytest.mark.parametrize(
    "src, want",
    [
        ("本名は{{lang|en|John Smith}}という人物である。", "本名はJohn Smithという人物である。"),
        ("本名は{{lang-en|John Smith}}という人物である。", "本名は英語: John Smithという人物である。"),
        (
            "原題は{{Lang-fr|Le Petit Prince}}という作品である。",
            "原題はフランス語: Le Petit Princeという作品である。",
        ),
        (
            "彼は{{仮リンク|ロンドン大学|en|University of London}}に学んだ人物である。",
            "彼はロンドン大学に学んだ人物である。",
        ),
        (
            "彼は{{仮リンク|ロンドン大学|en|University of London|label=同大学}}に学んだ人物である。",
            "彼は同大学に学んだ人物である。",
        ),
        ("全長は{{convert|100|km|mi}}に及ぶ路線である。", "全長は100 kmに及ぶ路線である。"),
        ("重さは{{convert|5|to|10|kg}}程度の動物である。", "重さは5 - 10 kg程度の動物である。"),
        ("この{{ruby|漢字|かんじ}}は難しい読み方をする。", "この漢字は難しい読み方をする。"),
        (
            "この<ruby>漢<rp>(</rp><rt>かん</rt><rp>)</rp></ruby>字は難しい読み方をする。",
            "この漢字は難しい読み方をする。",
        ),
        (
            "{{要出典範囲|彼は最初の人物である|date=2020年5月}}と言われている。",
            "彼は最初の人物であると言われている。",
        ),
        (
            "彼は東京で生まれた{{要出典|date=2021年3月}}とされる人物である。",
            "彼は東京で生まれたとされる人物である。",
        ),
        ("{{生年月日と年齢|1970|4|1}}に生まれた歌手である。", "1970年4月1日に生まれた歌手である。"),
        (
            "{{死亡年月日と没年齢|1867|2|9|1916|12|9}}に亡くなった作家である。",
            "1916年12月9日に亡くなった作家である。",
        ),
        ("{{by|1999}}に{{JIS2004フォント|&#x5F45;}}の字が使われた。", "1999年に彅の字が使われた。"),
        ("略称は{{lang-en-short|JR}}である。", "略称はJRである。"),
    ],
)
def test_inline_prose_templates_render(src, want):
    assert sents(src) == [want]


def test_links_render_labels_and_drop_files_categories_interwiki():
    src = (
        "[[東京都|東京]]と[[大阪]]と[[日本の歴史#江戸時代|江戸時代]]と[[:en:Foo|Foo]]と[[wikt:語|語]]の話である。\n"
        "[[ファイル:X.jpg|thumb|250px|キャプションに[[リンク]]がある]]\n"
        "[[Category:日本の都市|とうきよう]]\n[[en:Tokyo]]\n[[カテゴリ:秘密のカテゴリ]]"
    )
    assert sents(src) == ["東京と大阪と江戸時代とFooと語の話である。"]


def test_refs_comments_tables_and_reference_sections_are_dropped():
    src = """冒頭の文章である<ref name="a">{{Cite web|title=出典の題名}}</ref>。次の文章である<ref name="a" />。
<!-- 編集者向けの
複数行のコメント -->
{| class="wikitable"
|-
| 表のセル || {|
| 入れ子の表
|}
|}
最後の本文である{{efn|脚注の中身}}。
== 脚注 ==
{{Reflist}}
=== 出典 ===
* 出典の本の題名である。
== 関連項目 ==
* [[関連する記事]]である。
== 外部リンク ==
* [https://example.org 公式サイト]
[[Category:テスト]]
"""
    out = sents(src)
    assert out == ["冒頭の文章である。", "次の文章である。", "最後の本文である。"]


def test_sections_after_a_dropped_one_come_back():
    src = "== 歴史 ==\n歴史の文章である。\n== 脚注 ==\n脚注の文章である。\n== 評価 ==\n評価の文章である。"
    assert sents(src) == ["歴史の文章である。", "評価の文章である。"]


def test_infobox_and_block_templates_vanish_without_holes():
    src = """{{出典の明記|date=2020年1月}}
{{Infobox 人物
| 氏名 = 秘密の氏名
| 画像 = [[ファイル:X.jpg|200px]]
| 生年月日 = {{生年月日と年齢|1867|2|9}}
| 表 = {{{!}} class="x"
}}
{{未知のナビボックス}}
本文の最初の文である。
{{Normdaten}}
{{DEFAULTSORT:ひみつ}}
__TOC__
"""
    out = sents(src)
    assert out == ["本文の最初の文である。"]


def test_unknown_inline_template_drops_its_sentence_only():
    drops: Counter = Counter()
    units = clean_wikitext(
        "人口は{{人口統計|code=1}}人である。面積は広い土地である。式は<math>a^2</math>である。"
    ).units
    out = sentences_of(units, CleanConfig(), drops)
    assert out == ["面積は広い土地である。"]
    assert drops["hole"] == 2


def test_holes_are_counted_by_template_name():
    c = clean_wikitext("人口は{{人口統計|code=1}}人で{{#expr: 1+2}}と{{NUMBEROFARTICLES}}である。")
    assert c.holes == {"人口統計": 1, "#expr": 1, "NUMBEROFARTICLES": 1}


def test_unbalanced_markup_does_not_swallow_the_page():
    src = "最初の段落の文章である。\n\n壊れた{{テンプレートの文章である。\n\n[[閉じないリンクの文章である。\n\n最後の段落の文章である}}。"
    out = sents(src)
    assert "最初の段落の文章である。" in out
    assert all("{{" not in s and "[[" not in s and "}}" not in s for s in out)


def test_bold_italic_entities_and_external_links():
    src = "'''太字'''と''斜体''と&amp;と[https://example.org 公式サイト]と[https://example.org]の文章である。"
    assert sents(src) == ["太字と斜体と&と公式サイトとの文章である。"]


def test_nowiki_content_is_literal_text():
    # the literal brackets survive cleaning; the leak check then refuses the sentence, as it should
    assert "記号[[は" in "".join(
        u.text for u in clean_wikitext("記号<nowiki>[[</nowiki>は括弧である。").units
    ).replace("［", "[")


def test_lists_keep_sentences_and_drop_fragments():
    drops: Counter = Counter()
    units = clean_wikitext(
        "本文の文章がここにある。\n* 完全な文の項目である。\n* 断片の項目\n# 番号付きの文である。"
    ).units
    out = sentences_of(units, CleanConfig(min_sentence_chars=1), drops)
    assert out == ["本文の文章がここにある。", "完全な文の項目である。", "番号付きの文である。"]
    assert drops["list_fragment"] == 1


def test_lines_of_a_paragraph_join():
    assert sents("一行目の文章が\n二行目に続いている。") == ["一行目の文章が二行目に続いている。"]


def test_br_breaks_a_paragraph():
    assert sents("一行目の文章である<br />二行目の文章である") == ["一行目の文章である", "二行目の文章である"]


def test_parser_handles_nested_and_triple_braces():
    tree = parse("a{{x|{{y}}}}b{{{1}}}c")
    assert tree[0] == "a" and tree[2] == "b" and tree[4] == "c"
    assert tree[1][0] == 1 and tree[3][0] == 2


def test_disambiguation_detection():
    assert is_disambiguation("東京 (曖昧さ回避)", "本文")
    assert is_disambiguation("山田太郎", "'''山田太郎'''は以下の人物を指す。\n{{人名の曖昧さ回避}}")
    assert is_disambiguation("X", "{{aimai}}")
    assert not is_disambiguation("東京", "{{Infobox 都市}}東京は都市である。")


def test_page_timeout():
    big = "{{a|" * 2000 + "文章である。" + "}}" * 2000
    with pytest.raises(PageTimeout):
        clean_wikitext(big * 50, max_seconds=1e-6)


@pytest.mark.parametrize(
    "src",
    [
        ("{{" * 5000 + "[[" * 5000 + "文章である。") * 16,  # 160,000 frames left open
        "{{" * 40000 + "]]" * 40000 + "文章である。",  # closers whose opener is never there
        "[[" * 40000 + "}}" * 40000 + "文章である。",
    ],
    ids=["unclosed", "unmatched-links", "unmatched-braces"],
)
def test_pathological_markup_is_linear(src):
    """Deep unclosed or unmatched markup is cleaned in time linear in its length, and its text stays.
    The bound is ~6x what the cleaner needs here on a slow day (1.7 s for the first case); the
    quadratic parser it replaced took about a minute on that case."""
    from electra_ray.wiki.clean import parse

    t0 = time.perf_counter()
    clean_wikitext(src)
    took = time.perf_counter() - t0
    assert took < 10.0, f"{took:.1f} s"
    pieces = parse(src)
    assert "".join(p for p in pieces if isinstance(p, str)) == src  # all of it literal text again


def test_hole_char_never_leaks():
    out = sents("{{未知}}の文章である。\n{{未知}}\n普通の文章がここにある。")
    assert all(HOLE not in s for s in out)
    assert out == ["普通の文章がここにある。"]
