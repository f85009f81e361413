"""Feature job entry points: one micro-batch, bounded builds (Kafka or a log file), continuous streaming.

A micro-batch is one run of the ``graph.FeatureJob`` Beam graph over planned offset ranges:
ReadEvents (read + parse) -> SinkDeadLetters (aside) -> Watermark -> ComputeFeatures (shard by user / by
item, features with the previous state, each shard writing its own Parquet files). Before it, the
driver removes what an earlier attempt of the same ranges wrote; after it, on the driver: online push
of the batch's newest rows, the checkpoint commit (offsets + state + the manifest of part files,
atomically) and the DuckDB views. A crash anywhere before the commit leaves the last checkpoint in
force; the rerun rewrites the same-named files, and the files of an attempt that never committed are
removed before the next run writes anything.

A Kafka run holds its job's lock (``pipelines.locks``) throughout, refuses a checkpoint that belongs
to another log (``_check_log``) and verifies that every part file the checkpoint vouches for exists.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import apache_beam as beam
import duckdb
import pyarrow as pa
from apache_beam.metrics.metric import MetricsFilter
from apache_beam.options.pipeline_options import PipelineOptions

from pipelines.beam import state as st
from pipelines.beam.graph import BatchPlan, FeatureJob
from pipelines.beam.kafka_source import (
    OffsetRange,
    current_highwater,
    log_identity,
    plan_batch,
    record_fingerprints,
)
from pipelines.beam.options import pipeline_options, runner_for
from pipelines.beam.sinks import (
    ALL_TABLES,
    SourceRange,
    batch_file_name,
    batch_parts,
    check_warehouse_horizons,
    read_batch_files,
    refresh_views,
    remove_batch_files,
    remove_parts,
    sources_of,
    warehouse_schemas,
)
from pipelines.beam.transforms import ACCOUNTING, OUTPUT, FileSlice, WarehouseWriter
from pipelines.beam.watermark import merge_progress, next_watermark
from pipelines.kafka import ensure_ctr_topics, kafka_bootstrap
from pipelines.locks import resource_lock
from pipelines.logfile import log_format, open_parquet
from pipelines.settings import Settings

_LOG = logging.getLogger(__name__)
OnlineSink = Callable[[str, pa.Table], object]
ONLINE_TABLES = ("user_stats", "item_stats", "user_sequences", "item_attributes")
SOURCE_TOPICS = ("impressions", "clicks")
# The name of the batch being written, in the job directory: a restart removes what it left behind.
ATTEMPT_FILE = "attempt.json"


# Local parallelism: every core, as threads (see options.pipeline_options).
DEFAULT_WORKERS = min(os.cpu_count() or 1, 8)


@dataclass
class JobConfig:
    """How a feature job runs (the feature definitions themselves come from Settings)."""

    # Several shards per worker: shards differ in size, and small ones fill the gaps of big ones.
    num_shards: int = 8
    max_records_per_partition: int = 200_000  # per micro-batch
    # Records per parallel read: big enough to amortise a piece's per-shard hand-off files, small
    # enough that a big batch still spreads over every worker.
    piece_size: int = 250_000
    num_workers: int = DEFAULT_WORKERS
    running_mode: str | None = None
    beam_args: Sequence[str] = ()

    def __post_init__(self) -> None:
        if not 1 <= self.num_shards <= 1024:
            raise ValueError("num_shards must be in [1, 1024]")


@dataclass
class BatchReport:
    batch_seq: int
    file_name: str
    final: bool
    watermark_ms: int | None
    accounting: dict[str, dict[str, int]]
    rows: dict[str, int]
    online_rows: dict[str, int]
    pipeline_s: float = 0.0  # the Beam run: read, features, Parquet
    online_s: float = 0.0  # the online push


@dataclass
class RunReport:
    """What a run did, per partition (consumed = accepted + dead_lettered) and per table."""

    batches: list[BatchReport] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def accounting(self) -> dict[str, dict[str, int]]:
        total: dict[str, dict[str, int]] = {}
        for b in self.batches:
            for key, counts in b.accounting.items():
                acc = total.setdefault(key, {"consumed": 0, "accepted": 0, "dead_lettered": 0})
                for k, v in counts.items():
                    acc[k] = acc.get(k, 0) + v
        return dict(sorted(total.items()))

    @property
    def rows(self) -> dict[str, int]:
        total: dict[str, int] = {}
        for b in self.batches:
            for k, v in b.rows.items():
                total[k] = total.get(k, 0) + v
        return total

    @property
    def consumed(self) -> int:
        return sum(v["consumed"] for v in self.accounting.values())

    @property
    def balanced(self) -> bool:
        return all(v["consumed"] == v["accepted"] + v["dead_lettered"] for v in self.accounting.values())

    def to_dict(self) -> dict:
        return {
            "batches": len(self.batches),
            "seconds": round(self.seconds, 3),
            "events_per_s": round(self.consumed / self.seconds, 1) if self.seconds else None,
            "accounting": self.accounting,
            "balanced": self.balanced,
            "rows": self.rows,
            "watermark_ms": self.batches[-1].watermark_ms if self.batches else None,
            "final": self.batches[-1].final if self.batches else None,
            "batch_reports": [asdict(b) for b in self.batches],
        }


def _metric_values(result: beam.runners.runner.PipelineResult) -> tuple[dict, dict, dict]:
    """(counters, distribution maxima, output row counts) from a finished pipeline's metrics."""
    metrics = result.metrics().query(MetricsFilter())
    counters: dict[str, int] = {}
    maxima: dict[str, int] = {}
    for m in metrics["counters"]:
        name = f"{m.key.metric.namespace}:{m.key.metric.name}"
        counters[name] = counters.get(name, 0) + m.result
    for m in metrics["distributions"]:
        if m.key.metric.namespace == ACCOUNTING and m.result.max is not None:
            key = m.key.metric.name.split("/", 1)[1]
            maxima[key] = max(maxima.get(key, m.result.max), m.result.max)
    accounting: dict[str, dict[str, int]] = {}
    rows: dict[str, int] = {}
    for name, value in counters.items():
        ns, metric = name.split(":", 1)
        kind, key = metric.split("/", 1)
        if ns == ACCOUNTING:
            accounting.setdefault(key, {"consumed": 0, "accepted": 0, "dead_lettered": 0})[kind] = value
        elif ns == OUTPUT:
            rows[key] = value
    return accounting, maxima, rows


@dataclass
class _Attempt:
    """One attempt at a batch, set up before its graph runs: the names and places it writes to."""

    seq: int
    file_name: str
    scratch: Path  # removed once the graph has run
    state_in: str | None
    state_out: Path | None  # None: a one-shot build keeps no state
    created_base: int
    writer: WarehouseWriter
    removed: list[Path]  # warehouse files of the same ranges, removed before the batch writes


def _run_batch(
    settings: Settings,
    plan: BatchPlan,
    checkpoint: st.Checkpoint,
    job_directory: Path | None,
    config: JobConfig,
    bootstrap: str | None,
    online_sink: OnlineSink | None,
) -> tuple[BatchReport, st.Checkpoint]:
    """One micro-batch: prepare the attempt -> run the graph (metrics) -> online push -> commit."""
    # Built first: bad options fail the batch before it touches a file.
    options = pipeline_options(config.beam_args, config.num_workers, config.running_mode)
    attempt = _prepare_attempt(settings, plan, checkpoint, job_directory)
    started = time.perf_counter()
    accounting, maxima, rows = _run_graph(
        settings, plan, checkpoint, attempt, config.num_shards, bootstrap, options
    )
    pipeline_s = time.perf_counter() - started
    online_rows = _push_online(settings, attempt.file_name, online_sink)
    online_s = time.perf_counter() - started - pipeline_s
    nxt = _next_checkpoint(settings, plan, checkpoint, attempt, maxima, rows, config.num_shards, bootstrap)
    if job_directory is not None:
        st.commit_checkpoint(job_directory, nxt)
    _refresh_views(settings)
    report = BatchReport(
        attempt.seq, attempt.file_name, plan.final, None if plan.final else nxt.watermark_ms, accounting,
        rows, online_rows, round(pipeline_s, 3), round(online_s, 3),
    )  # fmt: skip
    return report, nxt


def _prepare_attempt(
    settings: Settings, plan: BatchPlan, checkpoint: st.Checkpoint, job_directory: Path | None
) -> _Attempt:
    """Scratch space for the batch, with what a killed attempt left removed; the attempt's name recorded
    (so a restart can remove its part files) before the warehouse files of the same ranges are removed."""
    seq = checkpoint.batch_seq + 1
    file_name = batch_file_name(plan.ranges, fallback=f"final-{seq:08d}")
    state_in = str(job_directory / checkpoint.state_dir) if job_directory and checkpoint.state_dir else None
    # Scratch space of this batch (staged tables).
    scratch_root = job_directory or settings.home_dir / "tmp"
    scratch_root.mkdir(parents=True, exist_ok=True)
    if job_directory is not None:
        for stale in job_directory.glob("batch-*"):  # scratch of a killed attempt
            shutil.rmtree(stale, ignore_errors=True)
    scratch = Path(tempfile.mkdtemp(prefix=f"batch-{seq:08d}-", dir=scratch_root))
    state_out = None
    if job_directory is not None:
        state_out = job_directory / st.state_dir_name(seq)
        shutil.rmtree(state_out, ignore_errors=True)  # leftovers of a killed attempt
    created_base = max(int(time.time() * 1000), checkpoint.last_created_ms + 1)
    warehouse = settings.warehouse_dir
    writer = WarehouseWriter(str(warehouse), plan.ranges, file_name, created_base, settings.horizons)
    if job_directory is not None:
        _write_json(job_directory / ATTEMPT_FILE, {"file_name": file_name})
    removed = remove_batch_files(warehouse, plan.ranges, file_name)  # a rerun replaces, never duplicates
    return _Attempt(seq, file_name, scratch, state_in, state_out, created_base, writer, removed)


def _run_graph(
    settings: Settings,
    plan: BatchPlan,
    checkpoint: st.Checkpoint,
    attempt: _Attempt,
    num_shards: int,
    bootstrap: str | None,
    options: PipelineOptions,
) -> tuple[dict[str, dict[str, int]], dict[str, int], dict[str, int]]:
    """Runs the batch's FeatureJob graph; returns (accounting, max event time per partition, rows per
    table) from its metrics. Damaged state a worker found is raised as a CheckpointError."""
    try:
        with beam.Pipeline(runner=runner_for(options), options=options) as p:
            _ = p | "FeatureJob" >> FeatureJob(
                settings,
                plan,
                checkpoint,
                writer=attempt.writer,
                staging=str(attempt.scratch / "staging"),
                state_in=attempt.state_in,
                state_out=str(attempt.state_out) if attempt.state_out else None,
                num_shards=num_shards,
                bootstrap=bootstrap,
            )
        accounting, maxima, written = _metric_values(p.result)
        return accounting, maxima, {name: written.get(name, 0) for name in ALL_TABLES}
    except Exception as exc:
        unusable = _unusable_state(exc)
        if unusable is None:
            raise
        raise st.CheckpointError(unusable) from exc
    finally:
        shutil.rmtree(attempt.scratch, ignore_errors=True)


def _push_online(settings: Settings, file_name: str, online_sink: OnlineSink | None) -> dict[str, int]:
    """The batch's rows of the online tables to ``online_sink``; rows pushed per table."""
    online_rows: dict[str, int] = {}
    if online_sink is not None:
        schemas = warehouse_schemas(settings.horizons)
        for name in ONLINE_TABLES:
            frame = read_batch_files(settings.warehouse_dir, name, schemas[name], file_name)
            if frame.num_rows:
                written = online_sink(name, frame)
                online_rows[name] = int(written) if isinstance(written, int) else frame.num_rows
    return online_rows


def _next_checkpoint(
    settings: Settings,
    plan: BatchPlan,
    checkpoint: st.Checkpoint,
    attempt: _Attempt,
    maxima: dict[str, int],
    rows: dict[str, int],
    num_shards: int,
    bootstrap: str | None,
) -> st.Checkpoint:
    """The checkpoint once this batch's files are in place: offsets advanced past the batch's ranges,
    progress and watermark, fingerprints of the new offsets' records and the manifest of part files."""
    warehouse = settings.warehouse_dir
    keeps_state = attempt.state_out is not None  # a Kafka job (it has a job directory)
    progress = merge_progress(checkpoint.max_event_times, maxima)
    watermark_ms = next_watermark(progress, plan.lagging, checkpoint.watermark_ms)
    offsets = dict(checkpoint.offsets)
    for src in plan.sources:
        if isinstance(src, OffsetRange):
            key = st.Checkpoint.key(src.topic, src.partition)
            offsets[key] = max(offsets.get(key, 0), src.end)
    fingerprints = dict(checkpoint.fingerprints)
    advanced = {tp: n for tp, n in st.Checkpoint(offsets=offsets).offset_map().items()
                if checkpoint.offsets.get(st.Checkpoint.key(*tp)) != n}  # fmt: skip
    if bootstrap is not None and advanced:
        for (topic, partition), fp in record_fingerprints(bootstrap, advanced).items():
            fingerprints[st.Checkpoint.key(topic, partition)] = fp
    gone = {str(p.relative_to(warehouse)) for p in attempt.removed}
    parts = sorted((set(checkpoint.parts) - gone) | set(batch_parts(warehouse, attempt.file_name)))
    return st.Checkpoint(
        batch_seq=attempt.seq,
        offsets=offsets,
        max_event_times=progress,
        watermark_ms=watermark_ms,
        # Shard i's rows take created_base + i + k * shards (WarehouseWriter): none reaches this.
        last_created_ms=attempt.created_base + max(rows.values(), default=1) * num_shards - 1,
        state_dir=st.state_dir_name(attempt.seq) if keeps_state else None,
        final=plan.final,
        cluster_id=checkpoint.cluster_id,
        topic_ids=checkpoint.topic_ids,
        fingerprints=fingerprints,
        parts=parts if keeps_state else [],
        horizons=settings.horizons.spec(),
    )


def _unusable_state(exc: BaseException) -> str | None:
    """The message of a CheckpointError a worker raised (damaged state past what check_state reads):
    the runner hands it back as a RuntimeError holding the worker's traceback as text."""
    marker = f"{st.CheckpointError.__name__}: "
    for line in reversed(str(exc).splitlines()):
        if marker in line:
            return re.sub(r"\s*\[while running [^\]]*\]\s*$", "", line.split(marker, 1)[1].strip())
    return None


def _refresh_views(settings: Settings) -> None:
    try:
        refresh_views(settings.warehouse_dir, settings.warehouse_db, settings.horizons)
    except duckdb.Error as exc:
        # Another process holds the database (e.g. a long query); views glob the directories, so
        # they already see the new files and only a brand-new table waits for the next batch.
        _LOG.warning("DuckDB views not refreshed this batch: %s", exc)


def _kafka_plan(
    checkpoint: st.Checkpoint, target: dict[tuple[str, int], int], config: JobConfig, final: bool
) -> BatchPlan:
    pieces = plan_batch(checkpoint.offset_map(), target, config.max_records_per_partition, config.piece_size)
    reached: dict[tuple[str, int], int] = dict(checkpoint.offset_map())
    for r in pieces:
        reached[(r.topic, r.partition)] = max(reached.get((r.topic, r.partition), 0), r.end)
    lagging = [st.Checkpoint.key(t, p) for (t, p), hw in target.items() if reached.get((t, p), 0) < hw]
    ranges = [SourceRange(r.topic, r.partition, r.start, r.end) for r in pieces]
    return BatchPlan(pieces, ranges, lagging, final and not lagging)


def job_name(settings: Settings) -> str:
    return settings.topic_prefix


def job_lock_name(settings: Settings) -> str:
    """The lock of one Kafka feature job: its checkpoint and the warehouse files it writes."""
    return f"features-{job_name(settings)}"


class MissingParts(ValueError):
    """Part files the committed checkpoint vouches for are gone from the warehouse."""


@dataclass(frozen=True)
class VerifyReport:
    """Does the warehouse hold every part file the feature job's checkpoint vouches for?"""

    checkpoint: str
    batch_seq: int
    parts: int
    missing: tuple[str, ...]

    @property
    def ok(self) -> bool:
        return not self.missing

    def message(self) -> str:
        if self.ok:
            return f"{self.parts} part files of checkpoint {self.checkpoint} (batch {self.batch_seq}) present"
        return (
            f"{len(self.missing)} of {self.parts} warehouse part files vouched for by checkpoint "
            f"{self.checkpoint} are missing (first: {self.missing[0]}); {st.RESET_HINT}"
        )

    def to_dict(self) -> dict:
        return {**asdict(self), "missing": list(self.missing), "ok": self.ok}


def verify_warehouse(settings: Settings) -> VerifyReport:
    """Check the committed checkpoint, its state files and its manifest of part files (read-only).

    Raises CheckpointError when the checkpoint or its state cannot be used."""
    directory = st.job_dir(settings.checkpoints_dir, job_name(settings))
    checkpoint = st.load_checkpoint(directory)
    st.check_horizons(directory, checkpoint, settings.horizons)
    st.check_state(directory, checkpoint, settings.horizons)
    missing = tuple(p for p in checkpoint.parts if not (settings.warehouse_dir / p).is_file())
    path = str(directory / st.CHECKPOINT_FILE)
    return VerifyReport(path, checkpoint.batch_seq, len(checkpoint.parts), missing)


def _write_json(path: Path, value: object) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(value))
    os.replace(tmp, path)


def _uncommitted_parts(settings: Settings, directory: Path, committed: set[str]) -> list[str]:
    """Part files of a batch that was being written when its job died (never committed)."""
    try:
        name = json.loads((directory / ATTEMPT_FILE).read_text())["file_name"]
    except (OSError, ValueError, KeyError, TypeError):
        return []
    if not isinstance(name, str):
        return []
    return [p for p in batch_parts(settings.warehouse_dir, name) if p not in committed]


def _parts_by_footer(settings: Settings) -> list[str]:
    """Part files of this job found by their footers (for a checkpoint without a manifest): files
    read from its topics, and final flushes (which read no records, so name no source)."""
    warehouse = settings.warehouse_dir
    topics = {settings.topic(t) for t in SOURCE_TOPICS}
    found = []
    for table in ALL_TABLES:
        for path in sorted((warehouse / table).rglob("*.parquet")) if (warehouse / table).is_dir() else ():
            try:
                sources = sources_of(path)
            except (OSError, pa.ArrowException):
                continue  # unreadable: whose it is cannot be told, so it is left alone
            if sources & topics or (not sources and path.name.startswith("final-")):
                found.append(str(path.relative_to(warehouse)))
    return found


def reset_checkpoint(settings: Settings) -> int:
    """Forget committed offsets and state, and delete every warehouse part file the dropped checkpoint
    vouched for (and those of an uncommitted attempt): the next run rebuilds from offset 0 without
    leaving a row of the old build behind. Returns the number of part files removed."""
    directory = st.job_dir(settings.checkpoints_dir, job_name(settings))
    with resource_lock(settings, job_lock_name(settings)):
        try:
            parts = st.load_checkpoint(directory).parts
        except st.CheckpointError:  # an older or broken checkpoint has no usable manifest
            parts = _parts_by_footer(settings)
        parts = [*parts, *_uncommitted_parts(settings, directory, set(parts))]
        removed = remove_parts(settings.warehouse_dir, parts)
        shutil.rmtree(directory, ignore_errors=True)
        if removed and settings.warehouse_db.exists():
            _refresh_views(settings)
    return removed


class LogMismatch(st.CheckpointError):
    """The checkpoint's offsets belong to another log than the broker now holds."""


def _check_log(
    checkpoint: st.Checkpoint,
    path: Path,
    identity: tuple[str | None, dict[str, str | None]],
    highwater: dict[tuple[str, int], int],
    bootstrap: str,
) -> None:
    """Refuse a checkpoint whose offsets would be applied to another log (a recreated topic, another
    or a restarted in-memory broker): resuming would skip records of the new log, mixing two logs."""

    def refuse(why: str) -> LogMismatch:
        return LogMismatch(f"checkpoint {path} belongs to another log: {why}; {st.RESET_HINT}")

    cluster, topic_ids = identity
    if checkpoint.cluster_id and cluster and checkpoint.cluster_id != cluster:
        raise refuse(f"cluster id {cluster!r}, the checkpoint's is {checkpoint.cluster_id!r}")
    for topic, tid in sorted(checkpoint.topic_ids.items()):
        if tid and topic_ids.get(topic) and topic_ids[topic] != tid:
            raise refuse(f"topic {topic} has id {topic_ids[topic]}, the checkpoint's is {tid}")
    offsets = checkpoint.offset_map()
    for (topic, partition), offset in sorted(offsets.items()):
        if (topic, partition) not in highwater:
            raise refuse(f"{topic}[{partition}] no longer exists")
        if offset > highwater[(topic, partition)]:
            raise refuse(
                f"offset {offset} of {topic}[{partition}] is beyond its high-water mark "
                f"{highwater[(topic, partition)]}"
            )
    for (topic, partition), now in record_fingerprints(bootstrap, offsets).items():
        then = checkpoint.fingerprints.get(st.Checkpoint.key(topic, partition))
        if then is not None and now is not None and then != now:
            raise refuse(f"the record before offset {then.offset + 1} of {topic}[{partition}] differs")


def run_kafka(
    settings: Settings,
    *,
    final: bool = False,
    continuous: bool = False,
    online_sink: OnlineSink | None = None,
    config: JobConfig | None = None,
    stop: threading.Event | None = None,
    poll_interval_s: float = 1.0,
    max_batches: int | None = None,
    on_batch: Callable[[BatchReport], None] | None = None,
) -> RunReport:
    """Bounded (up to the high-water marks seen at start) or continuous micro-batches from Kafka.

    ``final`` (bounded only) labels every impression still pending once the log is read: use it for a
    finished log, where no more clicks can come. ``stop`` ends a continuous run after the current batch.
    """
    if continuous and final:
        raise ValueError("final mode is for bounded runs over a finished log, not for streaming")
    config = config or JobConfig()
    stop = stop or threading.Event()
    directory = st.job_dir(settings.checkpoints_dir, job_name(settings))
    report = RunReport()
    started = time.perf_counter()
    with resource_lock(settings, job_lock_name(settings)):
        checkpoint = st.load_checkpoint(directory)
        verified = verify_warehouse(settings)
        if not verified.ok:
            raise MissingParts(verified.message())
        check_warehouse_horizons(settings.warehouse_dir, settings.horizons)
        remove_parts(settings.warehouse_dir, _uncommitted_parts(settings, directory, set(checkpoint.parts)))
        with kafka_bootstrap(settings) as bootstrap:
            ensure_ctr_topics(bootstrap, settings)
            topics = [settings.topic(t) for t in SOURCE_TOPICS]
            target = current_highwater(bootstrap, topics)
            identity = log_identity(bootstrap, topics)
            _check_log(checkpoint, directory / st.CHECKPOINT_FILE, identity, target, bootstrap)
            checkpoint.cluster_id, checkpoint.topic_ids = identity  # the next commit records the log
            while not stop.is_set() and (max_batches is None or len(report.batches) < max_batches):
                if continuous:
                    target = current_highwater(bootstrap, topics)
                plan = _kafka_plan(checkpoint, target, config, final)
                if not plan.sources:
                    if final and not checkpoint.final:
                        plan.final = True  # nothing left to read: flush what is pending
                    elif continuous:
                        stop.wait(poll_interval_s)
                        continue
                    else:
                        break
                batch, checkpoint = _run_batch(
                    settings, plan, checkpoint, directory, config, bootstrap, online_sink
                )
                report.batches.append(batch)
                if on_batch:
                    on_batch(batch)
                if plan.final:
                    break
    report.seconds = time.perf_counter() - started
    return report


def file_slices(path: Path, piece_size: int) -> tuple[list[FileSlice], int]:
    """Row slices of a canonical log (Parquet: row ranges; JSON Lines: one slice, line-numbered)."""
    if not path.is_file():
        raise FileNotFoundError(f"log file not found: {path}")
    if log_format(path) == "parquet":
        n = open_parquet(path).metadata.num_rows  # a log the job cannot read fails here, before any work
        return [FileSlice(str(path), a, min(n, a + piece_size)) for a in range(0, n, piece_size)], n
    with open(path, "rb") as f:
        n = sum(1 for _ in f)
    return [FileSlice(str(path), 0, n)], n


def run_file(
    settings: Settings,
    path: Path,
    *,
    online_sink: OnlineSink | None = None,
    config: JobConfig | None = None,
) -> RunReport:
    """Backfill from a finished canonical log file (Parquet or JSON Lines), in final mode, statelessly."""
    config = config or JobConfig()
    path = path.resolve()
    slices, n = file_slices(path, config.piece_size)
    check_warehouse_horizons(settings.warehouse_dir, settings.horizons)
    plan = BatchPlan(slices, [SourceRange(str(path), -1, 0, n)], [], final=True)
    started = time.perf_counter()
    batch, _ = _run_batch(settings, plan, st.Checkpoint(), None, config, None, online_sink)
    return RunReport([batch], time.perf_counter() - started)
