"""The tokenizer and instances stages on Ray, end to end on the sample corpus (local and S3)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pyarrow.parquet as pq
import pytest
from conftest import ROOT

from electra_ray import storage
from electra_ray.config import CorpusConfig, InstancesConfig, TokenizerConfig
from electra_ray.data.corpus import read_corpus
from electra_ray.data.pipeline import prepare_corpus
from electra_ray.data.tokenize import instances_dataset, tokenize_corpus
from electra_ray.data.vocab import count_words_local, count_words_ray, train_tokenizer
from electra_ray.tokenization import JapaneseWordPieceTokenizer

quiet = {"log": lambda *_: None}


@pytest.fixture(scope="module")
def corpus(ray_local, sample_dump, tmp_path_factory):
    out = str(tmp_path_factory.mktemp("corpus") / "c")
    prepare_corpus(
        CorpusConfig(
            dump=sample_dump["multistream"], index=sample_dump["index"], output=out, pages_per_shard=10
        ),
        **quiet,
    )
    return out


def tok_cfg(corpus, out, **kw):
    return TokenizerConfig(
        corpus=corpus,
        output=out,
        vocab_size=kw.pop("vocab_size", 2500),
        limit_alphabet=1000,
        heldout_fraction=0.1,
        **kw,
    )


@pytest.fixture(scope="module")
def tokenizer(corpus, tmp_path_factory):
    out = str(tmp_path_factory.mktemp("tok") / "t")
    manifest = train_tokenizer(tok_cfg(corpus, out), **quiet)
    return out, manifest


def test_ray_and_single_process_counting_agree(corpus, tmp_path):
    ray_counts, ray_tally = count_words_ray(corpus, 0.1, None)
    local_counts, local_tally = count_words_local(corpus, 0.1)
    assert ray_counts == local_counts and ray_tally == local_tally
    a, b = str(tmp_path / "a"), str(tmp_path / "b")
    train_tokenizer(tok_cfg(corpus, a), use_ray=True, **quiet)
    train_tokenizer(tok_cfg(corpus, b), use_ray=False, **quiet)
    assert open(os.path.join(a, "vocab.txt"), "rb").read() == open(os.path.join(b, "vocab.txt"), "rb").read()


def test_tokenizer_folder_loads_with_autotokenizer(tokenizer):
    from transformers import AutoTokenizer

    folder, m = tokenizer
    hf = AutoTokenizer.from_pretrained(folder)
    assert type(hf).__name__ == "BertJapaneseTokenizer" and len(hf) == 2500
    assert hf.mask_token_id == 4 and hf.pad_token_id == 3 and hf.cls_token_id == 1
    fast = JapaneseWordPieceTokenizer.from_pretrained(folder)
    text = "柚木川は東京湾に注ぐ二級河川である。"
    assert fast.encode(text) == hf(text, add_special_tokens=False)["input_ids"]
    assert m["heldout"]["sentences"] > 0 and 0 <= m["heldout"]["unk_rate"] < 0.1
    assert m["counts"]["words"] > 1000 and m["vocab"]["vocab_size"] == 2500
    assert json.load(open(os.path.join(folder, "manifest.json")))["vocab"]["sha256"] == m["vocab"]["sha256"]


def test_instances_stage(corpus, tokenizer, tmp_path, ray_local):
    folder, _ = tokenizer
    out = str(tmp_path / "inst")
    m = tokenize_corpus(
        InstancesConfig(corpus=corpus, tokenizer=folder, output=out, max_seq_length=64), **quiet
    )
    table = pq.read_table([os.path.join(out, f) for f in m["output"]["files"]])
    assert str(table.schema.field("input_ids").type) == "list<element: uint16>"
    ids = table.column("input_ids").to_pylist()
    assert len(ids) == m["counts"]["instances"] > 0
    assert max(map(len, ids)) <= 64
    # nothing lost: content tokens of the instances == the encoded corpus, in order
    fast = JapaneseWordPieceTokenizer.from_pretrained(folder)
    corpus_tokens = [
        t for doc in read_corpus(corpus).column("sentences").to_pylist() for s in doc for t in fast.encode(s)
    ]
    cls_, sep = fast.vocab["[CLS]"], fast.vocab["[SEP]"]
    assert [t for row in ids for t in row[1:] if t != sep] == corpus_tokens
    assert all(row[0] == cls_ for row in ids)
    assert m["counts"]["tokens"] == len(corpus_tokens)

    # deterministic, whatever the number of workers; and the in-memory dataset gives the same rows
    out2 = str(tmp_path / "inst2")
    tokenize_corpus(
        InstancesConfig(corpus=corpus, tokenizer=folder, output=out2, max_seq_length=64, max_workers=1),
        **quiet,
    )
    for f in m["output"]["files"]:
        assert open(os.path.join(out, f), "rb").read() == open(os.path.join(out2, f), "rb").read()
    ds = instances_dataset(corpus, folder, max_seq_length=64)
    assert [
        r["input_ids"].tolist() if hasattr(r["input_ids"], "tolist") else list(r["input_ids"])
        for r in ds.take_all()
    ] == ids

    # relaunch after losing a shard's marker redoes only that shard
    os.remove(os.path.join(out, "manifest.json"))
    os.remove(os.path.join(out, "_shards", "part-00001.json"))
    m3 = tokenize_corpus(
        InstancesConfig(corpus=corpus, tokenizer=folder, output=out, max_seq_length=64), **quiet
    )
    assert m3["shards_resumed"] == m["output"]["shards"] - 1 and m3["counts"] == m["counts"]


def test_s3_everywhere(corpus, tokenizer, bucket, ray_local):
    folder, _ = tokenizer
    for name in os.listdir(corpus):
        if name.endswith(".parquet"):
            storage.write_bytes(f"{bucket}/corpus/{name}", open(os.path.join(corpus, name), "rb").read())
    s3_tok = f"{bucket}/tok"
    m = train_tokenizer(tok_cfg(f"{bucket}/corpus", s3_tok), **quiet)
    assert (
        storage.read_text(f"{s3_tok}/vocab.txt")
        == open(os.path.join(folder, "vocab.txt"), encoding="utf-8").read()
    )
    assert m["vocab"]["sha256"]
    mi = tokenize_corpus(
        InstancesConfig(
            corpus=f"{bucket}/corpus", tokenizer=s3_tok, output=f"{bucket}/inst", max_seq_length=64
        ),
        **quiet,
    )
    assert mi["counts"]["instances"] > 0 and storage.exists(f"{bucket}/inst/manifest.json")


def _job(script, *args):
    env = {**os.environ, "RAY_AUTH_MODE": "disabled"}
    return subprocess.run(
        [sys.executable, os.path.join(ROOT, "jobs", script), *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )


def test_cli_tokenizer_folder_errors(corpus, tokenizer, tmp_path):
    folder, _ = tokenizer
    empty = tmp_path / "empty"
    empty.mkdir()
    r = _job(
        "tokenize_corpus.py", "--corpus", corpus, "--tokenizer", str(empty), "--output", str(tmp_path / "o")
    )
    assert r.returncode == 2 and "no vocab.txt" in r.stderr, r.stderr[-2000:]
    wrong = tmp_path / "wrong"
    shutil.copytree(folder, wrong)
    cfg = json.load(open(wrong / "tokenizer_config.json"))
    cfg.pop("mecab_kwargs")
    json.dump(cfg, open(wrong / "tokenizer_config.json", "w"))
    r = _job(
        "tokenize_corpus.py", "--corpus", corpus, "--tokenizer", str(wrong), "--output", str(tmp_path / "o")
    )
    assert r.returncode == 2 and "mecab_kwargs must be" in r.stderr and "unidic_lite" in r.stderr, r.stderr[
        -2000:
    ]
    big = tmp_path / "big"
    shutil.copytree(folder, big)
    with open(big / "vocab.txt", "a", encoding="utf-8") as f:
        f.writelines(f"extra{i}\n" for i in range(70000))
    r = _job(
        "tokenize_corpus.py",
        "--corpus",
        corpus,
        "--tokenizer",
        str(big),
        "--output",
        str(tmp_path / "o"),
        "--ids-dtype",
        "uint16",
    )
    assert r.returncode == 2 and "do not fit uint16" in r.stderr, r.stderr[-2000:]
    r = _job("train_tokenizer.py", "--corpus", str(tmp_path / "nothing"), "--output", str(tmp_path / "t"))
    assert r.returncode == 2 and "no corpus shards" in r.stderr, r.stderr[-2000:]
