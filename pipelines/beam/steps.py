"""One micro-batch of one shard, as pure functions: (state, new events, watermark) -> (rows, state).

Events at or after the watermark wait in state ("held"); everything before it is "ready" and produces
rows. ``watermark_ms=None`` means a finished log (final): everything is ready and every pending
impression is labelled.
"""

from __future__ import annotations

from dataclasses import dataclass

import pyarrow as pa
import pyarrow.compute as pc

from pipelines.beam.attribution import CLICK_SCHEMA, RECENT_RETENTION_MS, RECENT_SCHEMA, attribute
from pipelines.beam.sequences import click_history_of, keep_last_clicks, last_n_sequences
from pipelines.beam.stats import distinct_points, history_of, prune_history, window_stats
from pipelines.events import CLICK, EVENT_SCHEMA, IMPRESSION


@dataclass
class UserShardState:
    held: pa.Table
    user_history: pa.Table
    click_history: pa.Table
    pending_impressions: pa.Table
    pending_clicks: pa.Table
    recent: pa.Table


@dataclass
class ItemShardState:
    held: pa.Table
    item_history: pa.Table


def split_ready(held: pa.Table, new: pa.Table, watermark_ms: int | None) -> tuple[pa.Table, pa.Table]:
    """(ready events, events still held back); no order is needed downstream (the cores sort keys)."""
    events = pa.concat_tables([held.cast(EVENT_SCHEMA), new.cast(EVENT_SCHEMA)])
    if watermark_ms is None:
        ready, waiting = events, EVENT_SCHEMA.empty_table()
    else:
        early = pc.less(events["event_time"], watermark_ms)
        ready, waiting = events.filter(early), events.filter(pc.invert(early))
    return ready, waiting


def _prune_point(ready: pa.Table, watermark_ms: int | None) -> int | None:
    if watermark_ms is not None:
        return watermark_ms
    return pc.max(ready["event_time"]).as_py() if ready.num_rows else None


def _click_categories(clicks: pa.Table, impressions: pa.Table) -> pa.Array:
    """A click's category: its own when present, else its impression's if the click came at most
    RECENT_RETENTION_MS after it (as long as the job remembers impressions); else null."""
    own = clicks["category"].combine_chunks()
    if impressions.num_rows == 0:
        return own
    idx = pc.index_in(clicks["impression_id"], value_set=impressions["impression_id"].combine_chunks())
    from_imp = pc.take(impressions["category"].combine_chunks(), idx)
    delay = pc.subtract(clicks["event_time"], pc.take(impressions["event_time"].combine_chunks(), idx))
    remembered = pc.and_(pc.greater_equal(delay, 0), pc.less_equal(delay, RECENT_RETENTION_MS))
    return pc.coalesce(own, pc.if_else(remembered, from_imp, pa.scalar(None, pa.string())))


def user_shard_step(
    state: UserShardState, new: pa.Table, watermark_ms: int | None, window_ms: int, sequence_length: int
) -> tuple[dict[str, pa.Table], UserShardState]:
    """Labelled samples, unattributed clicks, user stats and sequences for one user shard."""
    ready, held = split_ready(state.held, new, watermark_ms)
    is_imp = pc.equal(ready["type"], IMPRESSION)
    impressions = ready.filter(is_imp)
    clicks = ready.filter(pc.equal(ready["type"], CLICK))

    history = pa.concat_tables([state.user_history, history_of(ready, "user_id")])
    user_stats = window_stats(history, distinct_points(ready, "user_id"), "user_id")

    known_impressions = pa.concat_tables([state.pending_impressions, impressions])
    remembered = pa.concat_tables(
        [known_impressions.select(RECENT_SCHEMA.names).cast(RECENT_SCHEMA), state.recent.cast(RECENT_SCHEMA)]
    )
    click_rows = click_history_of(clicks, _click_categories(clicks, remembered))
    all_clicks = pa.concat_tables([state.click_history, click_rows])
    sequences = last_n_sequences(all_clicks, distinct_points(impressions, "user_id"), sequence_length)

    attributed = attribute(
        known_impressions,
        pa.concat_tables([state.pending_clicks, clicks.select(CLICK_SCHEMA.names)]),
        state.recent,
        window_ms,
        watermark_ms,
    )
    prune_at = _prune_point(ready, watermark_ms)
    next_state = UserShardState(
        held=held,
        user_history=prune_history(history, prune_at) if prune_at is not None else history,
        click_history=keep_last_clicks(all_clicks, sequence_length),
        pending_impressions=attributed.pending_impressions,
        pending_clicks=attributed.pending_clicks,
        recent=attributed.recent,
    )
    rows = {
        "labelled_samples": attributed.labelled,
        "unattributed_clicks": attributed.aside,
        "user_stats": user_stats,
        "user_sequences": sequences,
    }
    return rows, next_state


def item_shard_step(
    state: ItemShardState, new: pa.Table, watermark_ms: int | None
) -> tuple[dict[str, pa.Table], pa.Table]:
    """Item stats for one item shard; returns the rows and the item history to keep."""
    ready, _ = split_ready(state.held, new, watermark_ms)
    history = pa.concat_tables([state.item_history, history_of(ready, "item_id")])
    item_stats = window_stats(history, distinct_points(ready, "item_id"), "item_id")
    prune_at = _prune_point(ready, watermark_ms)
    return {"item_stats": item_stats}, prune_history(history, prune_at) if prune_at is not None else history
