"""Stable entity sharding: the same id always lands in the same shard, in every process and run."""

from __future__ import annotations

import zlib

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc


def shard_of(ids: pa.Array | pa.ChunkedArray, num_shards: int) -> np.ndarray:
    """Shard number of each id (crc32, computed once per distinct id: ids repeat a lot)."""
    if num_shards == 1 or len(ids) == 0:
        return np.zeros(len(ids), dtype=np.int64)
    encoded = pc.dictionary_encode(ids)
    if isinstance(encoded, pa.ChunkedArray):
        encoded = (
            encoded.combine_chunks()
            if encoded.num_chunks
            else pa.array([], pa.dictionary(pa.int32(), pa.string()))
        )
    per_value = np.fromiter(
        (zlib.crc32(v.encode()) % num_shards for v in encoded.dictionary.to_pylist()),
        dtype=np.int64,
        count=len(encoded.dictionary),
    )
    return per_value[encoded.indices.to_numpy(zero_copy_only=False)]


def split_by_shard(table: pa.Table, column: str, num_shards: int) -> dict[int, pa.Table]:
    """The rows of ``table`` per shard of ``column`` (shards without rows are left out)."""
    shard = shard_of(table[column], num_shards)
    order = np.argsort(shard, kind="stable")
    bounds = np.searchsorted(shard[order], np.arange(num_shards + 1))
    taken = table.take(pa.array(order))
    return {
        s: taken.slice(bounds[s], bounds[s + 1] - bounds[s])
        for s in range(num_shards)
        if bounds[s + 1] > bounds[s]
    }


def rows_of_shard(table: pa.Table, column: str, shard: int, num_shards: int) -> pa.Table:
    return table.filter(pa.array(shard_of(table[column], num_shards) == shard))
