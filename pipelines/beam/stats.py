"""Sliding-window entity statistics as of each event time, vectorised over a whole batch.

For a query (entity e, time t) and each window w: impressions and clicks of e with time in
``[t - w, t)`` (strictly before t: point-in-time correct), and the smoothed CTR
``(clicks + CTR_PRIOR_CLICKS) / (impressions + CTR_PRIOR_IMPRESSIONS)``.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from pipelines.beam.keys import KeySpace, entity_codes
from pipelines.tables import CTR_PRIOR_CLICKS, CTR_PRIOR_IMPRESSIONS, STAT_WINDOWS

MAX_WINDOW_MS = max(STAT_WINDOWS.values()) * 1000


def history_of(events: pa.Table, entity: str) -> pa.Table:
    """The history rows (entity, event_time, is_click) of a canonical event table."""
    return pa.table(
        {
            entity: events[entity],
            "event_time": events["event_time"],
            "is_click": pc.equal(events["type"], "click"),
        }
    )


def prune_history(history: pa.Table, watermark_ms: int) -> pa.Table:
    """Drop history that no future query (at or after the watermark) can see."""
    return history.filter(pc.greater_equal(history["event_time"], watermark_ms - MAX_WINDOW_MS))


def distinct_points(events: pa.Table, entity: str) -> pa.Table:
    """Distinct (entity, event_time) pairs: one statistics row per entity per instant."""
    if events.num_rows == 0:
        return events.select([entity, "event_time"])
    (codes,) = entity_codes(events[entity])
    times = events["event_time"].to_numpy()
    space = KeySpace.covering([times], 0, int(codes.max()) + 1)
    _, first = np.unique(space.key(codes, times), return_index=True)
    return events.select([entity, "event_time"]).take(pa.array(first))


def window_stats(history: pa.Table, points: pa.Table, entity: str) -> pa.Table:
    """Statistics of ``entity`` at each row of ``points`` from ``history`` (must contain all events
    of those entities in the last 7 days before each point)."""
    h_codes, q_codes = entity_codes(history[entity], points[entity])
    h_times = history["event_time"].to_numpy()
    q_times = points["event_time"].to_numpy()
    space = KeySpace.covering(
        [h_times, q_times], MAX_WINDOW_MS, int(max(h_codes.max(initial=-1), q_codes.max(initial=-1))) + 1
    )
    h_keys = space.key(h_codes, h_times)
    # Sorted queries make the bisections walk memory in order (several times faster than random).
    q_order = np.argsort(space.key(q_codes, q_times), kind="stable")
    points = points.take(pa.array(q_order))
    q_keys = space.key(q_codes[q_order], q_times[q_order])
    is_click = history["is_click"].to_numpy(zero_copy_only=False).astype(bool)
    sorted_by_kind = {"impressions": np.sort(h_keys[~is_click]), "clicks": np.sort(h_keys[is_click])}
    columns: dict[str, object] = {entity: points[entity], "event_time": points["event_time"]}
    for name, seconds in STAT_WINDOWS.items():
        counts = {}
        for kind, keys in sorted_by_kind.items():
            upto = np.searchsorted(keys, q_keys, side="left")
            since = np.searchsorted(keys, q_keys - seconds * 1000, side="left")
            counts[kind] = upto - since
        columns[f"impressions_{name}"] = counts["impressions"]
        columns[f"clicks_{name}"] = counts["clicks"]
        columns[f"ctr_{name}"] = (counts["clicks"] + CTR_PRIOR_CLICKS) / (
            counts["impressions"] + CTR_PRIOR_IMPRESSIONS
        )
    return pa.table(columns)
