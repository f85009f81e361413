"""Replay a click log into Kafka in event-time order, at recorded pace x N or as fast as possible.

Impressions go to ``<prefix>.impressions`` and clicks to ``<prefix>.clicks``, keyed by ``user_id`` so a
user's events stay ordered in one partition; malformed records go to ``<prefix>.deadletter`` as
``DeadLetter`` JSON (raw bytes, reason, source file, 1-based line number). The counts always add up:
``read = produced + dead_lettered + skipped`` (``skipped``: adapter lines that are deliberately not
events, e.g. a Taobao ``cart``).

Canonical JSONL is assumed to be in event-time order (the simulator and ``convert`` write it so);
records that go back in time are still produced and counted in ``out_of_order``. Adapter output is put
in event-time order by a bounded-memory external sort first.

Throughput: each record is validated exactly once; a canonical JSON line is produced as the bytes it
was read as (no re-encoding); a user's key bytes and partition are computed once and cached, so
``producer.send`` skips the pure-Python murmur2 partitioner (same partition as the default one).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from kafka import KafkaProducer
from kafka.errors import KafkaError
from kafka.partitioner.default import murmur2

from pipelines.adapters import ADAPTERS, adapt_file
from pipelines.adapters.common import Skipped
from pipelines.events import DeadLetter, MalformedEvent, decode_event, encode_event
from pipelines.kafka import ensure_ctr_topics, make_producer
from pipelines.logfile import iter_events, iter_lines, log_format, sort_by_event_time
from pipelines.settings import Settings

FORMATS = ("canonical", *ADAPTERS)
PROGRESS_EVERY = 10_000


@dataclass
class ReplayStats:
    read: int = 0
    produced: int = 0
    dead_lettered: int = 0
    skipped: int = 0
    impressions: int = 0
    clicks: int = 0
    out_of_order: int = 0
    failed: int = 0
    seconds: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


class ReplayError(RuntimeError):
    """The broker did not acknowledge every record; ``stats`` says how many failed."""

    def __init__(self, message: str, stats: ReplayStats) -> None:
        super().__init__(message)
        self.stats = stats


class _Router:
    """Topic, key bytes and partition per record, cached per user (the per-record hot path)."""

    def __init__(self, producer: KafkaProducer, settings: Settings) -> None:
        self.impressions = settings.topic("impressions")
        self.clicks = settings.topic("clicks")
        self.deadletter = settings.topic("deadletter")
        self._n_imp = _partition_count(producer, self.impressions)
        self._n_clk = _partition_count(producer, self.clicks)
        self._cache: dict[str, tuple[bytes, int, int]] = {}

    def route(self, user_id: str) -> tuple[bytes, int, int]:
        """``(key, impressions partition, clicks partition)`` for a user."""
        hit = self._cache.get(user_id)
        if hit is None:
            key = user_id.encode()
            # kafka-python's DefaultPartitioner: murmur2(key) & 0x7fffffff % n (as the Java client).
            h = murmur2(key) & 0x7FFFFFFF
            hit = self._cache[user_id] = (key, h % self._n_imp, h % self._n_clk)
        return hit


def _partition_count(producer: KafkaProducer, topic: str) -> int:
    parts = producer.partitions_for(topic)
    if not parts:
        raise KafkaError(f"topic {topic!r} has no partitions")
    return len(parts)


class _Pacer:
    """Sleeps so that event time advances at ``speed`` x wall-clock time (None = no pacing)."""

    def __init__(self, speed: float | None) -> None:
        if speed is not None and not speed > 0:
            raise ValueError("speed must be > 0 (or None for as fast as possible)")
        self.speed = speed
        self._origin: tuple[int, float] | None = None

    def wait(self, event_time: int) -> None:
        if self.speed is None:
            return
        if self._origin is None:
            self._origin = (event_time, time.monotonic())
            return
        first_event, first_wall = self._origin
        delay = first_wall + (event_time - first_event) / 1000.0 / self.speed - time.monotonic()
        if delay > 0.001:
            time.sleep(delay)


def _canonical_jsonl(path: Path) -> Iterator[tuple[dict[str, Any] | DeadLetter, bytes | None]]:
    """(record, value bytes) per line; a valid line is produced as read (it is already compact JSON)."""
    for line_no, raw in iter_lines(path):
        try:
            yield decode_event(raw), raw.strip()
        except MalformedEvent as exc:
            yield DeadLetter(str(path), -1, line_no, str(exc), raw), None


def _with_values(
    records: Iterable[dict[str, Any] | DeadLetter | Skipped],
) -> Iterator[tuple[dict[str, Any] | DeadLetter | Skipped, bytes | None]]:
    """Encode records in batches (one tight comprehension per batch instead of per-record calls)."""
    batch: list[dict[str, Any] | DeadLetter | Skipped] = []
    for record in records:
        batch.append(record)
        if len(batch) >= 4096:
            yield from zip(batch, [encode_event(r) if isinstance(r, dict) else None for r in batch],
                           strict=True)
            batch = []
    yield from zip(batch, [encode_event(r) if isinstance(r, dict) else None for r in batch], strict=True)


def _time_ordered(stream: Iterable[dict[str, Any] | DeadLetter | Skipped], sort_chunk_rows: int):
    """Adapter output in event-time order; dead letters and skips pass straight through first."""
    side: list[DeadLetter | Skipped] = []

    def events() -> Iterator[dict[str, Any]]:
        for item in stream:
            if isinstance(item, dict):
                yield item
            else:
                side.append(item)

    for record in sort_by_event_time(events(), sort_chunk_rows):
        if side:
            yield from side
            side.clear()
        yield record
    yield from side


def source_records(
    source: Path | str, fmt: str = "canonical", sort_chunk_rows: int = 500_000, **adapter_options: object
) -> Iterator[tuple[dict[str, Any] | DeadLetter | Skipped, bytes | None]]:
    """Every record of a source as ``(record, encoded value)``; value is None for non-events."""
    path = Path(source)
    if not path.is_file():
        raise FileNotFoundError(f"no such log file: {path}")
    if fmt == "canonical":
        if log_format(path) == "jsonl":
            return _canonical_jsonl(path)
        return _with_values(iter_events(path))
    if fmt not in ADAPTERS:
        raise ValueError(f"unknown format {fmt!r}: expected one of {list(FORMATS)}")
    return _with_values(_time_ordered(adapt_file(fmt, path, **adapter_options), sort_chunk_rows))


def replay(
    source: Path | str,
    settings: Settings,
    bootstrap: str,
    fmt: str = "canonical",
    speed: float | None = None,
    on_progress: Callable[[int], None] | None = None,
    producer: KafkaProducer | None = None,
    **adapter_options: object,
) -> ReplayStats:
    """Produce a log file to the CTR topics; returns the counts (raises ReplayError on lost records)."""
    records = source_records(source, fmt, **adapter_options)
    ensure_ctr_topics(bootstrap, settings)
    own_producer = producer is None
    producer = producer or make_producer(bootstrap)
    stats = ReplayStats()
    failures: dict[str, list[BaseException]] = {"event": [], "deadletter": []}

    def failed_event(exc: BaseException) -> None:
        failures["event"].append(exc)

    def failed_deadletter(exc: BaseException) -> None:
        failures["deadletter"].append(exc)

    started = time.perf_counter()
    try:
        router = _Router(producer, settings)
        pacer = _Pacer(speed)
        send = producer.send
        last_time = 0
        for record, value in records:
            stats.read += 1
            if value is not None:
                user_key, imp_partition, clk_partition = router.route(record["user_id"])
                event_time = record["event_time"]
                if event_time < last_time:
                    stats.out_of_order += 1
                else:
                    last_time = event_time
                pacer.wait(event_time)
                if record["type"] == "impression":
                    future = send(router.impressions, value=value, key=user_key, partition=imp_partition)
                    stats.impressions += 1
                else:
                    future = send(router.clicks, value=value, key=user_key, partition=clk_partition)
                    stats.clicks += 1
                future.add_errback(failed_event)
            elif isinstance(record, DeadLetter):
                future = send(router.deadletter, value=record.to_json())
                stats.dead_lettered += 1
                future.add_errback(failed_deadletter)
            else:
                stats.skipped += 1
            if on_progress and stats.read % PROGRESS_EVERY == 0:
                on_progress(PROGRESS_EVERY)
        producer.flush()
    finally:
        if own_producer:
            producer.close()
    stats.seconds = time.perf_counter() - started
    if on_progress:
        on_progress(stats.read % PROGRESS_EVERY)
    # Only acknowledged records count as produced or dead-lettered.
    stats.produced = stats.impressions + stats.clicks - len(failures["event"])
    stats.dead_lettered -= len(failures["deadletter"])
    stats.failed = len(failures["event"]) + len(failures["deadletter"])
    if stats.failed:
        first = (failures["event"] + failures["deadletter"])[0]
        raise ReplayError(f"{stats.failed} records were not acknowledged by the broker: {first!r}", stats)
    return stats
