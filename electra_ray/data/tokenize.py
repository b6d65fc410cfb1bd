"""The instances stage: corpus shards → MeCab + WordPiece ids → packed instances, on Ray Data.

One corpus shard becomes one instance shard (``part-00000.parquet`` → ``part-00000.parquet``), so a
relaunch skips finished shards exactly as the corpus stage does. Encoding runs in an autoscaling
actor pool (one MeCab tagger and one word cache per actor). The instances of a document depend
only on (seed, page id) — not on sharding or the number of workers.

``instances_dataset`` offers the same pipeline as a Ray Dataset kept in the object store (for
pretraining straight from a corpus, without writing Parquet).
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import time
from collections import Counter
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from electra_ray import __version__, storage
from electra_ray.config import InstancesConfig
from electra_ray.data.corpus import finished_manifest, shard_markers, shard_name
from electra_ray.data.instances import SpecialIds, doc_rng, instances_table, pack_document
from electra_ray.data.resources import actor_pool, pool_size
from electra_ray.tokenization.vocab import TOKENIZER_FILES
from electra_ray.tokenization.wordpiece import (
    JapaneseWordPieceTokenizer,
    TokenizerFolderError,
)


def local_tokenizer(uri: str) -> str:
    """A local folder holding the tokenizer files (downloaded once per process when ``uri`` is remote)."""
    if not storage.is_remote(uri):
        return uri
    dest = os.path.join(
        tempfile.gettempdir(), "electra_ray_tokenizers", hashlib.sha256(uri.encode()).hexdigest()[:16]
    )
    if not os.path.isfile(os.path.join(dest, "vocab.txt")):
        os.makedirs(dest, exist_ok=True)
        for name in TOKENIZER_FILES:
            src = storage.join(uri, name)
            if storage.exists(src):
                storage.write_bytes(os.path.join(dest, name), storage.read_bytes(src))
    return dest


def open_tokenizer(uri: str, ids_dtype: str = "auto") -> tuple[JapaneseWordPieceTokenizer, dict[str, Any]]:
    """Load and validate a tokenizer folder; returns (encoder, facts: uri, vocab size, checksum, id dtype)."""
    folder = local_tokenizer(uri)
    enc = JapaneseWordPieceTokenizer.from_pretrained(folder)  # checks the folder first: clear errors
    with open(os.path.join(folder, "vocab.txt"), "rb") as f:
        raw = f.read()
    n = max(enc.vocab.values()) + 1  # ids run 0..n-1
    for tok in ("[CLS]", "[SEP]", "[UNK]"):
        if tok not in enc.vocab:
            raise TokenizerFolderError(f"{uri}/vocab.txt has no {tok} entry")
    if ids_dtype == "uint16" and n > 65536:
        raise TokenizerFolderError(
            f"{uri}/vocab.txt has {n} entries: ids do not fit uint16 (at most 65536); use --ids-dtype int32 or auto"
        )
    dtype = "int32" if ids_dtype == "int32" or n > 65536 else "uint16"
    return enc, {"uri": uri, "vocab_size": n, "sha256": hashlib.sha256(raw).hexdigest(), "ids_dtype": dtype}


def check_tokenizer(uri: str, ids_dtype: str) -> dict[str, Any]:
    """Validate a tokenizer folder before any work; returns its facts (vocab size, checksum, dtype)."""
    return open_tokenizer(uri, ids_dtype)[1]


def encode_documents(
    table: pa.Table,
    enc: JapaneseWordPieceTokenizer,
    *,
    max_len: int,
    seed: int,
    short_prob: float,
    stats: Counter,
) -> list[tuple[list[int], list[int]]]:
    """Encode and pack every document of a corpus table (columns page_id, sentences), in row order."""
    special = SpecialIds(cls=enc.vocab["[CLS]"], sep=enc.vocab["[SEP]"])
    out: list[tuple[list[int], list[int]]] = []
    for pid, sentences in zip(table.column("page_id").to_pylist(), table.column("sentences").to_pylist()):
        ids = enc.encode_batch(sentences)
        stats["documents"] += 1
        stats["sentences"] += len(sentences)
        n_tok = sum(map(len, ids))
        stats["tokens"] += n_tok
        stats["unk_tokens"] += sum(s.count(enc.unk_id) for s in ids)
        inst = pack_document(
            ids, max_len=max_len, special=special, rng=doc_rng(seed, pid), short_prob=short_prob, stats=stats
        )
        stats["instances"] += len(inst)
        stats["instance_tokens"] += sum(len(i) for i, _ in inst)
        out.extend(inst)
    return out


class ShardEncoder:
    """Actor: encode whole corpus shards into instance shards (files, then the completion marker)."""

    def __init__(self, tokenizer: str, output: str, cfg: dict, ids_dtype: str, fingerprint: str) -> None:
        self.enc = JapaneseWordPieceTokenizer.from_pretrained(local_tokenizer(tokenizer))
        self.output = output
        self.cfg = InstancesConfig.from_dict(cfg)
        self.type = pa.uint16() if ids_dtype == "uint16" else pa.int32()
        self.fingerprint = fingerprint

    def __call__(self, batch: pa.Table) -> pa.Table:
        out = []
        for row in batch.to_pylist():
            t0 = time.perf_counter()
            corpus = pq.read_table(
                pa.BufferReader(storage.read_bytes(row["file"])), columns=["page_id", "sentences"]
            )
            stats: Counter = Counter()
            inst = encode_documents(
                corpus,
                self.enc,
                max_len=self.cfg.max_seq_length,
                seed=self.cfg.seed,
                short_prob=self.cfg.short_seq_prob,
                stats=stats,
            )
            name = shard_name(row["shard"])
            storage.write_bytes(
                storage.join(self.output, f"{name}.parquet"),
                storage.parquet_bytes(instances_table(inst, self.type), compression="zstd"),
            )
            record = {
                "shard": row["shard"],
                "source": row["file"],
                **dict(stats),
                "seconds": round(time.perf_counter() - t0, 3),
            }
            storage.write_json(
                storage.join(self.output, "_shards", f"{name}.json"),
                {"fingerprint": self.fingerprint, "stats": record},
            )
            out.append(json.dumps(record))
        return pa.table({"stats": out})


def tokenize_corpus(cfg: InstancesConfig, *, log=print) -> dict[str, Any]:
    """Run the instances stage (Ray must be initialized); returns the manifest."""
    import ray

    t0 = time.time()
    from electra_ray.data.vocab import corpus_files

    files = corpus_files(cfg.corpus)
    tok = check_tokenizer(cfg.tokenizer, cfg.ids_dtype)
    fingerprint = cfg.output_fingerprint(tok["sha256"])
    manifest_uri = storage.join(cfg.output, "manifest.json")
    old = finished_manifest(cfg.output, fingerprint)
    if old:
        log(f"{cfg.output} is already complete: nothing to do")
        return old
    done = shard_markers(cfg.output, fingerprint, "other settings or another tokenizer")
    todo = [{"shard": k, "file": f} for k, f in enumerate(files) if k not in done]
    lo, hi = pool_size(cfg.max_workers, len(todo) or 1)
    log(
        f"{len(files)} corpus shards, {len(done)} already encoded, {len(todo)} to do with {lo}-{hi} encoder(s)"
    )
    results = []
    if todo:
        ds = ray.data.from_items(todo, override_num_blocks=len(todo))
        ds = ds.map_batches(
            ShardEncoder,
            fn_constructor_kwargs={
                "tokenizer": cfg.tokenizer,
                "output": cfg.output,
                "cfg": cfg.to_dict(),
                "ids_dtype": tok["ids_dtype"],
                "fingerprint": fingerprint,
            },
            batch_size=1,
            batch_format="pyarrow",
            compute=actor_pool(cfg.max_workers, len(todo)),
            num_cpus=1,
        )
        results = [json.loads(r["stats"]) for r in ds.take_all()]
    stats = dict(done)
    for r in results:
        stats[r["shard"]] = r
    missing = sorted(set(range(len(files))) - set(stats))
    if missing:
        raise RuntimeError(f"{cfg.output}: shards {missing[:10]} did not complete; run the job again")
    totals: Counter = Counter()
    for r in stats.values():
        totals.update({k: v for k, v in r.items() if isinstance(v, int) and k != "shard"})
    manifest = {
        "format_version": 1,
        "stage": "instances",
        "complete": True,
        "fingerprint": fingerprint,
        "corpus": cfg.corpus,
        "tokenizer": tok,
        "output": {
            "uri": cfg.output,
            "shards": len(files),
            "files": [f"{shard_name(k)}.parquet" for k in range(len(files))],
            "schema": {"input_ids": f"list<{tok['ids_dtype']}>", "token_type_ids": "list<uint8>"},
        },
        "counts": dict(sorted(totals.items())),
        "unk_rate": round(totals["unk_tokens"] / totals["tokens"], 6) if totals["tokens"] else None,
        "config": cfg.to_dict(),
        "versions": {"electra_ray": __version__, "ray": ray.__version__},
        "seconds": round(time.time() - t0, 2),
        "shards_resumed": len(done),
    }
    manifest = json.loads(json.dumps(manifest))
    storage.write_json(manifest_uri, manifest)
    return manifest


class _FileEncoder:
    """Actor: the instances of whole corpus shards, as rows (for :func:`instances_dataset`)."""

    def __init__(self, tokenizer: str, max_len: int, seed: int, short_prob: float, ids_dtype: str) -> None:
        self.enc = JapaneseWordPieceTokenizer.from_pretrained(local_tokenizer(tokenizer))
        self.kw = {"max_len": max_len, "seed": seed, "short_prob": short_prob}
        self.type = pa.uint16() if ids_dtype == "uint16" else pa.int32()

    def __call__(self, batch: pa.Table) -> pa.Table:
        from electra_ray.data.vocab import read_corpus_file

        inst = []
        for uri in batch.column("file").to_pylist():
            inst.extend(encode_documents(read_corpus_file(uri), self.enc, stats=Counter(), **self.kw))
        return instances_table(inst, self.type)


def instances_dataset(
    corpus: str,
    tokenizer: str,
    *,
    max_seq_length: int = 128,
    seed: int = 12345,
    short_seq_prob: float = 0.05,
    max_workers: int | None = None,
):
    """The instances as a Ray Dataset (object store, no Parquet written), in corpus order.

    Same rows, same order as the Parquet shards ``tokenize_corpus`` writes with these settings.
    """
    import ray

    from electra_ray.data.vocab import corpus_files

    tok = check_tokenizer(tokenizer, "auto")
    files = corpus_files(corpus)
    ds = ray.data.from_items([{"file": f} for f in files], override_num_blocks=len(files))
    ds = ds.map_batches(
        _FileEncoder,
        fn_constructor_kwargs={
            "tokenizer": tokenizer,
            "max_len": max_seq_length,
            "seed": seed,
            "short_prob": short_seq_prob,
            "ids_dtype": tok["ids_dtype"],
        },
        batch_size=1,
        batch_format="pyarrow",
        compute=actor_pool(max_workers, len(files)),
        num_cpus=1,
    )
    ds.context.execution_options.preserve_order = True
    return ds
