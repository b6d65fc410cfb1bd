"""WordPiece vocabulary training from MeCab word counts, and the Hugging Face tokenizer folder.

Counting is the expensive half (MeCab over the whole corpus) and runs on the cluster
(``data/pipeline.py``); training is the cheap half and runs here, with the HF ``tokenizers``
WordPiece trainer fed from the counts. The pre-tokenization is the one used at inference
(``mecab.words``: special-token split, NFKC, MeCab surfaces, whitespace split), so the vocabulary is
trained the way ``BertJapaneseTokenizer`` will cut text.

Vocabulary layout (the released model's): special tokens and ``<unused0..9>``, then the alphabet's
single characters, then their ``##`` forms the trainer did not produce (without them, a word whose
later characters are in the alphabet but never seen as continuations would become ``[UNK]``), then
the learned pieces, cut so that the total is exactly ``vocab_size``.
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from collections.abc import Iterable, Iterator

from electra_ray import storage

UNUSED = tuple(f"<unused{i}>" for i in range(10))
SPECIAL_ORDERS = {
    # the released izumi-lab order: [UNK]=0 … [MASK]=4, <unused0..9>=5..14
    "released": ("[UNK]", "[CLS]", "[SEP]", "[PAD]", "[MASK]", *UNUSED),
    # padding at id 0, as model configs default to
    "pad-first": ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *UNUSED),
}
TOKENIZER_FILES = ("vocab.txt", "tokenizer_config.json", "special_tokens_map.json")
SPECIAL_NAMES = {
    "unk_token": "[UNK]",
    "sep_token": "[SEP]",
    "pad_token": "[PAD]",
    "cls_token": "[CLS]",
    "mask_token": "[MASK]",
}


def is_heldout(page_id: int, fraction: float) -> bool:
    """Deterministic held-out split by page id (Knuth's multiplicative hash), independent of sharding."""
    if fraction <= 0:
        return False
    return ((page_id * 2654435761) % 2**32) / 2**32 < fraction


def count_sentences(sentences: Iterable[str], counts: Counter) -> int:
    """Add the MeCab words of ``sentences`` to ``counts``; returns the number of words."""
    from electra_ray.tokenization.mecab import pretokenize

    n = 0
    for s in sentences:
        ws = pretokenize(s)
        counts.update(ws)
        n += len(ws)
    return n


def _repeated(counts: dict[str, int], chunk: int = 4096) -> Iterator[str]:
    """Feed the trainer each word ``count`` times, in a fixed order (sorted words), in bounded strings."""
    for word in sorted(counts):
        c = counts[word]
        while c > 0:
            k = min(c, chunk)
            yield " ".join((word,) * k)
            c -= k


def train_wordpiece(
    counts: dict[str, int],
    *,
    vocab_size: int,
    min_frequency: int = 2,
    limit_alphabet: int = 6129,
    special_tokens: tuple[str, ...] = SPECIAL_ORDERS["released"],
) -> tuple[list[str], dict]:
    """Train WordPiece with the HF ``tokenizers`` library; returns (vocabulary in id order, facts)."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    if vocab_size <= len(special_tokens):
        raise ValueError(
            f"vocab_size {vocab_size} leaves no room beyond the {len(special_tokens)} special tokens"
        )
    # The trainer breaks frequency ties by hash-map order (a different vocabulary on every run), both
    # when it cuts the alphabet and through the ids it hands out to symbols in the order it meets
    # them. So the alphabet is chosen here (most frequent first, ties by code point), and every
    # initial symbol, each character and its ## form, is registered up front in a fixed order (as
    # trainer "special tokens", which only fixes their ids): merges then tie-break on fixed ids.
    chars: Counter = Counter()
    for word, c in counts.items():
        for ch in word:
            chars[ch] += c
    alphabet = sorted(sorted(chars, key=lambda ch: (-chars[ch], ch))[:limit_alphabet])
    continuations = [f"##{c}" for c in alphabet]
    base = [*special_tokens, *alphabet, *continuations]
    if len(base) > vocab_size:
        raise ValueError(
            f"vocab_size {vocab_size} cannot hold the {len(special_tokens)} special tokens, the {len(alphabet)}-character "
            f"alphabet and its {len(continuations)} ## forms; raise --vocab-size or lower --limit-alphabet"
        )
    tok = Tokenizer(models.WordPiece(unk_token="[UNK]", continuing_subword_prefix="##"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    trainer = trainers.WordPieceTrainer(
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        limit_alphabet=len(alphabet),
        initial_alphabet=alphabet,
        special_tokens=base,
        continuing_subword_prefix="##",
        show_progress=False,
    )
    tok.train_from_iterator(_repeated(counts), trainer=trainer)
    registered = set(base)
    learned = [t for t, _ in sorted(tok.get_vocab().items(), key=lambda kv: kv[1]) if t not in registered]
    vocab = [*base, *learned][:vocab_size]
    facts = {
        "alphabet": len(alphabet),
        "continuations": len(continuations),
        "learned": len(vocab) - len(base),
        "vocab_size": len(vocab),
        "requested_vocab_size": vocab_size,
    }
    if len(vocab) < vocab_size:
        facts["note"] = f"the corpus supports only {len(vocab)} pieces at min_frequency={min_frequency}"
    if len(set(vocab)) != len(vocab):
        raise AssertionError("duplicate vocabulary entries")
    return vocab, facts


def tokenizer_config(do_lower_case: bool = False, model_max_length: int = 512) -> dict:
    """tokenizer_config.json: what makes AutoTokenizer build BertJapaneseTokenizer with MeCab ipadic."""
    return {
        **SPECIAL_NAMES,
        "do_lower_case": do_lower_case,
        "do_word_tokenize": True,
        "do_subword_tokenize": True,
        "word_tokenizer_type": "mecab",
        "subword_tokenizer_type": "wordpiece",
        "never_split": None,
        "mecab_kwargs": {"mecab_dic": "ipadic"},
        "tokenize_chinese_chars": False,
        "tokenizer_class": "BertJapaneseTokenizer",
        "model_max_length": model_max_length,
    }


def vocab_text(vocab: list[str]) -> str:
    return "".join(t + "\n" for t in vocab)


def vocab_checksum(vocab: list[str]) -> str:
    return hashlib.sha256(vocab_text(vocab).encode("utf-8")).hexdigest()


def write_tokenizer_folder(folder: str, vocab: list[str], manifest: dict) -> None:
    """Write vocab.txt, tokenizer_config.json, special_tokens_map.json, then manifest.json last."""
    storage.write_text(storage.join(folder, "vocab.txt"), vocab_text(vocab))
    storage.write_json(storage.join(folder, "tokenizer_config.json"), tokenizer_config())
    storage.write_json(storage.join(folder, "special_tokens_map.json"), dict(SPECIAL_NAMES))
    storage.write_text(
        storage.join(folder, "manifest.json"), json.dumps(manifest, ensure_ascii=False, indent=2) + "\n"
    )
