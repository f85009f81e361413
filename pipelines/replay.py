"""Replay a click log into Kafka in event-time order, at recorded pace x N or as fast as possible.

Impressions go to ``<prefix>.impressions`` and clicks to ``<prefix>.clicks``, keyed by ``user_id`` so a
user's events stay ordered in one partition; malformed records go to ``<prefix>.deadletter`` as
``DeadLetter`` JSON (raw bytes, reason, source file, 1-based line number). The counts always add up:
``read = produced + dead_lettered + skipped`` (``skipped``: adapter lines that are deliberately not
events, e.g. a Taobao ``cart``). Blank lines of a canonical JSONL log are not records: they are skipped
and counted apart, in ``blank_lines``. A record over ``events.MAX_RECORD_BYTES`` is dead-lettered like
any malformed one (its dead letter keeps a prefix of it), so one runaway line cannot stop a replay.

Canonical JSONL is assumed to be in event-time order (the simulator and ``convert`` write it so);
records that go back in time are still produced and counted in ``out_of_order``. Adapter output is put
in event-time order by a bounded-memory external sort first.

Throughput: each record is validated exactly once, canonical JSON lines in Arrow blocks
(``logfile.check_block``) with an exact per-line fallback; a canonical line is produced as the bytes it
was read as (no re-encoding); a user's key bytes and partition are computed once and cached, so
``producer.send`` skips the pure-Python murmur2 partitioner (same partition as the default one); and
deliveries are checked by sweeping the send futures, not by a callback per record.
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
from pipelines.events import IMPRESSION, DeadLetter, MalformedEvent, decode_event, encode_event
from pipelines.kafka import ensure_ctr_topics, make_producer
from pipelines.logfile import check_block, iter_events, log_format, sort_by_event_time
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
    blank_lines: int = 0
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
        self.cache: dict[str, tuple[bytes, int, int]] = {}

    def route(self, user_id: str) -> tuple[bytes, int, int]:
        """``(key, impressions partition, clicks partition)`` for a user."""
        hit = self.cache.get(user_id)
        if hit is None:
            key = user_id.encode()
            # kafka-python's DefaultPartitioner: murmur2(key) & 0x7fffffff % n (as the Java client).
            h = murmur2(key) & 0x7FFFFFFF
            hit = self.cache[user_id] = (key, h % self._n_imp, h % self._n_clk)
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


# What a source yields per record: (kind, user_id, event_time, payload). kind is "impression" or
# "click" (payload: the value bytes), DEAD (payload: a DeadLetter), SKIP (payload: a Skipped) or BLANK
# (a blank line, not a record; payload: its line number).
DEAD = "deadletter"
SKIP = "skipped"
BLANK = "blank"
SourceItem = tuple[str, str | None, int | None, "bytes | DeadLetter | Skipped | int"]
_BLOCK_BYTES = 2 * 1024 * 1024


def _canonical_jsonl(path: Path) -> Iterator[SourceItem]:
    """Validated lines, produced as the bytes they were read as (they already are compact JSON).

    Blocks of lines are validated at once in Arrow; only lines it cannot vouch for go through
    ``decode_event`` one by one (which also names the reason for a dead letter)."""
    first_line = 1
    with open(path, "rb") as f:
        while block := f.readlines(_BLOCK_BYTES):
            yield from _check_lines(path, first_line, block)
            first_line += len(block)


def _check_lines(path: Path, first_line: int, block: list[bytes]) -> Iterator[SourceItem]:
    values = [raw.strip() for raw in block]
    if not all(values):
        yield from _check_lines_with_blanks(path, first_line, block, values)
        return
    checked = check_block(values)
    if checked is not None and all(checked.valid):
        # The common case: no per-record Python at all.
        yield from zip(checked.types, checked.user_ids, checked.event_times, values, strict=True)
        return
    for i, raw in enumerate(block):
        if checked is not None and checked.valid[i]:
            yield checked.types[i], checked.user_ids[i], checked.event_times[i], values[i]
        else:
            yield _check_line(path, first_line + i, raw.rstrip(b"\r\n"))


def _check_lines_with_blanks(
    path: Path, first_line: int, block: list[bytes], values: list[bytes]
) -> Iterator[SourceItem]:
    """A block holding blank lines: each run of non-blank lines is checked as a block of its own."""
    run_start = 0
    for i, value in enumerate([*values, b""]):
        if value:
            continue
        if run_start < i:
            yield from _check_lines(path, first_line + run_start, block[run_start:i])
        if i < len(values):
            yield BLANK, None, None, first_line + i
        run_start = i + 1


def _check_line(path: Path, line_no: int, raw: bytes) -> SourceItem:
    try:
        record = decode_event(raw)
    except MalformedEvent as exc:
        return DEAD, None, None, DeadLetter(str(path), -1, line_no, str(exc), raw)
    return record["type"], record["user_id"], record["event_time"], raw.strip()


def _encoded(records: Iterable[dict[str, Any] | DeadLetter | Skipped]) -> Iterator[SourceItem]:
    """Validated records (adapter or Parquet output) with their JSON values."""
    for record in records:
        if isinstance(record, dict):
            yield record["type"], record["user_id"], record["event_time"], encode_event(record)
        elif isinstance(record, DeadLetter):
            yield DEAD, None, None, record
        else:
            yield SKIP, None, None, record


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
) -> Iterator[SourceItem]:
    """Every record of a source as ``(kind, user_id, event_time, payload)`` (see ``SourceItem``)."""
    path = Path(source)
    if not path.is_file():
        raise FileNotFoundError(f"no such log file: {path}")
    if fmt == "canonical":
        if log_format(path) == "jsonl":
            return _canonical_jsonl(path)
        return _encoded(iter_events(path))
    if fmt not in ADAPTERS:
        raise ValueError(f"unknown format {fmt!r}: expected one of {list(FORMATS)}")
    return _encoded(_time_ordered(adapt_file(fmt, path, **adapter_options), sort_chunk_rows))


class _Deliveries:
    """Counts records the broker did not acknowledge, without a callback per record: futures are kept
    and swept from time to time (completed ones are checked and dropped)."""

    def __init__(self) -> None:
        self.pending: list[tuple[str, Any]] = []
        self.failed = {"event": 0, "deadletter": 0}
        self.first_error: BaseException | None = None

    def sweep(self, final: bool = False) -> None:
        still = []
        for kind, future in self.pending:
            if not future.is_done and not final:
                still.append((kind, future))
            elif future.failed():
                self.failed[kind] += 1
                self.first_error = self.first_error or future.exception
        self.pending = still


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
    items = source_records(source, fmt, **adapter_options)
    ensure_ctr_topics(bootstrap, settings)
    own_producer = producer is None
    producer = producer or make_producer(bootstrap)
    deliveries = _Deliveries()
    started = time.perf_counter()
    read = impressions = clicks = dead = skipped = out_of_order = blank = 0
    try:
        router = _Router(producer, settings)
        route, routes = router.route, router.cache
        imp_topic, clk_topic, dead_topic = router.impressions, router.clicks, router.deadletter
        pace = _Pacer(speed).wait if speed is not None else None
        send, track = producer.send, deliveries.pending.append
        last_time = 0
        # The per-record hot path: locals only, one dict lookup for the user's key and partitions.
        for kind, user_id, event_time, payload in items:
            if kind == BLANK:
                blank += 1
                continue
            read += 1
            if kind != DEAD and kind != SKIP:
                key, imp_partition, clk_partition = routes.get(user_id) or route(user_id)
                if event_time < last_time:
                    out_of_order += 1
                else:
                    last_time = event_time
                if pace:
                    pace(event_time)
                if kind == IMPRESSION:
                    track(("event", send(imp_topic, payload, key, partition=imp_partition)))
                    impressions += 1
                else:
                    track(("event", send(clk_topic, payload, key, partition=clk_partition)))
                    clicks += 1
            elif kind == DEAD:
                track(("deadletter", send(dead_topic, payload.to_json())))
                dead += 1
            else:
                skipped += 1
            if read % PROGRESS_EVERY == 0:
                deliveries.sweep()
                track = deliveries.pending.append
                if on_progress:
                    on_progress(PROGRESS_EVERY)
        producer.flush()
        deliveries.sweep(final=True)
    finally:
        if own_producer:
            producer.close()
    stats = ReplayStats(read=read, impressions=impressions, clicks=clicks, dead_lettered=dead,
                        skipped=skipped, out_of_order=out_of_order, blank_lines=blank)
    stats.seconds = time.perf_counter() - started
    if on_progress:
        on_progress(stats.read % PROGRESS_EVERY)
    # Only acknowledged records count as produced or dead-lettered.
    stats.produced = stats.impressions + stats.clicks - deliveries.failed["event"]
    stats.dead_lettered -= deliveries.failed["deadletter"]
    stats.failed = deliveries.failed["event"] + deliveries.failed["deadletter"]
    if stats.failed:
        raise ReplayError(
            f"{stats.failed} records were not acknowledged by the broker: {deliveries.first_error!r}", stats
        )
    return stats
