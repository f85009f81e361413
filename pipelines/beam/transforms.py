"""The Beam transforms of the feature job: parse, shard, per-shard features, sinks.

Every step works on a whole offset range, shard or table at once (Arrow, vectorised); shuffles carry
paths of staged Arrow files (``staging``), not the rows. Beam provides the parallelism (ranges, shards,
tables), the watermark side input, metrics for the accounting, and the runner portability.
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
from pipelines.beam.kafka_source import RawBatch
from pipelines.beam.parse import Parsed, parse_columns, parse_json_batch
from pipelines.beam.shards import split_by_shard
from pipelines.beam.sinks import ALL_TABLES, SourceRange, to_table_schema, write_table
from pipelines.beam.staging import load_staged, stage_table
from pipelines.beam.steps import (
    ITEM_EVENT_SCHEMA,
    ItemShardState,
    UserShardState,
    item_shard_step,
    user_shard_step,
)
from pipelines.events import DEADLETTER_SCHEMA, EVENT_SCHEMA
from pipelines.kafka import make_producer

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
        if path.suffix == ".parquet":
            parsed = parse_columns(piece.path, piece.start, _parquet_rows(path, piece.start, piece.end))
        else:
            with open(path, "rb") as f:
                lines = [line.rstrip(b"\r\n") for line in f]
            chosen = lines[piece.start : piece.end]
            offsets = list(range(piece.start + 1, piece.start + 1 + len(chosen)))  # 1-based line numbers
            parsed = parse_json_batch(piece.path, -1, piece.start, piece.end, offsets, chosen)
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
    table = pf.read_row_groups(groups)
    return table.slice(start - first, end - start)


def progress_of(parsed: Parsed) -> tuple[str, int | None]:
    """(partition key, max event time) for the watermark, also kept as a metric for the checkpoint."""
    key = partition_key(parsed.source, parsed.partition)
    top = parsed.max_event_time
    if top is not None:
        Metrics.distribution(ACCOUNTING, f"max_event_time/{key}").update(top)
    return key, top


def shard_events(
    parsed: Parsed, column: str, num_shards: int, staging: str, schema: pa.Schema = EVENT_SCHEMA
) -> Iterator[tuple[int, str]]:
    """(shard, staged events of that shard, ``schema``'s columns) for every shard this range has events of."""
    events = parsed.events.select(schema.names)
    for shard, table in split_by_shard(events, column, num_shards).items():
        yield shard, stage_table(staging, f"{column}-{shard}", table)


def _events(paths: list[str | None], schema: pa.Schema = EVENT_SCHEMA) -> pa.Table:
    return load_staged(paths, schema).cast(schema)


def _stage_rows(staging: str, rows: dict[str, pa.Table]) -> Iterator[tuple[str, str]]:
    for name, table in rows.items():
        if table.num_rows:
            yield name, stage_table(staging, name, table)


class UserShardFeatures(beam.DoFn):
    """(user shard, event tables) -> (table name, rows); writes the shard's next state."""

    def __init__(
        self,
        state_in: str | None,
        state_out: str,
        staging: str,
        num_shards: int,
        window_ms: int,
        sequence_length: int,
    ):
        self.staging = staging
        self.state_in = Path(state_in) if state_in else None
        self.state_out = Path(state_out)
        self.num_shards = num_shards
        self.window_ms = window_ms
        self.sequence_length = sequence_length

    def process(
        self, element: tuple[int, list[str | None]], watermark_ms: int | None
    ) -> Iterator[tuple[str, str]]:
        shard, paths = element

        def load(kind: str) -> pa.Table:
            return st.read_state(self.state_in, kind, "user_id", shard, self.num_shards)

        state = UserShardState(
            held=load("held"),
            user_history=load("user_history"),
            click_history=load("click_history"),
            pending_impressions=load("pending_impressions"),
            pending_clicks=load("pending_clicks"),
            recent=load("recent"),
        )
        rows, nxt = user_shard_step(
            state, _events(list(paths)), watermark_ms, self.window_ms, self.sequence_length
        )
        name = f"shard-{shard:04d}"
        for kind in (
            "held",
            "user_history",
            "click_history",
            "pending_impressions",
            "pending_clicks",
            "recent",
        ):
            st.write_state(self.state_out, kind, name, getattr(nxt, kind))
        yield from _stage_rows(self.staging, rows)


class ItemShardFeatures(beam.DoFn):
    """(item shard, event tables) -> ("item_stats", rows); writes the shard's item history."""

    def __init__(self, state_in: str | None, state_out: str, staging: str, num_shards: int):
        self.staging = staging
        self.state_in = Path(state_in) if state_in else None
        self.state_out = Path(state_out)
        self.num_shards = num_shards

    def process(
        self, element: tuple[int, list[str | None]], watermark_ms: int | None
    ) -> Iterator[tuple[str, str]]:
        shard, paths = element
        state = ItemShardState(
            held=st.read_state(self.state_in, "held", "item_id", shard, self.num_shards),
            item_history=st.read_state(self.state_in, "item_history", "item_id", shard, self.num_shards),
        )
        rows, history = item_shard_step(state, _events(list(paths), ITEM_EVENT_SCHEMA), watermark_ms)
        st.write_state(self.state_out, "item_history", f"shard-{shard:04d}", history)
        yield from _stage_rows(self.staging, rows)


class WriteWarehouseTable(beam.DoFn):
    """(table name, row tables) -> written file paths, replacing this range's earlier files."""

    def __init__(self, warehouse: str, ranges: list[SourceRange], file_name: str, created_base_ms: int):
        self.warehouse = Path(warehouse)
        self.ranges = ranges
        self.file_name = file_name
        self.created_base_ms = created_base_ms

    def process(self, element: tuple[str, list[str | None]]) -> Iterator[str]:
        name, paths = element
        staged = [p for p in paths if p is not None]
        if staged:
            table = to_table_schema(name, load_staged(staged, ALL_TABLES[name]), self.created_base_ms)
        else:
            table = ALL_TABLES[name].empty_table()
        Metrics.counter(OUTPUT, f"rows/{name}").inc(table.num_rows)
        for path in write_table(self.warehouse, name, table, self.ranges, self.file_name):
            yield str(path)


def dead_letter_rows(parsed: Parsed, staging: str) -> Iterator[tuple[str, str]]:
    if parsed.dead:
        table = pa.Table.from_pylist([d.__dict__ for d in parsed.dead], schema=DEADLETTER_SCHEMA)
        yield "dead_letters", stage_table(staging, "dead_letters", table)


class ProduceDeadLetters(beam.DoFn):
    """Sends every dead letter to the dead-letter topic (at least once: a rerun may resend)."""

    def __init__(self, bootstrap: str, topic: str):
        self.bootstrap = bootstrap
        self.topic = topic
        self._producer = None

    def process(self, parsed: Parsed) -> Iterator[int]:
        if not parsed.dead:
            return  # the common case: no producer connection at all
        if self._producer is None:
            self._producer = make_producer(self.bootstrap, client_id="ctrflow-deadletter")
        for letter in parsed.dead:
            self._producer.send(self.topic, value=letter.to_json(), key=str(letter.partition).encode())
        self._producer.flush()
        yield len(parsed.dead)

    def teardown(self) -> None:
        if self._producer is not None:
            self._producer.close()
