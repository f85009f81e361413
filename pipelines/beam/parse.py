"""Records -> columnar canonical events (``events.EVENT_SCHEMA``) plus dead letters with reasons.

Two paths with the same rules: row-wise over JSON records (Kafka values, JSONL lines) through
``events.decode_event``, and vectorised over columnar logs (Parquet), which checks the same bounds with
Arrow compute so a backfill never touches events one by one in Python.

Each accepted event keeps where it came from (``Parsed.offsets``; ``Parsed.sourced_events`` adds the
origin columns): a check that needs more than one record, like duplicate impression ids, runs after the
shuffle and must still dead-letter a record by its source, partition and offset.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.json as pajson

from pipelines import events as ev
from pipelines.logfile import conform_columns

# Columnar input may carry nulls anywhere; they are found and dead-lettered before the strict cast.
NULLABLE_EVENT_SCHEMA = pa.schema([f.with_nullable(True) for f in ev.EVENT_SCHEMA])
# Where an accepted event came from, as DeadLetter names it (offset: Kafka offset or 1-based line/row).
ORIGIN_FIELDS = (
    pa.field("origin_source", pa.string()),
    pa.field("origin_partition", pa.int32()),
    pa.field("origin_offset", pa.int64()),
)
SOURCED_EVENT_SCHEMA = pa.schema(list(ev.EVENT_SCHEMA) + list(ORIGIN_FIELDS))


@dataclass
class Parsed:
    """Accepted events of one source range and what was dead-lettered, with the accounting."""

    source: str
    partition: int
    start: int
    end: int
    events: pa.Table
    dead: list[ev.DeadLetter]
    consumed: int
    offsets: np.ndarray  # the source offset of each accepted event (row i of ``events``)
    blank_lines: int = 0  # of a JSON Lines file: skipped, not records (not in consumed)

    @property
    def accepted(self) -> int:
        return self.events.num_rows

    @property
    def max_event_time(self) -> int | None:
        if self.events.num_rows == 0:
            return None
        return pc.max(self.events["event_time"]).as_py()

    def sourced_events(self) -> pa.Table:
        """``events`` with the origin columns (SOURCED_EVENT_SCHEMA)."""
        n = self.events.num_rows
        return (
            self.events.append_column(ORIGIN_FIELDS[0], pa.repeat(pa.scalar(self.source), n))
            .append_column(ORIGIN_FIELDS[1], pa.repeat(pa.scalar(self.partition, pa.int32()), n))
            .append_column(ORIGIN_FIELDS[2], pa.array(self.offsets, pa.int64()))
        )


def dead_letters_of(rows: pa.Table, reason: str) -> list[ev.DeadLetter]:
    """Dead letters for accepted events (SOURCED_EVENT_SCHEMA rows) found bad later, e.g. duplicates.

    The raw bytes are the event's canonical encoding: the original record bytes are not kept past
    the parse, and a canonical log line reads back as the same event."""
    events = rows.select(ev.EVENT_SCHEMA.names).to_pylist()
    origins = zip(*(rows[f.name].to_pylist() for f in ORIGIN_FIELDS), strict=True)
    return [
        ev.DeadLetter(source, partition, offset, reason, ev.encode_event(event))
        for event, (source, partition, offset) in zip(events, origins, strict=True)
    ]


def parse_records(
    source: str, partition: int, start: int, end: int, offsets: Sequence[int], values: Sequence[bytes]
) -> Parsed:
    """Decode and validate JSON records; each failure becomes a DeadLetter with its exact reason."""
    accepted: list[dict] = []
    accepted_offsets: list[int] = []
    dead: list[ev.DeadLetter] = []
    for offset, raw in zip(offsets, values, strict=True):
        if raw is None:
            dead.append(ev.DeadLetter(source, partition, offset, "empty record (null value)", b""))
            continue
        try:
            record = ev.decode_event(raw)
        except ev.MalformedEvent as exc:
            dead.append(ev.DeadLetter(source, partition, offset, str(exc), bytes(raw)))
            continue
        accepted.append(record)
        accepted_offsets.append(offset)
    table = pa.Table.from_pylist(accepted, schema=ev.EVENT_SCHEMA)
    kept = np.array(accepted_offsets, dtype=np.int64)
    return Parsed(source, partition, start, end, table, dead, consumed=len(values), offsets=kept)


def _reason_masks(table: pa.Table) -> list[tuple[str, pa.Array]]:
    """(reason, mask of offending rows) in the order validate_event checks them."""
    n = table.num_rows
    checks: list[tuple[str, pa.Array]] = []
    kind = table["type"]
    is_imp = pc.equal(kind, ev.IMPRESSION)
    unknown = pc.invert(pc.fill_null(pc.is_in(kind, pa.array(ev.EVENT_TYPES)), False))
    checks.append((f"unknown type: expected one of {list(ev.EVENT_TYPES)}", unknown))
    for name in ("impression_id", "user_id", "item_id", "event_time"):
        checks.append((f"missing required field '{name}'", pc.is_null(table[name])))
    for name in ("request_id", "position"):
        checks.append((f"missing required field '{name}'", pc.and_(is_imp, pc.is_null(table[name]))))
    for name in ("impression_id", "user_id", "item_id", "request_id"):
        length = pc.utf8_length(table[name])
        bad = pc.or_(pc.less(length, 1), pc.greater(length, ev.MAX_ID_LENGTH))
        if name == "request_id":
            bad = pc.and_(is_imp, bad)
        checks.append((f"field '{name}' must be 1..{ev.MAX_ID_LENGTH} characters", bad))
    t = table["event_time"]
    checks.append(
        (
            f"event_time is outside [{ev.MIN_EVENT_TIME_MS}, {ev.MAX_EVENT_TIME_MS}) ms UTC",
            pc.or_(pc.less(t, ev.MIN_EVENT_TIME_MS), pc.greater_equal(t, ev.MAX_EVENT_TIME_MS)),
        )
    )
    pos = table["position"]
    checks.append(
        (
            f"position is outside [0, {ev.MAX_POSITION}]",
            pc.and_(is_imp, pc.or_(pc.less(pos, 0), pc.greater(pos, ev.MAX_POSITION))),
        )
    )
    hour = table["hour"]
    checks.append(
        (
            f"hour is outside [{ev.HOUR_RANGE[0]}, {ev.HOUR_RANGE[1]}]",
            pc.or_(pc.less(hour, ev.HOUR_RANGE[0]), pc.greater(hour, ev.HOUR_RANGE[1])),
        )
    )
    p = table["p_click"]
    checks.append(
        (
            "p_click is not a probability",
            pc.or_(pc.invert(pc.is_finite(p)), pc.or_(pc.less(p, 0), pc.greater(p, 1))),
        )
    )
    return [(reason, pc.fill_null(mask, False)) for reason, mask in checks if n]


def _first_failures(table: pa.Table) -> tuple[np.ndarray, np.ndarray]:
    """(bad-row mask, reason per row) with the first failing check of each row."""
    n = table.num_rows
    bad = np.zeros(n, dtype=bool)
    reasons = np.empty(n, dtype=object)
    for reason, mask in _reason_masks(table):
        m = mask.to_numpy(zero_copy_only=False) & ~bad
        reasons[m] = reason
        bad |= m
    return bad, reasons


def parse_columns(source: str, start: int, table: pa.Table) -> Parsed:
    """Vectorised validation of a columnar slice starting at row ``start`` (0-based) of ``source``
    (whose schema ``logfile.check_columns`` has accepted)."""
    table = conform_columns(table)
    n = table.num_rows
    bad, reasons = _first_failures(table)
    dead: list[ev.DeadLetter] = []
    if bad.any():
        rows = np.flatnonzero(bad)
        raw_rows = table.take(pa.array(rows)).to_pylist()
        for row, record, reason in zip(rows, raw_rows, reasons[rows], strict=True):
            # 1-based line/row number, as DeadLetter documents for files.
            dead.append(ev.DeadLetter(source, -1, int(start + row + 1), reason, ev.encode_event(record)))
        table = table.filter(pa.array(~bad))
    kept = start + 1 + np.flatnonzero(~bad)
    return Parsed(source, -1, start, start + n, table.cast(ev.EVENT_SCHEMA), dead, consumed=n, offsets=kept)


_JSON_PARSE = pajson.ParseOptions(explicit_schema=NULLABLE_EVENT_SCHEMA, unexpected_field_behavior="ignore")


def _columnar_json(values: Sequence[bytes]) -> pa.Table | None:
    """All records parsed at once by Arrow's JSON reader, or None when any record needs the careful
    row-wise path (non-objects, wrong JSON types, multi-line or oversized values, nulls, invalid UTF-8)."""
    if any(v is None or b"\n" in v or len(v) > ev.MAX_RECORD_BYTES or not v.startswith(b"{") for v in values):
        return None
    block = b"\n".join(values)
    if not ev.is_utf8(block):  # Arrow would take invalid UTF-8 inside a string value
        return None
    try:
        table = pajson.read_json(
            pa.py_buffer(block),
            read_options=pajson.ReadOptions(block_size=1 << 20),  # 1 MiB blocks parse in parallel
            parse_options=_JSON_PARSE,
        )
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        return None
    return table if table.num_rows == len(values) else None


def parse_json_batch(
    source: str, partition: int, start: int, end: int, offsets: Sequence[int], values: Sequence[bytes]
) -> Parsed:
    """Like ``parse_records`` (same accepted events, same reasons), vectorised when the batch allows:
    Arrow parses every record at once, the bounds are checked column-wise and only the rejected
    records go through ``decode_event`` again for their exact reason."""
    table = _columnar_json(values) if values else None
    if table is None:
        return parse_records(source, partition, start, end, offsets, values)
    bad, reasons = _first_failures(table)
    dead = []
    for row in np.flatnonzero(bad):
        raw = values[row]
        try:
            ev.decode_event(raw)
            reason = reasons[row]
        except ev.MalformedEvent as exc:
            reason = str(exc)
        dead.append(ev.DeadLetter(source, partition, offsets[row], reason, bytes(raw)))
    if bad.any():
        table = table.filter(pa.array(~bad))
    kept = np.asarray(offsets, dtype=np.int64)[~bad]
    return Parsed(
        source, partition, start, end, table.cast(ev.EVENT_SCHEMA), dead, consumed=len(values), offsets=kept
    )
