"""Sentence splitting, NFKC and the filters (pure functions)."""

from __future__ import annotations

from collections import Counter

from hypothesis import given, settings
from hypothesis import strategies as st

from electra_ray.config import CleanConfig
from electra_ray.wiki.clean import Unit
from electra_ray.wiki.sentences import normalize, sentences_of, split_sentences


def test_split_on_maru_outside_brackets_only():
    text = "「吾輩は猫である。名前はまだ無い。」という書き出しで知られる。次の文である。"
    assert split_sentences(text) == [
        "「吾輩は猫である。名前はまだ無い。」という書き出しで知られる。",
        "次の文である。",
    ]


def test_fullwidth_exclamation_splits_ascii_does_not():
    assert split_sentences("Yahoo!で検索した。本当か？そうだ！！次へ。") == [
        "Yahoo!で検索した。",
        "本当か？",
        "そうだ！！",
        "次へ。",
    ]


def test_exclamation_inside_quotes_does_not_split():
    assert split_sentences("彼は「すごい！本当？」と言った。") == ["彼は「すごい！本当？」と言った。"]


def test_paragraph_without_final_maru_keeps_its_tail():
    assert split_sentences("一つ目。二つ目は終わらない") == ["一つ目。", "二つ目は終わらない"]


def test_unbalanced_bracket_falls_back_to_flat_split():
    text = "（閉じない括弧で始まる文である。" + "続きの文章がここにある。" * 200
    drops: Counter = Counter()
    out = sentences_of([Unit(text)], CleanConfig(max_sentence_chars=100), drops)
    assert len(out) > 100 and drops["too_long"] == 0


def test_nfkc_and_whitespace():
    assert normalize("ＡＢＣ１２３　ｶﾀｶﾅ （テスト）") == "ABC123 カタカナ (テスト)"


def test_filters_count_every_drop():
    drops: Counter = Counter()
    units = [Unit("短い。" + "長い" * 600 + "。これは十分な長さの文である。{{残骸}}の文章がここにある。")]
    out = sentences_of(units, CleanConfig(min_sentence_chars=10, max_sentence_chars=1000), drops)
    assert out == ["これは十分な長さの文である。"]
    assert drops == Counter({"too_short": 1, "too_long": 1, "markup": 1})


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet=st.sampled_from(list("あいう。！？「」（）()ab!? \n")), max_size=200))
def test_split_loses_no_text(text):
    pieces = split_sentences(text)
    assert "".join(pieces).replace(" ", "").replace("\n", "") == text.replace(" ", "").replace("\n", "")
