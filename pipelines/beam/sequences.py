"""The user's last N clicked items (ids, categories, times) as of each impression, vectorised.

Only clicks strictly before the impression's time count; lists run oldest -> newest.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from pipelines.beam.keys import KeySpace, entity_codes
from pipelines.events import stable_int_id

# Category id of a click whose category is unknown (neither on the click nor on its impression).
UNKNOWN_CATEGORY = 0

CLICK_HISTORY_SCHEMA = pa.schema(
    [
        pa.field("user_id", pa.string()),
        pa.field("event_time", pa.int64()),
        pa.field("item_int", pa.int64()),
        pa.field("category_int", pa.int64()),
    ]
)


def int_ids(values: pa.Array | pa.ChunkedArray, missing: int = UNKNOWN_CATEGORY) -> np.ndarray:
    """events.stable_int_id of each string, computed once per distinct value."""
    if len(values) == 0:
        return np.zeros(0, dtype=np.int64)
    encoded = pc.dictionary_encode(values)
    if isinstance(encoded, pa.ChunkedArray):
        encoded = encoded.combine_chunks()
    mapped = np.fromiter(
        (stable_int_id(v) for v in encoded.dictionary.to_pylist()),
        dtype=np.int64,
        count=len(encoded.dictionary),
    )
    idx = encoded.indices
    out = np.full(len(idx), missing, dtype=np.int64)
    valid = idx.is_valid().to_numpy(zero_copy_only=False)
    out[valid] = mapped[idx.fill_null(0).to_numpy(zero_copy_only=False)[valid]]
    return out


def click_history_of(clicks: pa.Table, category: pa.Array | pa.ChunkedArray) -> pa.Table:
    """Compact click rows for sequences; ``category`` is each click's resolved category (may be null)."""
    return pa.table(
        {
            "user_id": clicks["user_id"],
            "event_time": clicks["event_time"],
            "item_int": int_ids(clicks["item_id"]),
            "category_int": int_ids(category),
        },
        schema=CLICK_HISTORY_SCHEMA,
    )


def keep_last_clicks(history: pa.Table, n: int) -> pa.Table:
    """The last ``n`` clicks of every user (all a future sequence can show)."""
    if history.num_rows == 0:
        return history
    (codes,) = entity_codes(history["user_id"])
    times = history["event_time"].to_numpy()
    order = np.lexsort((times, codes))
    codes_sorted = codes[order]
    # Rank from the end within each user: keep rows with fewer than n later rows of the same user.
    group_end = np.searchsorted(codes_sorted, codes_sorted, side="right")
    keep = order[(group_end - np.arange(len(order))) <= n]
    return history.take(pa.array(np.sort(keep)))


def last_n_sequences(history: pa.Table, points: pa.Table, n: int) -> pa.Table:
    """For each (user_id, event_time) in ``points``: the last ``n`` clicks in ``history`` before it."""
    h_codes, q_codes = entity_codes(history["user_id"], points["user_id"])
    h_times = history["event_time"].to_numpy()
    q_times = points["event_time"].to_numpy()
    num_codes = int(max(h_codes.max(initial=-1), q_codes.max(initial=-1))) + 1
    space = KeySpace.covering([h_times, q_times], 0, num_codes)
    h_keys = space.key(h_codes, h_times)
    order = np.argsort(h_keys, kind="stable")
    sorted_keys = h_keys[order]
    end = np.searchsorted(sorted_keys, space.key(q_codes, q_times), side="left")
    first = np.searchsorted(sorted_keys, space.entity_start(q_codes), side="left")
    start = np.maximum(first, end - n)
    lengths = end - start
    offsets = np.zeros(len(lengths) + 1, dtype=np.int32)
    np.cumsum(lengths, out=offsets[1:])
    gather = order[np.arange(offsets[-1]) - np.repeat(offsets[:-1], lengths) + np.repeat(start, lengths)]
    off = pa.array(offsets, pa.int32())

    def as_list(column: str) -> pa.ListArray:
        values = history[column].to_numpy()[gather]
        return pa.ListArray.from_arrays(off, pa.array(values, pa.int64()))

    return pa.table(
        {
            "user_id": points["user_id"],
            "event_time": points["event_time"],
            "seq_item_ids": as_list("item_int"),
            "seq_category_ids": as_list("category_int"),
            "seq_event_times": as_list("event_time"),
            "seq_length": pa.array(lengths, pa.int32()),
        }
    )
