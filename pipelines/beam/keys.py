"""Composite (entity, time) keys: one sorted int64 array answers "events of e before t" by bisection."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

_INT63 = (1 << 63) - 1


def entity_codes(*columns: pa.Array | pa.ChunkedArray) -> list[np.ndarray]:
    """Integer codes for string ids, consistent across all given columns."""
    lengths = [len(c) for c in columns]
    chunks = []
    for c in columns:
        chunks += c.chunks if isinstance(c, pa.ChunkedArray) else [c]
    if not chunks:
        return [np.zeros(0, np.int64) for _ in columns]
    combined = pa.chunked_array(chunks, type=pa.string()).combine_chunks()
    codes = pc.dictionary_encode(combined).indices.to_numpy(zero_copy_only=False).astype(np.int64)
    out, at = [], 0
    for n in lengths:
        out.append(codes[at : at + n])
        at += n
    return out


@dataclass(frozen=True)
class KeySpace:
    """Maps (code, time_ms) to ``code * span + (time - origin)``, order-preserving per entity.

    ``lookback_ms`` of headroom below every entity's earliest time keeps ``key - lookback`` inside the
    same entity's range, so window starts never spill into the previous entity.
    """

    origin: int
    span: int

    @classmethod
    def covering(cls, times: list[np.ndarray], lookback_ms: int, num_codes: int) -> KeySpace:
        present = [t for t in times if len(t)]
        if not present:
            return cls(0, lookback_ms + 1)
        lo = min(int(t.min()) for t in present)
        hi = max(int(t.max()) for t in present)
        span = hi - lo + lookback_ms + 1
        if num_codes * span > _INT63:
            raise OverflowError(
                f"{num_codes} entities x {span} ms do not fit one int64 key space; process a shorter "
                "time range per batch or use more shards"
            )
        return cls(lo - lookback_ms, span)

    def key(self, codes: np.ndarray, times: np.ndarray) -> np.ndarray:
        return codes * self.span + (times - self.origin)

    def entity_start(self, codes: np.ndarray) -> np.ndarray:
        return codes * self.span


def distinct_keys(keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(sorted distinct keys, the index of one occurrence of each).

    Like ``np.unique(..., return_index=True)`` but with the 3x faster unstable sort: callers only use
    the index to fetch values that are equal across all occurrences of a key.
    """
    order = np.argsort(keys)
    ordered = keys[order]
    head = np.empty(len(ordered), dtype=bool)
    head[:1] = True
    np.not_equal(ordered[1:], ordered[:-1], out=head[1:])
    return ordered[head], order[head]
