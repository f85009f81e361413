"""Entity statistics as of each event time, vectorised over a whole batch.

For a query (entity e, time t), all from events strictly before t (point-in-time correct):

- each sliding window w: impressions and clicks of e with time in ``[t - w, t)``, exact, from the history
  the job keeps (as long as the longest sliding window);
- each decayed window (time constant c): impressions and clicks weighted by ``exp(-(t - time) / c)``;
- all time: every impression and click of e;

and for each the smoothed CTR ``(clicks + CTR_PRIOR_CLICKS) / (impressions + CTR_PRIOR_IMPRESSIONS)``.
The long horizons do not need the old events: when history is pruned, the events it drops are folded
into one *totals* row per entity (``fold_pruned``): the decayed sums as of a time ``as_of`` and the exact
counts. A query adds the totals, decayed from ``as_of`` to t, to the sums over the history it still holds.
Two batchings of one log fold at different times, so decayed values agree to float rounding, not bit for
bit; counts are exact (and without a fold, as in any log shorter than the longest sliding window, so are
decayed values). Which horizons exist is the home's ``StatHorizons`` (``Settings.horizons``).
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from pipelines.beam.keys import KeySpace, distinct_keys, entity_codes
from pipelines.tables import ALL_TIME, CTR_PRIOR_CLICKS, CTR_PRIOR_IMPRESSIONS, StatHorizons

# Decay weights are exp((time - reference) / constant) with the reference at the entity's oldest event
# in the history, so the running sums stay in float64's range whatever the log's dates: the exponent is
# at most the history's span in time constants. Past this many the sums could overflow.
MAX_DECAY_EXPONENT = 700.0


def totals_schema(entity: str, horizons: StatHorizons) -> pa.Schema:
    """One row per entity: what its events before ``as_of`` (ms), no longer in the history, add up to."""
    fields = [pa.field(entity, pa.string()), pa.field("as_of", pa.int64())]
    for w, _ in horizons.decayed:
        fields += [pa.field(f"impressions_{w}", pa.float64()), pa.field(f"clicks_{w}", pa.float64())]
    fields += [pa.field(f"impressions_{ALL_TIME}", pa.int64()), pa.field(f"clicks_{ALL_TIME}", pa.int64())]
    return pa.schema(fields)


def _by_code(values: np.ndarray, codes: np.ndarray, n: int, fill: float = 0.0) -> np.ndarray:
    out = np.full(n, fill, dtype=values.dtype)
    out[codes] = values
    return out


def fold_pruned(
    history: pa.Table, totals: pa.Table, entity: str, boundary_ms: int, horizons: StatHorizons
) -> tuple[pa.Table, pa.Table]:
    """(history at or after ``boundary_ms``, totals with the events before it folded in, as of it)."""
    times = history["event_time"].to_numpy()
    old = times < boundary_ms
    if not old.any():
        return history, totals
    kept = history.filter(pa.array(~old))
    dropped = history.filter(pa.array(old))
    d_codes, t_codes = entity_codes(dropped[entity], totals[entity])
    n = int(max(d_codes.max(initial=-1), t_codes.max(initial=-1))) + 1
    names = pa.concat_arrays([dropped[entity].combine_chunks(), totals[entity].combine_chunks()])
    _, first = np.unique(np.concatenate([d_codes, t_codes]), return_index=True)
    touched = np.zeros(n, dtype=bool)
    touched[d_codes] = True
    in_totals = np.zeros(n, dtype=bool)
    in_totals[t_codes] = True
    codes = np.flatnonzero(touched | in_totals)
    as_of = _by_code(totals["as_of"].to_numpy(), t_codes, n, fill=boundary_ms)
    click = dropped["is_click"].to_numpy(zero_copy_only=False).astype(bool)
    d_times = times[old]
    columns: dict[str, object] = {entity: names.take(pa.array(first[codes]))}
    columns["as_of"] = np.where(touched, boundary_ms, as_of)[codes]
    for w, constant in horizons.decayed:
        weight = np.exp(-(boundary_ms - d_times) / (constant * 1000.0))
        carry = np.exp(-(boundary_ms - as_of) / (constant * 1000.0))
        for stat, mask in (("impressions", ~click), ("clicks", click)):
            before = _by_code(totals[f"{stat}_{w}"].to_numpy(), t_codes, n)
            added = np.bincount(d_codes, weights=weight * mask, minlength=n)
            columns[f"{stat}_{w}"] = np.where(touched, before * carry + added, before)[codes]
    for stat, mask in (("impressions", ~click), ("clicks", click)):
        before = _by_code(totals[f"{stat}_{ALL_TIME}"].to_numpy(), t_codes, n)
        added = np.bincount(d_codes, weights=mask, minlength=n).astype(np.int64)
        columns[f"{stat}_{ALL_TIME}"] = (before + added)[codes]
    return kept, pa.table(columns, schema=totals_schema(entity, horizons))


def history_of(events: pa.Table, entity: str) -> pa.Table:
    """The history rows (entity, event_time, is_click) of a canonical event table."""
    return pa.table(
        {
            entity: events[entity],
            "event_time": events["event_time"],
            "is_click": pc.equal(events["type"], "click"),
        }
    )


def prune_history(
    history: pa.Table, totals: pa.Table, entity: str, watermark_ms: int, horizons: StatHorizons
) -> tuple[pa.Table, pa.Table]:
    """Drop history no future query (at or after the watermark) needs for a sliding window, folding it
    into the entity's totals for the long horizons: (history kept, totals)."""
    return fold_pruned(history, totals, entity, watermark_ms - horizons.longest_sliding_s * 1000, horizons)


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


def window_stats(
    history: pa.Table, events: pa.Table, entity: str, horizons: StatHorizons, totals: pa.Table | None = None
) -> pa.Table:
    """Statistics of ``entity`` at each distinct (entity, event_time) of ``events``, from ``history``
    (which must hold every event of those entities since their ``totals`` row's ``as_of``, or ever).

    One sort of the history answers every window: with the cumulative click count along the sorted
    keys, a window's impressions and clicks both come from the same two bisections.
    """
    totals = totals if totals is not None else totals_schema(entity, horizons).empty_table()
    h_codes, e_codes, t_codes = entity_codes(history[entity], events[entity], totals[entity])
    h_times = history["event_time"].to_numpy()
    e_times = events["event_time"].to_numpy()
    n_codes = int(max(h_codes.max(initial=-1), e_codes.max(initial=-1), t_codes.max(initial=-1))) + 1
    space = KeySpace.covering([h_times, e_times], horizons.longest_sliding_s * 1000, n_codes)
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

    def put(name: str, impressions: np.ndarray, clicks: np.ndarray) -> None:
        columns[f"impressions_{name}"] = impressions
        columns[f"clicks_{name}"] = clicks
        columns[f"ctr_{name}"] = (clicks + CTR_PRIOR_CLICKS) / (impressions + CTR_PRIOR_IMPRESSIONS)

    for name, seconds in horizons.sliding:
        since = np.searchsorted(h_keys, q_keys - seconds * 1000, side="left")
        clicks = clicks_before[upto] - clicks_before[since]
        put(name, (upto - since) - clicks, clicks)
    # The long horizons: the entity's whole history in this table, plus its totals row.
    q_codes = e_codes[first]
    q_times = e_times[first]

    def carried(column: str) -> np.ndarray:
        return _by_code(totals[column].to_numpy(), t_codes, n_codes)[q_codes]

    start = np.searchsorted(h_keys, space.entity_start(q_codes), side="left")
    seen = upto > start  # queries with history of their entity before them
    entity_of = h_codes[order]  # sorted by key: each entity's events together, oldest first
    sorted_times = h_times[order]
    # Each event's and each query's entity's oldest event: where the entity's run of keys starts.
    oldest_of_event = sorted_times[np.searchsorted(h_keys, space.entity_start(entity_of), side="left")]
    since_oldest = (sorted_times - oldest_of_event).astype(np.float64)
    query_age = (q_times[seen] - sorted_times[start[seen]]).astype(np.float64)
    span_ms = float(since_oldest.max(initial=0.0))
    for name, constant in horizons.decayed:
        scale = constant * 1000.0
        if span_ms / scale > MAX_DECAY_EXPONENT:
            raise ValueError(
                f"decayed horizon {name}: one entity's events in this batch span {span_ms / scale:.0f} "
                "time constants, more than float64 can sum; use a longer constant, or feed the log "
                "through Kafka in smaller batches"
            )
        weight = np.exp(since_oldest / scale)
        carry = np.exp(-(q_times - carried("as_of")) / scale)
        sums = []
        for stat, mask in (("impressions", is_click == 0), ("clicks", is_click == 1)):
            # Running sums per entity, not across entities: a query's sum then depends only on its
            # entity's events, so one log gives the same value however it was batched.
            running = pd.Series(weight * mask).groupby(entity_of, sort=False).cumsum().to_numpy()
            recent = np.zeros(len(q_codes))
            with np.errstate(divide="ignore"):  # log(0) = -inf: no such event yet, a sum of 0
                recent[seen] = np.exp(np.log(running[upto[seen] - 1]) - query_age / scale)
            sums.append(recent + carried(f"{stat}_{name}") * carry)
        put(name, *sums)
    clicks = clicks_before[upto] - clicks_before[start]
    put(ALL_TIME, (upto - start) - clicks + carried(f"impressions_{ALL_TIME}"),
        clicks + carried(f"clicks_{ALL_TIME}"))
    return pa.table(columns)
