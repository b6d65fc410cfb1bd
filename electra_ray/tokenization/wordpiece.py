"""A fast encoder that gives exactly the ids of transformers' ``BertJapaneseTokenizer`` (MeCab + WordPiece).

Contract: ``JapaneseWordPieceTokenizer.from_pretrained(T).encode_batch(texts)`` returns, for each
text, the ids of ``BertJapaneseTokenizer.from_pretrained(T)(text, add_special_tokens=False)["input_ids"]``.

What ``BertJapaneseTokenizer`` does, step for step, and what this class does instead:

1. split the raw text on special-token literals (``前[MASK]後`` → ``前``, ``[MASK]``, ``後``), leftmost,
   longest first — here one compiled regular expression;
2. per remaining chunk: NFKC, MeCab node surfaces, each surface split on Python whitespace — here
   MeCab's wakati output split on whitespace (the same pieces, see ``mecab.py``);
3. per piece: ``[UNK]`` if longer than 100 characters, else greedy longest-match WordPiece with
   ``##`` continuations, ``[UNK]`` for the whole piece if any part has no match — here the same
   algorithm, but memoized per distinct piece (Wikipedia's words repeat: after warm-up nearly every
   piece is a dictionary hit), so the cost left is MeCab's.
"""

from __future__ import annotations

import json
import os
import unicodedata
from collections.abc import Iterable
from itertools import chain

from electra_ray.tokenization.mecab import cut_at_nul, special_splitter, tagger

SPECIAL_TOKENS = ("unk_token", "sep_token", "pad_token", "cls_token", "mask_token")


class TokenizerFolderError(ValueError):
    """A tokenizer folder is missing files or is inconsistent; the message says what to fix."""


def load_vocab(path: str) -> dict[str, int]:
    """vocab.txt → {token: id}, read exactly as transformers reads it (a duplicate keeps its last id)."""
    with open(path, encoding="utf-8") as f:
        lines = f.readlines()
    return {line.rstrip("\n"): i for i, line in enumerate(lines)}


def read_folder_config(folder: str) -> tuple[dict, dict]:
    """(tokenizer_config.json, special_tokens_map.json) of a tokenizer folder, checked."""
    if not os.path.isdir(folder):
        raise TokenizerFolderError(f"{folder}: not a folder (expected a tokenizer folder with vocab.txt)")
    if not os.path.isfile(os.path.join(folder, "vocab.txt")):
        raise TokenizerFolderError(f"{folder}: no vocab.txt (train one with jobs/train_tokenizer.py)")
    cfg_path = os.path.join(folder, "tokenizer_config.json")
    cfg = {}
    if os.path.isfile(cfg_path):
        with open(cfg_path, encoding="utf-8") as f:
            cfg = json.load(f)
    special = {}
    sp_path = os.path.join(folder, "special_tokens_map.json")
    if os.path.isfile(sp_path):
        with open(sp_path, encoding="utf-8") as f:
            special = json.load(f)
    cls = cfg.get("tokenizer_class", "BertJapaneseTokenizer")
    if cls not in ("BertJapaneseTokenizer", "BertJapaneseTokenizerFast"):
        raise TokenizerFolderError(
            f"{cfg_path}: tokenizer_class is {cls!r}; expected 'BertJapaneseTokenizer'"
        )
    if cfg.get("word_tokenizer_type", "basic") != "mecab":
        raise TokenizerFolderError(
            f"{cfg_path}: word_tokenizer_type is {cfg.get('word_tokenizer_type', 'basic')!r}; expected 'mecab'"
        )
    if cfg.get("subword_tokenizer_type", "wordpiece") != "wordpiece":
        raise TokenizerFolderError(f"{cfg_path}: subword_tokenizer_type must be 'wordpiece'")
    dic = (cfg.get("mecab_kwargs") or {}).get("mecab_dic", "unidic_lite")
    if dic != "ipadic" or (cfg.get("mecab_kwargs") or {}).get("mecab_option"):
        raise TokenizerFolderError(
            f'{cfg_path}: mecab_kwargs must be {{"mecab_dic": "ipadic"}} (found {cfg.get("mecab_kwargs")!r}); '
            "transformers' default dictionary is unidic_lite, which splits words differently"
        )
    if cfg.get("do_word_tokenize", True) is False or cfg.get("do_subword_tokenize", True) is False:
        raise TokenizerFolderError(f"{cfg_path}: do_word_tokenize and do_subword_tokenize must be true")
    return cfg, special


def _token_str(v) -> str | None:
    if isinstance(v, dict):
        return v.get("content")
    return v


class JapaneseWordPieceTokenizer:
    """MeCab (ipadic) + WordPiece with the ids of ``BertJapaneseTokenizer``, many times faster.

    ``encode(text)`` / ``encode_batch(texts)`` return ids without special tokens added
    (``add_special_tokens=False``). The word cache holds at most ``cache_size`` distinct pieces.
    """

    def __init__(
        self,
        vocab: dict[str, int],
        *,
        special_tokens: Iterable[str] = ("[UNK]", "[CLS]", "[SEP]", "[PAD]", "[MASK]"),
        unk_token: str = "[UNK]",
        do_lower_case: bool = False,
        max_input_chars_per_word: int = 100,
        cache_size: int = 2_000_000,
    ) -> None:
        if unk_token not in vocab:
            raise TokenizerFolderError(f"the vocabulary has no unknown token {unk_token!r}")
        self.vocab = vocab
        self.unk_token = unk_token
        self.unk_id = vocab[unk_token]
        self.do_lower_case = do_lower_case
        self.max_input_chars_per_word = max_input_chars_per_word
        self.cache_size = cache_size
        specials = tuple(t for t in dict.fromkeys(special_tokens) if t)
        self.special_ids = {t: vocab.get(t, self.unk_id) for t in specials}
        self._special_re = special_splitter(specials) if specials else None
        firsts = {t[0] for t in specials}
        self._special_first = firsts.pop() if len(firsts) == 1 else None  # one char to test: the fast path
        self._special_firsts = frozenset(t[0] for t in specials)
        self._parse = None
        self._cache: dict[str, tuple[int, ...]] = {}

    @classmethod
    def from_pretrained(cls, folder: str, **kwargs) -> JapaneseWordPieceTokenizer:
        cfg, special = read_folder_config(folder)
        vocab = load_vocab(os.path.join(folder, "vocab.txt"))
        names = {k: _token_str(special.get(k) or cfg.get(k)) for k in SPECIAL_TOKENS}
        defaults = {
            "unk_token": "[UNK]",
            "sep_token": "[SEP]",
            "pad_token": "[PAD]",
            "cls_token": "[CLS]",
            "mask_token": "[MASK]",
        }
        tokens = [names[k] or defaults[k] for k in SPECIAL_TOKENS]
        extra = special.get("additional_special_tokens") or cfg.get("additional_special_tokens") or []
        tokens += [_token_str(t) for t in extra]
        return cls(
            vocab,
            special_tokens=tokens,
            unk_token=names["unk_token"] or "[UNK]",
            do_lower_case=bool(cfg.get("do_lower_case", False)),
            **kwargs,
        )

    def __len__(self) -> int:
        return len(self.vocab)

    def _bind_tagger(self):
        """This process's MeCab, bound once (a tagger is per process and cannot be pickled)."""
        self._parse = tagger().parse
        return self._parse

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state["_parse"] = None
        return state

    # -- the word pieces ---------------------------------------------------------------------

    def _wordpiece(self, word: str) -> tuple[int, ...]:
        """Greedy longest-match-first WordPiece of one whitespace-free piece (uncached)."""
        if len(word) > self.max_input_chars_per_word:
            return (self.unk_id,)
        vocab = self.vocab
        out = []
        start, n = 0, len(word)
        while start < n:
            end = n
            found = None
            while start < end:
                sub = word[start:end] if start == 0 else "##" + word[start:end]
                i = vocab.get(sub)
                if i is not None:
                    found = i
                    break
                end -= 1
            if found is None:
                return (self.unk_id,)
            out.append(found)
            start = end
        return tuple(out)

    def _chunk(self, text: str, out: list[int]) -> None:
        text = cut_at_nul(unicodedata.normalize("NFKC", text))
        if not text:
            return
        parse = self._parse or self._bind_tagger()
        pieces = parse(text).split()
        cache = self._cache
        try:  # the hot path: every piece already in the cache
            ids = list(chain.from_iterable(map(cache.__getitem__, pieces)))
        except KeyError:
            if len(cache) + len(pieces) > self.cache_size:
                cache.clear()
            for w in pieces:
                if w not in cache:
                    cache[w] = self._wordpiece(w.lower() if self.do_lower_case else w)
            ids = list(chain.from_iterable(map(cache.__getitem__, pieces)))
        out += ids

    # -- public API --------------------------------------------------------------------------

    def encode(self, text: str) -> list[int]:
        """The ids of ``text`` (no [CLS]/[SEP] added)."""
        out: list[int] = []
        first = self._special_first
        if self._special_re is None or (
            (first not in text) if first is not None else not any(c in text for c in self._special_firsts)
        ):
            self._chunk(text, out)
            return out
        for i, part in enumerate(self._special_re.split(text)):
            if i % 2:
                out.append(self.special_ids[part])
            elif part:
                self._chunk(part, out)
        return out

    def encode_batch(self, texts: Iterable[str]) -> list[list[int]]:
        return [self.encode(t) for t in texts]

    def tokenize(self, text: str) -> list[str]:
        """The tokens (strings) of ``text``, for display."""
        inv = self.inverse_vocab()
        return [inv[i] for i in self.encode(text)]

    def inverse_vocab(self) -> dict[int, str]:
        if not hasattr(self, "_inv"):
            self._inv = {i: t for t, i in self.vocab.items()}
        return self._inv
