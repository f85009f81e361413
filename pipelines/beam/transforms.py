"""The Beam DoFns of the feature job: read and parse, shard, per-shard features and sinks (``graph``
wires them into the job's composite stages).

Every step works on a whole offset range or shard at once (Arrow, vectorised); the one shuffle carries
paths of staged Arrow files (``staging``), not the rows. Each shard writes its own part of every table
(no table is gathered, sorted or written in one place). Beam provides the parallelism (ranges, shards),
the watermark side input, metrics for the accounting, and the runner portability.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import apache_beam as beam
import pyarrow as pa
import pyarrow.parquet as pq
from apache_beam.metrics import Metrics

from pipelines.beam import state as st
from pipelines.beam.attribution import DUPLICATE_REASON
from pipelines.beam.kafka_source import RawBatch
from pipelines.beam.parse import (
    SOURCED_EVENT_SCHEMA,
    Parsed,
    dead_letters_of,
    parse_columns,
    parse_json_batch,
)
from pipelines.beam.shards import split_by_shard
from pipelines.beam.sinks import (
    SourceRange,
    part_file_name,
    range_tag,
    to_table_schema,
    warehouse_schemas,
    write_table,
)
from pipelines.beam.staging import load_staged, stage_table
from pipelines.beam.steps import (
    ITEM_EVENT_SCHEMA,
    USER_STATE_KINDS,
    ItemShardState,
    UserShardState,
    item_shard_step,
    user_shard_step,
)
from pipelines.events import DEADLETTER_SCHEMA, DeadLetter
from pipelines.kafka import make_producer
from pipelines.logfile import COLUMNAR_SCHEMA, log_format
from pipelines.tables import StatHorizons

ACCOUNTING = "ctrflow.accounting"
OUTPUT = "ctrflow.output"


def partition_key(source: str, partition: int) -> str:
    return st.Checkpoint.key(source, partition)


def count_parsed(parsed: Parsed) -> None:
    """Accounting metrics per source partition: consumed = accepted + dead-lettered."""
    key = partition_key(parsed.source, parsed.partition)
    Metrics.counter(ACCOUNTING, f"consumed/{key}").inc(parsed.consumed)
    Metrics.counter(ACCOUNTING, f"accepted/{key}").inc(parsed.accepted)
    Metrics.counter(ACCOUNTING, f"dead_lettered/{key}").inc(len(parsed.dead))
    if parsed.blank_lines:
        Metrics.counter(ACCOUNTING, f"blank_lines/{key}").inc(parsed.blank_lines)


def count_rejected(letters: list[DeadLetter]) -> None:
    """Accepted records found bad after the parse (duplicates) move from accepted to dead-lettered,
    in the batch that decides it (a held record may have been consumed in an earlier one)."""
    moved: dict[str, int] = {}
    for letter in letters:
        key = partition_key(letter.source, letter.partition)
        moved[key] = moved.get(key, 0) + 1
    for key, n in moved.items():
        Metrics.counter(ACCOUNTING, f"accepted/{key}").dec(n)
        Metrics.counter(ACCOUNTING, f"dead_lettered/{key}").inc(n)


class ParseRaw(beam.DoFn):
    """RawBatch (Kafka records) -> Parsed."""

    def process(self, batch: RawBatch) -> Iterator[Parsed]:
        parsed = parse_json_batch(
            batch.source, batch.partition, batch.start, batch.end, batch.offsets, batch.values
        )
        count_parsed(parsed)
        yield parsed


@dataclass(frozen=True)
class FileSlice:
    """Rows ``[start, end)`` of a canonical log file (row groups for Parquet, lines for JSONL)."""

    path: str
    start: int
    end: int


class ReadFileSlice(beam.DoFn):
    """FileSlice -> Parsed: vectorised validation for Parquet, per-line for JSON Lines."""

    def process(self, piece: FileSlice) -> Iterator[Parsed]:
        path = Path(piece.path)
        if log_format(path) == "parquet":
            parsed = parse_columns(piece.path, piece.start, _parquet_rows(path, piece.start, piece.end))
        else:
            with open(path, "rb") as f:
                lines = [line.rstrip(b"\r\n") for line in f]
            # 1-based line numbers; blank lines are not records: skipped and counted apart.
            numbered = [
                (n, line)
                for n, line in enumerate(lines[piece.start : piece.end], piece.start + 1)
                if line and not line.isspace()
            ]
            offsets, chosen = [n for n, _ in numbered], [line for _, line in numbered]
            parsed = parse_json_batch(piece.path, -1, piece.start, piece.end, offsets, chosen)
            parsed.blank_lines = piece.end - piece.start - len(chosen)
        count_parsed(parsed)
        yield parsed


def _parquet_rows(path: Path, start: int, end: int) -> pa.Table:
    pf = pq.ParquetFile(path)
    groups, first, at = [], None, 0
    for g in range(pf.num_row_groups):
        n = pf.metadata.row_group(g).num_rows
        if at + n > start and at < end:
            groups.append(g)
            first = at if first is None else first
        at += n
    if not groups:
        return pf.schema_arrow.empty_table()
    present = [name for name in COLUMNAR_SCHEMA.names if name in pf.schema_arrow.names]
    table = pf.read_row_groups(groups, columns=present)
    return table.slice(start - first, end - start)


def progress_of(parsed: Parsed) -> tuple[str, int | None]:
    """(partition key, max event time) for the watermark, also kept as a metric for the checkpoint."""
    key = partition_key(parsed.source, parsed.partition)
    top = parsed.max_event_time
    if top is not None:
        Metrics.distribution(ACCOUNTING, f"max_event_time/{key}").update(top)
    return key, top


USER, ITEM = "user", "item"
# What each kind of shard is keyed by and which event columns it needs.
SHARD_KINDS: dict[str, tuple[str, pa.Schema]] = {
    USER: ("user_id", SOURCED_EVENT_SCHEMA),  # origins: a duplicate is dead-lettered by its offset
    ITEM: ("item_id", ITEM_EVENT_SCHEMA),
}
ShardKey = tuple[str, int]  # (USER or ITEM, shard number)


def all_shard_keys(num_shards: int) -> list[tuple[ShardKey, None]]:
    """Every shard of every kind, with no events: pending state must advance with the watermark."""
    return [((kind, s), None) for kind in SHARD_KINDS for s in range(num_shards)]


def shard_events(parsed: Parsed, num_shards: int, staging: str) -> Iterator[tuple[ShardKey, str]]:
    """((kind, shard), staged events of that shard) for every user and item shard this range has events of."""
    sourced = parsed.sourced_events()
    for kind, (column, schema) in SHARD_KINDS.items():
        events = sourced.select(schema.names)
        for shard, table in split_by_shard(events, column, num_shards).items():
            yield (kind, shard), stage_table(staging, f"{kind}-{shard}", table)


class WarehouseWriter:
    """Writes one batch's rows into the warehouse: every file carries the batch's source ranges."""

    def __init__(
        self, warehouse: str, ranges: list[SourceRange], file_name: str, created_base_ms: int,
        horizons: StatHorizons,
    ):
        self.warehouse = Path(warehouse)
        self.ranges = ranges
        self.file_name = file_name
        self.created_base_ms = created_base_ms
        self.schemas = warehouse_schemas(horizons)

    def write(self, name: str, rows: pa.Table, part: str, created: tuple[int, int] = (0, 1)) -> None:
        """Rows of table ``name`` into ``<batch file name>.<part>`` files; ``created`` = (offset, stride)
        interleaves this part's ``created`` values with the other parts' (see sinks.to_table_schema)."""
        table = to_table_schema(name, self.schemas[name], rows, self.created_base_ms + created[0], created[1])
        Metrics.counter(OUTPUT, f"rows/{name}").inc(table.num_rows)
        write_table(self.warehouse, name, table, self.ranges, part_file_name(self.file_name, part))


class ShardFeatures(beam.DoFn):
    """((kind, shard), staged events) -> the shard's warehouse files and its next state.

    A user shard drops duplicate impressions (dead letters, also sent to ``dead_letter_topic``
    ``(bootstrap, topic)`` when given), labels impressions and computes user stats and sequences; an
    item shard computes item stats. Each shard writes its own files, so no table is gathered (or
    sorted) in one place.
    """

    def __init__(
        self,
        state_in: str | None,
        state_out: str | None,
        num_shards: int,
        window_ms: int,
        sequence_length: int,
        writer: WarehouseWriter,
        dedup_window_ms: int,
        horizons: StatHorizons,
        dead_letter_topic: tuple[str, str] | None = None,
    ):
        self.state_in = Path(state_in) if state_in else None
        self.state_out = Path(state_out) if state_out else None  # None: a one-shot build, no state kept
        self.num_shards = num_shards
        self.window_ms = window_ms
        self.sequence_length = sequence_length
        self.writer = writer
        self.dedup_window_ms = dedup_window_ms
        self.horizons = horizons
        self.state_kinds = st.state_kinds(horizons)
        self.dead_letter_topic = dead_letter_topic
        self._producer = None

    def _load(self, kind: str, column: str, shard: int) -> pa.Table:
        return st.read_state(self.state_in, kind, self.state_kinds[kind], column, shard, self.num_shards)

    def _save(self, kind: str, shard: int, table: pa.Table) -> None:
        if self.state_out is not None:
            st.write_state(self.state_out, kind, self.state_kinds[kind], shard, self.num_shards, table)

    def _dead_letter(self, duplicates: pa.Table, shard: int) -> None:
        letters = dead_letters_of(duplicates, DUPLICATE_REASON)
        table = pa.Table.from_pylist([d.__dict__ for d in letters], schema=DEADLETTER_SCHEMA)
        self.writer.write("dead_letters", table, f"dup.s{shard:04d}")
        count_rejected(letters)
        if self.dead_letter_topic is not None:
            bootstrap, topic = self.dead_letter_topic
            if self._producer is None:
                self._producer = make_producer(bootstrap, client_id="ctrflow-deadletter")
            send_dead_letters(self._producer, topic, letters)

    def process(self, element: tuple[ShardKey, list[str | None]], watermark_ms: int | None) -> Iterator[str]:
        (kind, shard), paths = element
        schema = SHARD_KINDS[kind][1]
        events = load_staged(paths, schema).cast(schema)
        if kind == USER:
            state = UserShardState(**{k: self._load(k, "user_id", shard) for k in USER_STATE_KINDS})
            rows, nxt = user_shard_step(
                state, events, watermark_ms, self.window_ms, self.sequence_length, self.dedup_window_ms,
                self.horizons,
            )
            for k in USER_STATE_KINDS:
                self._save(k, shard, getattr(nxt, k))
            duplicates = rows.pop("duplicates")
            if duplicates.num_rows:
                self._dead_letter(duplicates, shard)
        else:
            state = ItemShardState(
                held=self._load("held", "item_id", shard),
                item_history=self._load("item_history", "item_id", shard),
                item_totals=self._load("item_totals", "item_id", shard),
            )
            rows, nxt = item_shard_step(state, events, watermark_ms, self.horizons)
            self._save("item_history", shard, nxt.item_history)
            self._save("item_totals", shard, nxt.item_totals)
        for name, table in rows.items():
            if table.num_rows:
                self.writer.write(name, table, f"s{shard:04d}", (shard, self.num_shards))
        yield f"{kind}-{shard}"

    def teardown(self) -> None:
        if self._producer is not None:
            self._producer.close()


def send_dead_letters(producer, topic: str, letters: list[DeadLetter]) -> None:
    """Each letter to the dead-letter topic, keyed by its source partition; waits until all are sent."""
    for letter in letters:
        producer.send(topic, value=letter.to_json(), key=str(letter.partition).encode())
    producer.flush()


class WriteDeadLetters(beam.DoFn):
    """Parsed -> the range's dead letters as a warehouse file (the table is exactly once, like the rest)."""

    def __init__(self, writer: WarehouseWriter):
        self.writer = writer

    def process(self, parsed: Parsed) -> Iterator[int]:
        if parsed.dead:
            table = pa.Table.from_pylist([d.__dict__ for d in parsed.dead], schema=DEADLETTER_SCHEMA)
            part = "dead." + range_tag(SourceRange(parsed.source, parsed.partition, parsed.start, parsed.end))
            self.writer.write("dead_letters", table, part)
            yield len(parsed.dead)


class ProduceDeadLetters(beam.DoFn):
    """Sends every dead letter to the dead-letter topic (at least once: a rerun may resend)."""

    def __init__(self, bootstrap: str, topic: str):
        self.bootstrap = bootstrap
        self.topic = topic
        self._producer = None

    def process(self, parsed: Parsed) -> Iterator[int]:
        if parsed.dead:  # the common case, no dead letters, opens no producer connection at all
            if self._producer is None:
                self._producer = make_producer(self.bootstrap, client_id="ctrflow-deadletter")
            send_dead_letters(self._producer, self.topic, parsed.dead)
            yield len(parsed.dead)

    def teardown(self) -> None:
        if self._producer is not None:
            self._producer.close()
