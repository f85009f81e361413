"""One micro-batch of one shard, as pure functions: (state, new events, watermark) -> (rows, state).

Events at or after the watermark wait in state ("held"); everything before it is "ready" and produces
rows. Duplicate impressions are found among the ready ones (every earlier copy has arrived by then)
and feed no user-side row (label, statistics, sequence); they come back as rows to dead-letter.
``watermark_ms=None`` means a finished log (final): everything is ready and every pending
impression is labelled.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from pipelines.beam.attribution import CLICK_SCHEMA, attribute, first_occurrences
from pipelines.beam.parse import SOURCED_EVENT_SCHEMA
from pipelines.beam.sequences import click_history_of, keep_last_clicks, last_n_sequences
from pipelines.beam.stats import distinct_points, drop_seen_points, history_of, prune_history, window_stats
from pipelines.events import CLICK, EVENT_SCHEMA, IMPRESSION
from pipelines.tables import StatHorizons


@dataclass
class UserShardState:
    held: pa.Table
    user_history: pa.Table
    user_totals: pa.Table
    click_history: pa.Table
    pending_impressions: pa.Table
    pending_clicks: pa.Table
    recent: pa.Table
    first_seen: pa.Table


USER_STATE_KINDS = tuple(UserShardState.__dataclass_fields__)


@dataclass
class ItemShardState:
    held: pa.Table
    item_history: pa.Table
    item_totals: pa.Table


# The only columns item statistics and attributes need: item shards carry these instead of whole events.
ITEM_EVENT_SCHEMA = pa.schema(
    [EVENT_SCHEMA.field(n) for n in ("item_id", "event_time", "type", "category")]
)


def split_ready(
    held: pa.Table, new: pa.Table, watermark_ms: int | None, schema: pa.Schema = EVENT_SCHEMA
) -> tuple[pa.Table, pa.Table]:
    """(ready events, events still held back), both with ``schema``'s columns; no order is needed
    downstream (the cores sort keys)."""
    events = pa.concat_tables([held.select(schema.names).cast(schema), new.select(schema.names).cast(schema)])
    if watermark_ms is None:
        ready, waiting = events, schema.empty_table()
    else:
        early = pc.less(events["event_time"], watermark_ms)
        ready, waiting = events.filter(early), events.filter(pc.invert(early))
    return ready, waiting


def _prune_point(ready: pa.Table, watermark_ms: int | None) -> int | None:
    if watermark_ms is not None:
        return watermark_ms
    return pc.max(ready["event_time"]).as_py() if ready.num_rows else None


def user_shard_step(
    state: UserShardState,
    new: pa.Table,
    watermark_ms: int | None,
    window_ms: int,
    sequence_length: int,
    dedup_window_ms: int,
    horizons: StatHorizons,
) -> tuple[dict[str, pa.Table], UserShardState]:
    """Labelled samples, unattributed clicks, user stats and sequences for one user shard, and under
    "duplicates" the ready impressions (SOURCED_EVENT_SCHEMA) that repeat an earlier id."""
    ready, held = split_ready(state.held, new, watermark_ms, SOURCED_EVENT_SCHEMA)
    imp_rows = np.flatnonzero(pc.equal(ready["type"], IMPRESSION).to_numpy(zero_copy_only=False))
    checked = first_occurrences(ready.take(pa.array(imp_rows)), state.first_seen, dedup_window_ms)
    duplicates = ready.take(pa.array(imp_rows[checked.duplicate]))
    if duplicates.num_rows:
        keep = np.ones(ready.num_rows, dtype=bool)
        keep[imp_rows[checked.duplicate]] = False
        ready = ready.filter(pa.array(keep))
    ready = ready.select(EVENT_SCHEMA.names)
    is_imp = pc.equal(ready["type"], IMPRESSION)
    impressions = ready.filter(is_imp)
    clicks = ready.filter(pc.equal(ready["type"], CLICK))

    history = pa.concat_tables([state.user_history, history_of(ready, "user_id")])
    # One row per distinct (entity, event time), across batches too (see drop_seen_points).
    user_stats = window_stats(history, drop_seen_points(ready, state.user_history, "user_id"), "user_id",
                              horizons, state.user_totals)
    seen_impressions = state.user_history.filter(pc.invert(state.user_history["is_click"]))

    attributed = attribute(
        pa.concat_tables([state.pending_impressions, impressions]),
        pa.concat_tables([state.pending_clicks, clicks.select(CLICK_SCHEMA.names)]),
        state.recent,
        window_ms,
        watermark_ms,
    )
    # The new clicks are the tail of attribute's clicks; their categories go into the click history.
    categories = attributed.click_categories.slice(state.pending_clicks.num_rows)
    all_clicks = pa.concat_tables([state.click_history, click_history_of(clicks, categories)])
    points = distinct_points(drop_seen_points(impressions, seen_impressions, "user_id"), "user_id")
    sequences = last_n_sequences(all_clicks, points, sequence_length)
    prune_at = _prune_point(ready, watermark_ms)
    seen = checked.seen
    if prune_at is not None:  # an id older than the window before every future event is never repeated
        seen = seen.filter(pc.greater_equal(seen["event_time"], prune_at - dedup_window_ms))
    totals = state.user_totals
    if prune_at is not None:
        history, totals = prune_history(history, totals, "user_id", prune_at, horizons)
    next_state = UserShardState(
        held=held,
        user_history=history,
        user_totals=totals,
        click_history=keep_last_clicks(all_clicks, sequence_length),
        pending_impressions=attributed.pending_impressions,
        pending_clicks=attributed.pending_clicks,
        recent=attributed.recent,
        first_seen=seen,
    )
    rows = {
        "labelled_samples": attributed.labelled,
        "unattributed_clicks": attributed.aside,
        "user_stats": user_stats,
        "user_sequences": sequences,
        "duplicates": duplicates,
    }
    return rows, next_state


def item_shard_step(
    state: ItemShardState, new: pa.Table, watermark_ms: int | None, horizons: StatHorizons
) -> tuple[dict[str, pa.Table], ItemShardState]:
    """Item stats and attributes for one item shard; returns the rows and the item state to keep (its
    ``held`` is not the step's: the user shards keep held events).

    ``new`` needs only ITEM_EVENT_SCHEMA's columns; held events belong to the user shards (they keep
    them in state), this step only reads them."""
    ready, _ = split_ready(state.held, new, watermark_ms, ITEM_EVENT_SCHEMA)
    history = pa.concat_tables([state.item_history, history_of(ready, "item_id")])
    item_stats = window_stats(history, drop_seen_points(ready, state.item_history, "item_id"), "item_id",
                              horizons, state.item_totals)
    prune_at = _prune_point(ready, watermark_ms)
    rows = {"item_stats": item_stats, "item_attributes": item_attributes(ready)}
    totals = state.item_totals
    if prune_at is not None:
        history, totals = prune_history(history, totals, "item_id", prune_at, horizons)
    return rows, ItemShardState(state.held, history, totals)


def item_attributes(events: pa.Table) -> pa.Table:
    """Each item's category as of its impressions: the first impression of the item in ``events`` and
    every later one whose category differs from the item's previous impression (no state is needed:
    a value repeated by the next batch is harmless, the newest row wins online and in ASOF joins)."""
    shown = events.filter(pc.and_(pc.equal(events["type"], IMPRESSION), pc.is_valid(events["category"])))
    shown = shown.select(["item_id", "event_time", "category"]).sort_by(
        [("item_id", "ascending"), ("event_time", "ascending")]
    )
    if shown.num_rows <= 1:
        return shown
    items, categories = shown["item_id"].combine_chunks(), shown["category"].combine_chunks()
    changed = pc.or_(pc.not_equal(items[1:], items[:-1]), pc.not_equal(categories[1:], categories[:-1]))
    return shown.filter(pa.concat_arrays([pa.array([True]), changed]))
