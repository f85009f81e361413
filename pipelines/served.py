"""The serving stub's prediction log: the Kafka record it produces and the bounded reader that turns the
``<prefix>.served`` topic into the ``served`` warehouse table.

One record per scored request (JSON, keyed by request id); the table has one row per scored candidate,
so it joins ``labelled_samples`` (and through them clicks) on ``(request_id, user_id, item_id)``.
The reader is exactly once like the feature job: it reads from its committed offsets up to the
high-water marks, replaces any file an earlier attempt wrote for the same offsets, and commits the new
offsets (a small JSON file, atomically renamed) only after the files are in place.
"""

from __future__ import annotations

import json
import logging
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa

from pipelines.beam import sinks
from pipelines.kafka import ensure_topics, high_watermarks, make_consumer, partitions_for
from pipelines.settings import Settings
from pipelines.tables import SERVED

SERVED_TOPIC = "served"
SERVED_FORMAT_VERSION = 1
_LOG = logging.getLogger(__name__)


@dataclass(frozen=True)
class ServedRecord:
    """What the server logs for one scored request (times in ms UTC, scores in the items' order)."""

    request_id: str
    user_id: str
    items: tuple[str, ...]
    scores: tuple[float, ...]
    model_version: str
    event_time: int
    served_at: int
    positions: tuple[int, ...] | None = None
    hour: int | None = None
    device: str | None = None
    page: str | None = None
    format: int = SERVED_FORMAT_VERSION

    def __post_init__(self) -> None:
        if len(self.items) != len(self.scores):
            raise ValueError(f"{len(self.items)} items but {len(self.scores)} scores")
        if self.positions is not None and len(self.positions) != len(self.items):
            raise ValueError(f"{len(self.items)} items but {len(self.positions)} positions")

    def to_json(self) -> bytes:
        return json.dumps(asdict(self), separators=(",", ":")).encode()

    @classmethod
    def from_json(cls, raw: bytes) -> ServedRecord:
        data: dict[str, Any] = json.loads(raw)
        if data.get("format") != SERVED_FORMAT_VERSION:
            raise ValueError(f"served record format {data.get('format')!r} != {SERVED_FORMAT_VERSION}")
        for name in ("items", "scores", "positions"):
            if data.get(name) is not None:
                data[name] = tuple(data[name])
        return cls(**data)


@dataclass(frozen=True)
class ServedSinkReport:
    records: int
    rows: int
    skipped: int  # records that were not a valid ServedRecord (logged, never written)
    offsets: dict[str, int] = field(default_factory=dict)


def _offsets_path(settings: Settings) -> Path:
    # Per topic: homes are shared by runs with different prefixes (and so different topics).
    return settings.checkpoints_dir / "served" / f"{settings.topic(SERVED_TOPIC)}.offsets.json"


def _read_offsets(settings: Settings) -> dict[str, int]:
    path = _offsets_path(settings)
    return json.loads(path.read_text()) if path.is_file() else {}


def _commit_offsets(settings: Settings, offsets: dict[str, int]) -> None:
    path = _offsets_path(settings)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(offsets, sort_keys=True))
    os.replace(tmp, path)


def _repeat(values: list[Any], counts: list[int]) -> list[Any]:
    return [v for v, k in zip(values, counts, strict=True) for _ in range(k)]


def served_rows(records: list[ServedRecord]) -> pa.Table:
    """One row per (request, candidate), with SERVED's columns except ``created``."""
    n = [len(r.items) for r in records]

    def per_item(name: str) -> list[Any]:
        return _repeat([getattr(r, name) for r in records], n)

    return pa.table({
        "request_id": per_item("request_id"),
        "user_id": per_item("user_id"),
        "item_id": [i for r in records for i in r.items],
        "rank_in_request": pa.array([j for k in n for j in range(k)], pa.int32()),
        "position": pa.array(
            [p for r in records for p in (r.positions or [None] * len(r.items))], pa.int32()
        ),
        "hour": pa.array(per_item("hour"), pa.int8()),
        "device": pa.array(per_item("device"), pa.string()),
        "page": pa.array(per_item("page"), pa.string()),
        "event_time": pa.array(per_item("event_time"), pa.int64()),
        "served_at": pa.array(per_item("served_at"), pa.int64()),
        "model_version": per_item("model_version"),
        "score": pa.array([s for r in records for s in r.scores], pa.float64()),
    })


def sink_served(settings: Settings, bootstrap: str) -> ServedSinkReport:
    """Read ``<prefix>.served`` from the committed offsets to the high-water marks into the warehouse."""
    topic = settings.topic(SERVED_TOPIC)
    ensure_topics(bootstrap, [topic], settings.topic_partitions)
    committed = _read_offsets(settings)
    consumer = make_consumer(bootstrap, client_id="ctrflow-served-sink")
    records: list[ServedRecord] = []
    skipped = 0
    ranges: list[sinks.SourceRange] = []
    offsets = dict(committed)
    try:
        partitions = partitions_for(consumer, topic)
        ends = high_watermarks(consumer, partitions)
        for tp in partitions:
            start, end = committed.get(str(tp.partition), 0), ends[tp]
            if end <= start:
                continue
            consumer.assign([tp])
            consumer.seek(tp, start)
            position = start
            deadline = time.monotonic() + 60.0
            while position < end and time.monotonic() < deadline:
                for message in consumer.poll(timeout_ms=500).get(tp, []):
                    if message.offset >= end:  # offsets may have gaps: everything below end is read
                        position = end
                        break
                    position = message.offset + 1
                    try:
                        records.append(ServedRecord.from_json(message.value))
                    except (ValueError, TypeError) as exc:
                        skipped += 1
                        _LOG.warning("served record %s:%d skipped: %s", topic, message.offset, exc)
            if position < end:
                raise TimeoutError(f"{topic}[{tp.partition}] read stopped at {position} of {end}")
            ranges.append(sinks.SourceRange(topic, tp.partition, start, end))
            offsets[str(tp.partition)] = end
    finally:
        consumer.close()
    rows = 0
    if ranges:
        warehouse = settings.warehouse_dir
        # "<ranges>.<prefix>": range tags drop the topic prefix, and homes may be shared across prefixes.
        name = sinks.part_file_name(sinks.batch_file_name(ranges, fallback="served"), settings.topic_prefix)
        sinks.remove_batch_files(warehouse, ranges, name)
        if records:
            table = sinks.to_table_schema("served", SERVED, served_rows(records), int(time.time() * 1000))
            sinks.write_table(warehouse, "served", table.cast(SERVED), ranges, name)
            rows = table.num_rows
            try:
                sinks.refresh_views(warehouse, settings.warehouse_db, settings.horizons, ["served"])
            except duckdb.Error as exc:  # a process holding the database only delays the view
                _LOG.warning("DuckDB view 'served' not refreshed: %s", exc)
        _commit_offsets(settings, offsets)
    return ServedSinkReport(len(records), rows, skipped, offsets)
