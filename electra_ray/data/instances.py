"""Pretraining instances: a document's sentence ids packed into ``[CLS] A [SEP] B [SEP]`` sequences.

Pure functions, no Ray, deterministic for a seed. Packing follows ELECTRA's pretraining-data
builder in spirit (consecutive sentences of one document fill an instance up to the target length;
the instance is cut into segments A and B at a sentence boundary; a small share of instances gets
a shorter random target length), with one deliberate difference: nothing is lost. ELECTRA's
builder truncates segments that overflow; here a sentence longer than the room is split into
room-sized pieces first (counted), and a chunk never exceeds the room, so every token of every
document lands in exactly one instance, in order.

Randomness comes from a generator seeded by (seed, page id), so the instances of a document do not
depend on how the corpus is sharded or how many workers encode it.
"""

from __future__ import annotations

import random
from collections import Counter
from dataclasses import dataclass

import numpy as np
import pyarrow as pa


@dataclass(frozen=True)
class SpecialIds:
    cls: int
    sep: int


def doc_rng(seed: int, page_id: int) -> random.Random:
    return random.Random((seed * 1_000_003) ^ (page_id * 2_654_435_761))


def pack_document(
    sentences: list[list[int]],
    *,
    max_len: int,
    special: SpecialIds,
    rng: random.Random,
    short_prob: float = 0.05,
    stats: Counter | None = None,
) -> list[tuple[list[int], list[int]]]:
    """Pack one document into (input_ids, token_type_ids) instances of at most ``max_len`` tokens."""
    if max_len < 5:
        raise ValueError(f"max_len must be at least 5, got {max_len}")
    stats = stats if stats is not None else Counter()
    room_max = max_len - 3  # [CLS] A [SEP] B [SEP]
    pieces: list[list[int]] = []
    for s in sentences:
        if not s:
            stats["empty_sentences"] += 1
            continue
        if len(s) > room_max:
            stats["sentences_split"] += 1
            pieces.extend(s[i : i + room_max] for i in range(0, len(s), room_max))
        else:
            pieces.append(s)

    def target() -> int:
        if rng.random() < short_prob:
            stats["short_targets"] += 1
            return rng.randint(2, room_max)
        return room_max

    out: list[tuple[list[int], list[int]]] = []
    chunk: list[list[int]] = []
    length = 0
    room = target()
    for p in pieces:
        if chunk and length + len(p) > room:
            out.append(_instance(chunk, special, rng))
            chunk, length, room = [], 0, target()
        chunk.append(p)
        length += len(p)
    if chunk:
        out.append(_instance(chunk, special, rng))
    return out


def _instance(chunk: list[list[int]], special: SpecialIds, rng: random.Random) -> tuple[list[int], list[int]]:
    """Cut a chunk into A and B at a sentence boundary (single segment when it has one sentence)."""
    if len(chunk) == 1:
        a, b = chunk[0], []
    else:
        k = rng.randint(1, len(chunk) - 1)
        a = [t for s in chunk[:k] for t in s]
        b = [t for s in chunk[k:] for t in s]
    ids = [special.cls, *a, special.sep]
    types = [0] * len(ids)
    if b:
        ids += [*b, special.sep]
        types += [1] * (len(b) + 1)
    return ids, types


def id_type(vocab_size: int, compact: bool = True) -> pa.DataType:
    """uint16 when the vocabulary fits (half the bytes of int32), else int32."""
    return pa.uint16() if compact and vocab_size <= 65536 else pa.int32()


INSTANCE_FIELDS = ("input_ids", "token_type_ids")


def instances_table(instances: list[tuple[list[int], list[int]]], ids_type: pa.DataType) -> pa.Table:
    """Rows (input_ids list<uint16|int32>, token_type_ids list<uint8>), built without per-token Python objects."""
    lengths = np.fromiter((len(i) for i, _ in instances), dtype=np.int32, count=len(instances))
    offsets = np.zeros(len(instances) + 1, dtype=np.int32)
    np.cumsum(lengths, out=offsets[1:])
    np_ids = np.fromiter(
        (t for i, _ in instances for t in i), dtype=ids_type.to_pandas_dtype(), count=int(offsets[-1])
    )
    np_types = np.fromiter((t for _, ty in instances for t in ty), dtype=np.uint8, count=int(offsets[-1]))
    off = pa.array(offsets)
    return pa.table(
        {
            "input_ids": pa.ListArray.from_arrays(off, pa.array(np_ids, type=ids_type)),
            "token_type_ids": pa.ListArray.from_arrays(off, pa.array(np_types, type=pa.uint8())),
        }
    )
