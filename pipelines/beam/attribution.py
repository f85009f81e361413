"""Impression <-> click attribution in event time.

A click is attributed to its impression (by ``impression_id``) when
``0 <= click_time - impression_time <= window``. An impression is labelled once its window has closed,
i.e. ``impression_time + window < watermark`` (every click that could count has arrived), or at the end
of a finished log (``watermark=None``: "final" mode, nothing more can come). Clicks that cannot count are
kept aside with a reason instead of being dropped:

- ``after_window``: the impression is known but the click came more than ``window`` after it;
- ``before_impression``: the click's time precedes its impression's;
- ``late``: the impression was already labelled (in an earlier micro-batch) when the click arrived;
- ``no_impression``: no impression with that id arrived within the window.

Duplicate impression ids (``first_occurrences``): per (user, impression id), the first occurrence in
event time (then source offset) wins; a later copy within the dedup window of the surviving one is a
duplicate (the job dead-letters it as ``duplicate_impression_id``), a reuse after the window is a new
impression. The job decides this only for events behind the watermark, when every earlier copy has
arrived, so the outcome does not depend on how the log was cut into batches or shards. An id can thus
have several impressions (reuses); a click attaches to the latest one at or before it.

``attribute`` is the pure, vectorised core used by the micro-batch job; ``AttributeInEventTime`` runs
the same core as a keyed stateful DoFn driven by the watermark, for streaming runners and TestStream.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import apache_beam as beam
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from apache_beam.coders import BytesCoder, VarIntCoder
from apache_beam.transforms.timeutil import TimeDomain
from apache_beam.transforms.userstate import BagStateSpec, ReadModifyWriteStateSpec, TimerSpec, on_timer

from pipelines.beam.keys import entity_codes
from pipelines.events import EVENT_SCHEMA

ASIDE_REASONS = ("after_window", "before_impression", "late", "no_impression")

CLICK_SCHEMA = pa.schema(
    [EVENT_SCHEMA.field(n) for n in ("impression_id", "user_id", "item_id", "category", "event_time")]
)
# Recently labelled impressions: tell late clicks apart and resolve their categories.
RECENT_SCHEMA = pa.schema(
    [EVENT_SCHEMA.field(n) for n in ("impression_id", "user_id", "category", "event_time")]
)
# How long a labelled impression stays in `recent`: as long as any statistics window looks back.
RECENT_RETENTION_MS = 7 * 86_400_000
ASIDE_SCHEMA = pa.schema(list(CLICK_SCHEMA) + [pa.field("reason", pa.string())])
DUPLICATE_REASON = "duplicate_impression_id"
# The surviving occurrence of each (user, impression id) still inside its dedup window.
FIRST_SEEN_SCHEMA = pa.schema([EVENT_SCHEMA.field(n) for n in ("user_id", "impression_id", "event_time")])
# Tie-break between copies at the same event time, where the events carry them (parse.ORIGIN_FIELDS).
_ORIGIN_COLUMNS = ("origin_source", "origin_partition", "origin_offset")


@dataclass
class Attribution:
    """One attribution step's results and the state it leaves for the next step."""

    labelled: pa.Table  # closed impressions (EVENT_SCHEMA columns) + label (int8) + click_time (int64)
    aside: pa.Table  # ASIDE_SCHEMA
    pending_impressions: pa.Table  # EVENT_SCHEMA, still inside their window
    pending_clicks: pa.Table  # CLICK_SCHEMA, waiting for their impression or its window to close
    recent: pa.Table  # RECENT_SCHEMA: recently labelled impressions (to tell late clicks apart)
    click_categories: pa.Array  # per input click: its own category, else its impression's, else null


@dataclass
class FirstOccurrences:
    """One dedup step: which impressions are duplicates, and the occurrences the next step must know."""

    duplicate: np.ndarray  # bool per input impression
    seen: pa.Table  # FIRST_SEEN_SCHEMA: latest surviving occurrence per (user, id), unpruned


def first_occurrences(impressions: pa.Table, seen: pa.Table, window_ms: int) -> FirstOccurrences:
    """Mark later copies of an impression: same user and id, at most ``window_ms`` after the surviving
    occurrence (from ``seen``, earlier steps, or earlier in ``impressions``); an older one is a reuse.

    ``impressions`` must hold every impression up to its latest event time that ``seen`` does not
    (the job passes the events behind the watermark). One hash pass over the ids; only ids that occur
    more than once are walked one by one, in (event time, source, partition, offset) order."""
    seen = seen.select(FIRST_SEEN_SCHEMA.names).cast(FIRST_SEEN_SCHEMA)
    n_seen, n = seen.num_rows, impressions.num_rows
    both = pa.concat_tables([seen, impressions.select(FIRST_SEEN_SCHEMA.names).cast(FIRST_SEEN_SCHEMA)])
    (codes,) = entity_codes(both["impression_id"])
    duplicate = np.zeros(n, dtype=bool)
    repeated = np.flatnonzero(np.bincount(codes, minlength=1)[codes] > 1) if len(codes) else codes
    if not len(repeated):  # the common case: every id occurs once
        return FirstOccurrences(duplicate, both)
    users = both["user_id"].take(pa.array(repeated)).to_pylist()
    ids = both["impression_id"].take(pa.array(repeated)).to_pylist()
    times = both["event_time"].to_numpy()[repeated].tolist()
    present = impressions.column_names
    new_rows = pa.array(np.maximum(repeated - n_seen, 0))
    origin = [
        impressions[c].take(new_rows).to_pylist() if c in present else [None] * len(repeated)
        for c in _ORIGIN_COLUMNS
    ]

    def order(k: int) -> tuple:
        # An earlier step's survivor precedes everything new at the same time.
        tie = (
            (0, "", -1, -1)
            if repeated[k] < n_seen
            else (1, origin[0][k] or "", *map(_num, (origin[1][k], origin[2][k])))
        )
        return (users[k], ids[k], times[k], *tie)

    forget = np.zeros(len(both), dtype=bool)  # rows `seen` drops: duplicates, survivors reused since
    last_key, last_time, last_row = None, 0, -1
    for k in sorted(range(len(repeated)), key=order):
        key, row = (users[k], ids[k]), int(repeated[k])
        if key == last_key and times[k] - last_time <= window_ms:
            if row < n_seen:
                # An earlier step's survivor after a new copy in event time (a log older than what was
                # already read, e.g. a second log replayed into the same topics): the survivor was
                # labelled already and stays; the new copy before it is the duplicate.
                duplicate[last_row - n_seen] = True
                forget[last_row] = True
                last_time, last_row = times[k], row
                continue
            duplicate[row - n_seen] = True
            forget[row] = True
            continue
        if key == last_key:
            forget[last_row] = True
        last_key, last_time, last_row = key, times[k], row
    # `seen` keeps one row per (user, id): the latest survivor.
    return FirstOccurrences(duplicate, both.filter(pa.array(~forget)))


def _num(value: int | None) -> int:
    return -1 if value is None else value


def _resolve(
    codes: np.ndarray, times: np.ndarray, click_codes: np.ndarray, click_times: np.ndarray, size: int
) -> np.ndarray:
    """Each click's row among (codes, times), -1 for none. An id with several rows (reused after the
    dedup window) resolves to its latest row at or before the click, else its earliest."""
    n = len(codes)
    row_of = np.full(size, -1, dtype=np.int64)
    row_of[codes[::-1]] = np.arange(n - 1, -1, -1)  # reversed: the first row of an id wins
    rows = row_of[click_codes]
    counts = np.bincount(codes, minlength=size)
    ambiguous = np.flatnonzero(counts[click_codes] > 1)
    if len(ambiguous):
        order = np.lexsort((times, codes))
        sorted_codes, sorted_times = codes[order], times[order]
        for c in ambiguous:
            lo, hi = (
                np.searchsorted(sorted_codes, click_codes[c], "left"),
                np.searchsorted(sorted_codes, click_codes[c], "right"),
            )
            k = np.searchsorted(sorted_times[lo:hi], click_times[c], side="right") - 1
            rows[c] = order[lo + max(int(k), 0)]
    return rows


def _match_clicks(impressions: pa.Table, recent: pa.Table, clicks: pa.Table) -> tuple[np.ndarray, np.ndarray]:
    """(each click's impression row, each click's ``recent`` row), -1 where a click has none. One hash
    pass over all the ids: hashing strings is the costly part."""
    tables = (impressions, recent, clicks)
    ids = pa.chunked_array([c for t in tables for c in t["impression_id"].chunks], pa.string())
    codes = pc.dictionary_encode(ids.combine_chunks()).indices.to_numpy(zero_copy_only=False).astype(np.int64)
    n_imp, n_rec = impressions.num_rows, recent.num_rows
    size = int(codes.max(initial=-1)) + 1
    click_codes, click_times = codes[n_imp + n_rec :], clicks["event_time"].to_numpy()
    imp_row = _resolve(codes[:n_imp], impressions["event_time"].to_numpy(), click_codes, click_times, size)
    recent_row = _resolve(
        codes[n_imp : n_imp + n_rec], recent["event_time"].to_numpy(), click_codes, click_times, size
    )
    return imp_row, recent_row


def _categories(
    clicks: pa.Table, impressions: pa.Table, imp_row: np.ndarray, recent: pa.Table, recent_row: np.ndarray
) -> pa.Array:
    """A click's category: its own when present, else its impression's (a pending one first, else a
    recently labelled one) if the click came at most RECENT_RETENTION_MS after it; else null."""
    own = clicks["category"].combine_chunks()
    row = np.where(imp_row >= 0, imp_row, np.where(recent_row >= 0, recent_row + impressions.num_rows, -1))
    if not (row >= 0).any():
        return own
    known = pa.concat_tables([impressions.select(RECENT_SCHEMA.names).cast(RECENT_SCHEMA), recent])
    at = np.maximum(row, 0)
    delay = clicks["event_time"].to_numpy() - known["event_time"].to_numpy()[at]
    remembered = (row >= 0) & (delay >= 0) & (delay <= RECENT_RETENTION_MS)
    return pc.coalesce(own, pc.take(known["category"], pa.array(at, mask=~remembered)))


def attribute(
    impressions: pa.Table,
    clicks: pa.Table,
    recent: pa.Table,
    window_ms: int,
    watermark_ms: int | None,
) -> Attribution:
    """Label every impression whose window closed before ``watermark_ms`` (all of them if None).

    ``impressions``/``clicks`` are everything not yet resolved: the previous step's pending rows plus
    the new ones, impressions already without duplicates (``first_occurrences``). ``recent`` are the
    ids labelled in earlier steps.
    """
    final = watermark_ms is None
    clicks = clicks.select(CLICK_SCHEMA.names).cast(CLICK_SCHEMA)
    recent = recent.select(RECENT_SCHEMA.names).cast(RECENT_SCHEMA)
    impressions = impressions.select(EVENT_SCHEMA.names)
    imp_index, recent_index = _match_clicks(impressions, recent, clicks)
    imp_times = impressions["event_time"].to_numpy()
    click_times = clicks["event_time"].to_numpy()
    has_imp = imp_index >= 0
    matched = np.where(has_imp, imp_times[np.maximum(imp_index, 0)] if len(imp_times) else -1, -1)
    recent_times = recent["event_time"].to_numpy()
    recent_time = np.where(
        recent_index >= 0, recent_times[np.maximum(recent_index, 0)] if len(recent_times) else -1, -1
    )
    delta = click_times - matched
    in_window = has_imp & (delta >= 0) & (delta <= window_ms)

    closed_imp = np.ones(len(imp_times), bool) if final else (imp_times + window_ms < watermark_ms)
    click_imp_closed = np.zeros(len(click_times), bool)
    click_imp_closed[has_imp] = closed_imp[imp_index[has_imp]]

    reason = np.full(len(click_times), None, dtype=object)
    reason[has_imp & (delta > window_ms)] = "after_window"
    reason[has_imp & (delta < 0)] = "before_impression"
    orphan = ~has_imp
    expired = np.ones(len(click_times), bool) if final else (click_times + window_ms < watermark_ms)
    # Impression labelled in an earlier step: the same time rules, "late" if it would have counted.
    in_recent = orphan & (recent_time >= 0)
    recent_delta = click_times - recent_time
    reason[in_recent & (recent_delta >= 0) & (recent_delta <= window_ms)] = "late"
    reason[in_recent & (recent_delta > window_ms)] = "after_window"
    reason[in_recent & (recent_delta < 0)] = "before_impression"
    reason[orphan & ~in_recent & expired] = "no_impression"
    is_aside = reason != None  # noqa: E711 (element-wise on an object array)
    consumed = in_window & click_imp_closed
    pending_click = ~is_aside & ~consumed

    # Label = first in-window click of each closed impression.
    first_click = np.full(len(imp_times), np.iinfo(np.int64).max, dtype=np.int64)
    np.minimum.at(first_click, imp_index[consumed], click_times[consumed])
    labelled_rows = impressions.filter(pa.array(closed_imp))
    fc = first_click[closed_imp]
    clicked = fc != np.iinfo(np.int64).max
    labelled = labelled_rows.append_column("label", pa.array(clicked.astype(np.int8))).append_column(
        "click_time", pa.array(np.where(clicked, fc, 0), pa.int64(), mask=~clicked)
    )

    aside = clicks.filter(pa.array(is_aside)).append_column("reason", pa.array(reason[is_aside], pa.string()))
    newly = pa.table(
        {n: labelled_rows[n] for n in RECENT_SCHEMA.names},
        schema=RECENT_SCHEMA,
    )
    categories = _categories(clicks, impressions, imp_index, recent, recent_index)
    recent = pa.concat_tables([recent, newly])
    if not final:
        recent = recent.filter(
            pc.greater_equal(recent["event_time"], watermark_ms - RECENT_RETENTION_MS - window_ms)
        )
    return Attribution(
        labelled=labelled,
        aside=aside,
        pending_impressions=impressions.filter(pa.array(~closed_imp)),
        pending_clicks=clicks.filter(pa.array(pending_click)),
        recent=recent,
        click_categories=categories,
    )


def _to_ipc(table: pa.Table) -> bytes:
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)
    return sink.getvalue().to_pybytes()


def _from_ipc(data: bytes) -> pa.Table:
    return pa.ipc.open_stream(data).read_all()


class AttributeInEventTime(beam.DoFn):
    """Keyed stateful DoFn: (key, event dict) in, ("labelled" | "aside" | "duplicate", row) out.

    Events wait in state; an event-time timer at the earliest moment something can be decided fires
    when the watermark passes it, drops duplicate impressions (``first_occurrences``) and runs
    ``attribute`` with the watermark as the closing time. The same rules as the micro-batch job,
    driven by Beam's watermark instead of the batch boundary.
    """

    NEW_IMPRESSIONS = BagStateSpec("new_impressions", BytesCoder())  # not yet checked for duplicates
    PENDING_IMPRESSIONS = BagStateSpec("pending_impressions", BytesCoder())
    PENDING_CLICKS = BagStateSpec("pending_clicks", BytesCoder())
    RECENT = ReadModifyWriteStateSpec("recent", BytesCoder())
    SEEN = ReadModifyWriteStateSpec("seen", BytesCoder())
    DECIDE_AT = ReadModifyWriteStateSpec("decide_at", VarIntCoder())
    DECIDE = TimerSpec("decide", TimeDomain.WATERMARK)

    def __init__(self, window_s: int, dedup_window_s: int = 24 * 3600) -> None:
        if dedup_window_s < window_s:
            raise ValueError("the dedup window must be at least the attribution window")
        self.window_ms = window_s * 1000
        self.dedup_window_ms = dedup_window_s * 1000

    def process(
        self,
        element: tuple[str, dict],
        impressions=beam.DoFn.StateParam(NEW_IMPRESSIONS),
        clicks=beam.DoFn.StateParam(PENDING_CLICKS),
        decide_at=beam.DoFn.StateParam(DECIDE_AT),
        decide=beam.DoFn.TimerParam(DECIDE),
    ) -> Iterator[tuple[str, dict]]:
        _, event = element
        if event["type"] == "impression":
            impressions.add(_to_ipc(pa.Table.from_pylist([event], schema=EVENT_SCHEMA)))
        else:
            clicks.add(_to_ipc(pa.Table.from_pylist([event], schema=CLICK_SCHEMA)))
        # Decidable once the watermark passes event_time + window (+1 ms: the rule is strict); one timer
        # per key, kept at the earliest such moment.
        at = event["event_time"] + self.window_ms + 1
        current = decide_at.read()
        if current is None or at < current:
            decide_at.write(at)
            decide.set(at / 1000.0)
        return iter(())

    @on_timer(DECIDE)
    def on_decide(
        self,
        fire=beam.DoFn.TimestampParam,
        new_impressions=beam.DoFn.StateParam(NEW_IMPRESSIONS),
        impressions=beam.DoFn.StateParam(PENDING_IMPRESSIONS),
        clicks=beam.DoFn.StateParam(PENDING_CLICKS),
        recent=beam.DoFn.StateParam(RECENT),
        seen=beam.DoFn.StateParam(SEEN),
        decide_at=beam.DoFn.StateParam(DECIDE_AT),
        decide=beam.DoFn.TimerParam(DECIDE),
    ) -> Iterator[tuple[str, dict]]:
        def bag(state, schema: pa.Schema) -> pa.Table:
            return pa.concat_tables([_from_ipc(b) for b in state.read()] or [schema.empty_table()])

        watermark_ms = int(fire.micros // 1000)
        arrived = bag(new_impressions, EVENT_SCHEMA)
        # Only impressions behind the watermark are checked: every earlier copy has arrived by then.
        behind = pc.less(arrived["event_time"], watermark_ms)
        fresh, later = arrived.filter(behind), arrived.filter(pc.invert(behind))
        new_impressions.clear()
        if later.num_rows:
            new_impressions.add(_to_ipc(later))
        stored_seen = seen.read()
        checked = first_occurrences(
            fresh,
            _from_ipc(stored_seen) if stored_seen else FIRST_SEEN_SCHEMA.empty_table(),
            self.dedup_window_ms,
        )
        kept_seen = checked.seen.filter(
            pc.greater_equal(checked.seen["event_time"], watermark_ms - self.dedup_window_ms)
        )
        seen.write(_to_ipc(kept_seen))
        imps = pa.concat_tables([bag(impressions, EVENT_SCHEMA), fresh.filter(pa.array(~checked.duplicate))])
        clks = bag(clicks, CLICK_SCHEMA)
        stored = recent.read()
        done = _from_ipc(stored) if stored else RECENT_SCHEMA.empty_table()
        result = attribute(imps, clks, done, self.window_ms, watermark_ms)
        impressions.clear()
        clicks.clear()
        if result.pending_impressions.num_rows:
            impressions.add(_to_ipc(result.pending_impressions))
        if result.pending_clicks.num_rows:
            clicks.add(_to_ipc(result.pending_clicks))
        recent.write(_to_ipc(result.recent))
        waiting = pa.concat_tables(
            [t.select(["event_time"]) for t in (result.pending_impressions, result.pending_clicks, later)]
        )
        decide_at.clear()
        if waiting.num_rows:
            at = pc.min(waiting["event_time"]).as_py() + self.window_ms + 1
            decide_at.write(at)
            decide.set(at / 1000.0)
        for row in result.labelled.to_pylist():
            yield ("labelled", row)
        for row in result.aside.to_pylist():
            yield ("aside", row)
        for row in fresh.filter(pa.array(checked.duplicate)).to_pylist():
            yield ("duplicate", row)
