"""The instance set in memory and the sample order that does not depend on the worker count.

The driver loads every instance shard once into three flat arrays (token ids, row offsets, the
start of segment B) and puts them in Ray's object store; workers ``ray.get`` them and read them
zero-copy from the node's shared memory (all of Japanese Wikipedia ≈ 0.7B tokens ≈ 1.5 GB as
uint16). A seeded random slice of ``eval_instances`` rows is held out for evaluation.

Order: a permutation of the training rows seeded by (seed, epoch); data batch ``c`` takes positions
``[c·B, (c+1)·B)`` of the epoch ``c // steps_per_epoch``. The global batch is cut into fixed
micro-batches and a worker of rank r in W takes the contiguous run ``[r·n/W, (r+1)·n/W)`` of its n
micro-batches. The checkpointed cursor c counts global batches (= the step unless a rollback skipped
some), so a resume on any number of workers replays the same samples.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from electra_ray import storage


@dataclass
class InstanceArrays:
    ids: np.ndarray  # flat token ids (uint16 or int32)
    offsets: np.ndarray  # int64, len N+1
    b_start: np.ndarray  # int32, index within the row where segment B starts (= length when none)

    @property
    def n(self) -> int:
        return len(self.offsets) - 1


def instance_shards(folder: str) -> list[str]:
    """The folder's instance shards (Parquet files), in order; a clear error when there are none."""
    files = storage.list_files(folder, ".parquet")
    if not files:
        raise FileNotFoundError(
            f"{folder}: no instance shards (part-*.parquet); run jobs/tokenize_corpus.py first"
        )
    return files


def load_instances(folder: str) -> InstanceArrays:
    files = instance_shards(folder)
    arr = arrays_from_tables(pq.read_table(pa.BufferReader(storage.read_bytes(f))) for f in files)
    if arr.offsets[-1] == 0:
        raise ValueError(f"{folder}: the instance shards are empty")
    return arr


def arrays_from_tables(tables) -> InstanceArrays:
    """Flat arrays from instance tables (columns input_ids, token_type_ids), in order."""
    ids_parts, lengths, b_starts = [], [], []
    for t in tables:
        if t.num_rows == 0:
            continue
        ids_col = t.column("input_ids").combine_chunks()
        types_col = t.column("token_type_ids").combine_chunks()
        ids_parts.append(ids_col.values.to_numpy(zero_copy_only=False))
        offs = ids_col.offsets.to_numpy()
        lens = np.diff(offs)
        lengths.append(lens)
        types = types_col.values.to_numpy(zero_copy_only=False).astype(bool)
        # first index of type 1 in each row (segment B), or the row length
        first_one = np.full(len(lens), -1, dtype=np.int64)
        pos = np.flatnonzero(types)
        if len(pos):
            row = np.searchsorted(offs, pos, side="right") - 1
            first = np.unique(row, return_index=True)
            first_one[first[0]] = pos[first[1]] - offs[first[0]]
        b_starts.append(np.where(first_one < 0, lens, first_one).astype(np.int32))
    if not lengths:
        return InstanceArrays(
            np.zeros(0, dtype=np.uint16), np.zeros(1, dtype=np.int64), np.zeros(0, dtype=np.int32)
        )
    lengths_all = np.concatenate(lengths)
    offsets = np.zeros(len(lengths_all) + 1, dtype=np.int64)
    np.cumsum(lengths_all, out=offsets[1:])
    return InstanceArrays(np.concatenate(ids_parts), offsets, np.concatenate(b_starts))


def split_rows(n: int, eval_instances: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(training rows, held-out rows): a seeded random slice of the instances is held out."""
    order = np.random.default_rng([seed, 0xE7A1]).permutation(n)
    return np.sort(order[eval_instances:]), np.sort(order[:eval_instances])


@lru_cache(maxsize=4)
def epoch_order(n: int, seed: int, epoch: int) -> np.ndarray:
    return np.random.default_rng([seed, epoch]).permutation(n)


def batch_position(step: int, batch_size: int, n_train: int) -> tuple[int, int]:
    """(epoch, batch index within the epoch) of global batch ``step`` (each epoch's remainder is skipped)."""
    per_epoch = n_train // batch_size
    if per_epoch == 0:
        raise ValueError(f"only {n_train} training instances for a global batch of {batch_size}")
    return divmod(step, per_epoch)


def global_rows(step: int, batch_size: int, n_train: int, seed: int) -> np.ndarray:
    """Row indices of global step ``step``'s batch."""
    epoch, k = batch_position(step, batch_size, n_train)
    return epoch_order(n_train, seed, epoch)[k * batch_size : (k + 1) * batch_size]


def build_batch(
    arr: InstanceArrays, rows: np.ndarray, seq_len: int, pad_id: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Padded (input_ids, token_type_ids, attention_mask) int64 arrays of shape (len(rows), seq_len)."""
    b = len(rows)
    ids = np.full((b, seq_len), pad_id, dtype=np.int64)
    types = np.zeros((b, seq_len), dtype=np.int64)
    att = np.zeros((b, seq_len), dtype=np.int64)
    for i, r in enumerate(rows):
        lo, hi = arr.offsets[r], arr.offsets[r + 1]
        n = min(hi - lo, seq_len)
        ids[i, :n] = arr.ids[lo : lo + n]
        att[i, :n] = 1
        types[i, arr.b_start[r] : n] = 1
    return ids, types, att


def rows_digest(rows: np.ndarray, cursor: int) -> int:
    """A checksum of which rows fed which global batch: a 28-bit mix of (row, batch) per row, summed.

    Workers add up the digests of the rows they actually trained on; summed over workers it is the
    same whatever the world size, so two runs that see the same samples in the same batches report
    the same digest (tests compare it across elastic and fixed-size runs).
    """
    salt = np.uint64((cursor * 0xBF58476D1CE4E5B9) & 0xFFFFFFFFFFFFFFFF)
    with np.errstate(over="ignore"):  # arithmetic modulo 2^64 is the point
        x = rows.astype(np.uint64) * np.uint64(0x9E3779B97F4A7C15) + salt
        x ^= x >> np.uint64(31)
        x *= np.uint64(0x94D049BB133111EB)
        x ^= x >> np.uint64(29)
    return int((x >> np.uint64(36)).sum())
