"""Sliding-window entity statistics as of each event time, vectorised over a whole batch.

For a query (entity e, time t) and each window w: impressions and clicks of e with time in
``[t - w, t)`` (strictly before t: point-in-time correct), and the smoothed CTR
``(clicks + CTR_PRIOR_CLICKS) / (impressions + CTR_PRIOR_IMPRESSIONS)``.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from pipelines.beam.keys import KeySpace, distinct_keys, entity_codes
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
    _, first = distinct_keys(space.key(codes, times))
    return events.select([entity, "event_time"]).take(pa.array(first))


def drop_seen_points(events: pa.Table, seen: pa.Table, entity: str) -> pa.Table:
    """The rows of ``events`` whose (entity, event_time) is not in ``seen`` (the history of earlier
    batches): an instant an earlier batch already produced a row for gets no second row when a late
    event at that same instant arrives (e.g. the rest of a request cut off by a run's high-water
    marks, read after the watermark had passed it). Such a row would repeat the earlier one anyway:
    statistics count only events strictly before the instant."""
    if events.num_rows == 0 or seen.num_rows == 0:
        return events
    times = events["event_time"].to_numpy()
    # Only history at or after the batch's earliest instant can collide; usually a short tail.
    seen = seen.filter(pc.greater_equal(seen["event_time"], int(times.min())))
    if seen.num_rows == 0:
        return events
    e_codes, s_codes = entity_codes(events[entity], seen[entity])
    s_times = seen["event_time"].to_numpy()
    space = KeySpace.covering([times, s_times], 0, int(max(e_codes.max(), s_codes.max())) + 1)
    fresh = ~np.isin(space.key(e_codes, times), space.key(s_codes, s_times))
    return events if fresh.all() else events.filter(pa.array(fresh))


def window_stats(history: pa.Table, events: pa.Table, entity: str) -> pa.Table:
    """Statistics of ``entity`` at each distinct (entity, event_time) of ``events``, from ``history``
    (which must hold every event of those entities in the 7 days before each point).

    One sort of the history answers every window: with the cumulative click count along the sorted
    keys, a window's impressions and clicks both come from the same two bisections.
    """
    h_codes, e_codes = entity_codes(history[entity], events[entity])
    h_times = history["event_time"].to_numpy()
    e_times = events["event_time"].to_numpy()
    space = KeySpace.covering(
        [h_times, e_times], MAX_WINDOW_MS, int(max(h_codes.max(initial=-1), e_codes.max(initial=-1))) + 1
    )
    # Distinct query keys come out sorted, so the bisections below walk memory in order.
    q_keys, first = distinct_keys(space.key(e_codes, e_times))
    points = events.select([entity, "event_time"]).take(pa.array(first))
    h_keys = space.key(h_codes, h_times)
    order = np.argsort(h_keys)  # ties need no order: counts are read at the edges of equal runs
    h_keys = h_keys[order]
    is_click = history["is_click"].to_numpy(zero_copy_only=False).astype(np.int64)[order]
    clicks_before = np.zeros(len(h_keys) + 1, dtype=np.int64)
    np.cumsum(is_click, out=clicks_before[1:])
    upto = np.searchsorted(h_keys, q_keys, side="left")
    columns: dict[str, object] = {entity: points[entity], "event_time": points["event_time"]}
    for name, seconds in STAT_WINDOWS.items():
        since = np.searchsorted(h_keys, q_keys - seconds * 1000, side="left")
        clicks = clicks_before[upto] - clicks_before[since]
        impressions = (upto - since) - clicks
        columns[f"impressions_{name}"] = impressions
        columns[f"clicks_{name}"] = clicks
        columns[f"ctr_{name}"] = (clicks + CTR_PRIOR_CLICKS) / (impressions + CTR_PRIOR_IMPRESSIONS)
    return pa.table(columns)
