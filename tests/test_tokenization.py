"""The fast encoder gives exactly BertJapaneseTokenizer's ids; vocabulary training; folder errors."""

from __future__ import annotations

import json
import os
import shutil
from collections import Counter

import pytest
from conftest import ROOT
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from electra_ray.tokenization import JapaneseWordPieceTokenizer, TokenizerFolderError
from electra_ray.tokenization.mecab import pretokenize, words
from electra_ray.tokenization.vocab import SPECIAL_ORDERS, train_wordpiece, write_tokenizer_folder

REFERENCE = os.path.join(os.path.dirname(ROOT), "shared", "reference", "izumi-lab-electra-small-japanese")

TRICKY = [
    "前[MASK]後",
    "[CLS]文[SEP]文[SEP]",
    "[MASK][MASK] [UNK]",
    "[mask]は特別ではない",
    "［ＭＡＳＫ］は全角",
    "ＡＢＣ　ｄｅｆ　１２３",
    "ｶﾀｶﾅとﾊﾟﾋﾟﾌﾟﾍﾟﾎﾟ",
    "NUL\x00の後ろは消える",
    # MeCab's wakati output of this one split the two ESCs apart (the node walk, which
    # BertJapaneseTokenizer reads, keeps them one word): found by Hypothesis, now cut at the NUL first
    "\x1b\x1b\x00000000000\x80´¼ﯪ",
    "制御\x01\x02\x1c\x1d\x1e\x1f文字",
    "改行\n\r\n タブ\t 全角空白\u3000 NBSP\u00a0 段落\u2029 行\u2028 NEL\u0085",
    "あ" * 101,
    "a" * 100,
    "🍣寿司🍺と👨‍👩‍👧絵文字",
    "e\u0301 と が\u3099 と ㍻ と ①",
    "Yahoo!で検索した。本当か？",
    "",
    "   ",
    "<unused0>は語彙にある",
    "ﾞ゛゜",
    "\ufeffBOM\u200bゼロ幅",
]


def _hf(folder):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(folder)


def _same(hf, fast, texts):
    bad = []
    for t in texts:
        want = hf(t, add_special_tokens=False)["input_ids"]
        got = fast.encode(t)
        if want != got:
            bad.append((t, want[:20], got[:20]))
    assert not bad, bad[:5]
    assert fast.encode_batch(texts) == [hf(t, add_special_tokens=False)["input_ids"] for t in texts]


@pytest.fixture(scope="session")
def reference_folder():
    if not os.path.isfile(os.path.join(REFERENCE, "vocab.txt")):
        pytest.skip("the released reference vocab (../shared/reference) is not beside this checkout")
    return REFERENCE


@pytest.fixture(scope="session")
def corpus_sentences():
    from electra_ray.config import CleanConfig
    from electra_ray.data.corpus import ShardStats, clean_page
    from electra_ray.wiki.dump import article_drop_reason
    from electra_ray.wiki.sample import read_sample_pages

    out = []
    for p in read_sample_pages(os.path.join(ROOT, "data", "sample", "pages")):
        if article_drop_reason(p) is None:
            out.extend(clean_page(p, CleanConfig(), ShardStats()) or [])
    return out


@pytest.fixture(scope="session")
def trained_folder(tmp_path_factory, corpus_sentences):
    counts = Counter()
    for s in corpus_sentences:
        counts.update(pretokenize(s))
    vocab, facts = train_wordpiece(counts, vocab_size=2000, min_frequency=2, limit_alphabet=700)
    folder = str(tmp_path_factory.mktemp("tok") / "tokenizer")
    write_tokenizer_folder(folder, vocab, {"facts": facts})
    return folder


def test_identity_on_the_released_vocab(reference_folder, corpus_sentences):
    _same(
        _hf(reference_folder),
        JapaneseWordPieceTokenizer.from_pretrained(reference_folder),
        corpus_sentences + TRICKY,
    )


def test_identity_on_a_trained_vocab(trained_folder, corpus_sentences):
    hf = _hf(trained_folder)
    assert type(hf).__name__ == "BertJapaneseTokenizer"
    _same(hf, JapaneseWordPieceTokenizer.from_pretrained(trained_folder), corpus_sentences + TRICKY)


_PIECES = st.one_of(
    st.characters(codec="utf-8", exclude_categories=("Cs",)),
    st.sampled_from(list("あいうアイウ漢字東京。、「」ＡＢＣａｂｃ１２３ｶﾀ ﾞ\u3000\t\n\x00\x1c")),
    st.sampled_from(["[MASK]", "[CLS]", "[UNK]", "##", "東京都", "ｶﾞｷﾞ"]),
)
_UNICODE = st.lists(_PIECES, max_size=40).map("".join)


@settings(
    max_examples=400,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(texts=st.lists(_UNICODE, min_size=1, max_size=5))
def test_identity_on_random_unicode(trained_folder, texts):
    hf = _hf_cached(trained_folder)
    fast = _fast_cached(trained_folder)
    for t in texts:
        assert fast.encode(t) == hf(t, add_special_tokens=False)["input_ids"], repr(t)


_CACHE: dict = {}


def _hf_cached(folder):
    if ("hf", folder) not in _CACHE:
        _CACHE[("hf", folder)] = _hf(folder)
    return _CACHE[("hf", folder)]


def _fast_cached(folder):
    if ("fast", folder) not in _CACHE:
        _CACHE[("fast", folder)] = JapaneseWordPieceTokenizer.from_pretrained(folder)
    return _CACHE[("fast", folder)]


def test_trained_vocab_layout(trained_folder):
    vocab = open(os.path.join(trained_folder, "vocab.txt"), encoding="utf-8").read().splitlines()
    assert len(vocab) == 2000 and len(set(vocab)) == 2000
    assert vocab[:15] == list(SPECIAL_ORDERS["released"])
    singles = [t for t in vocab if len(t) == 1]
    assert singles == vocab[15 : 15 + len(singles)], "single characters come right after the specials"
    assert vocab[15 + len(singles) : 15 + 2 * len(singles)] == [f"##{c}" for c in singles], (
        "then their ## forms"
    )
    import unicodedata

    assert all(unicodedata.normalize("NFKC", t) == t for t in vocab[15:])


def test_training_is_deterministic_and_pad_first(corpus_sentences):
    counts = Counter()
    for s in corpus_sentences:
        counts.update(pretokenize(s))
    a, _ = train_wordpiece(counts, vocab_size=1500, limit_alphabet=600)
    b, _ = train_wordpiece(dict(reversed(list(counts.items()))), vocab_size=1500, limit_alphabet=600)
    assert a == b
    c, _ = train_wordpiece(
        counts, vocab_size=1500, limit_alphabet=600, special_tokens=SPECIAL_ORDERS["pad-first"]
    )
    assert c[0] == "[PAD]" and c[1:4] == ["[UNK]", "[CLS]", "[SEP]"]
    with pytest.raises(ValueError, match="lower --limit-alphabet"):
        train_wordpiece(counts, vocab_size=500, limit_alphabet=600)


def test_pretokenize_drops_special_literals_and_whitespace():
    assert pretokenize("前[MASK]後") == words("前") + words("後")
    assert all(not any(ch.isspace() for ch in w) for w in words("改行\n\t全角\u3000空白 x\x1cy"))


def test_folder_errors_say_what_to_fix(trained_folder, tmp_path):
    with pytest.raises(TokenizerFolderError, match="no vocab.txt"):
        JapaneseWordPieceTokenizer.from_pretrained(str(tmp_path))
    bad = tmp_path / "bad"
    shutil.copytree(trained_folder, bad)
    cfg = json.load(open(bad / "tokenizer_config.json"))
    cfg["mecab_kwargs"] = {"mecab_dic": "unidic_lite"}
    json.dump(cfg, open(bad / "tokenizer_config.json", "w"))
    with pytest.raises(TokenizerFolderError, match=r'mecab_kwargs must be \{"mecab_dic": "ipadic"\}'):
        JapaneseWordPieceTokenizer.from_pretrained(str(bad))
    cfg["mecab_kwargs"] = {"mecab_dic": "ipadic"}
    cfg["word_tokenizer_type"] = "basic"
    json.dump(cfg, open(bad / "tokenizer_config.json", "w"))
    with pytest.raises(TokenizerFolderError, match="word_tokenizer_type is 'basic'; expected 'mecab'"):
        JapaneseWordPieceTokenizer.from_pretrained(str(bad))
