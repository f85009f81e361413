"""The feature job's Beam graph, as named composite transforms (one micro-batch):

    FeatureJob
    ├─ ReadEvents       planned pieces -> Parsed      (Plan, ReadKafka + Parse | ReadFile)
    ├─ SinkDeadLetters  Parsed -> dead letters        (DeadLetterTable, DeadLetterTopic for Kafka)
    ├─ Watermark        Parsed -> watermark | None    (Progress, Combine unless the batch is final)
    └─ ComputeFeatures  Parsed -> every table's parts (ByShard, AllShards, FlattenShards, GroupShards,
                                                       ShardFeatures with the watermark side input)

The driver (``job``) does everything around one run of this graph: scratch and the stale files of a
killed attempt before it, the online push and the checkpoint commit after it. The DoFns the composites
apply live in ``transforms``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import apache_beam as beam
from apache_beam.pvalue import AsSingleton, PBegin, PCollection

from pipelines.beam import state as st
from pipelines.beam.kafka_source import OffsetRange, ReadOffsetRange
from pipelines.beam.sinks import SourceRange
from pipelines.beam.transforms import (
    FileSlice,
    ParseRaw,
    ProduceDeadLetters,
    ReadFileSlice,
    ShardFeatures,
    WarehouseWriter,
    WriteDeadLetters,
    all_shard_keys,
    progress_of,
    shard_events,
)
from pipelines.beam.watermark import WatermarkFn
from pipelines.settings import Settings


@dataclass
class BatchPlan:
    """What one micro-batch reads: the pieces to read in parallel, the source ranges they cover (which
    name the batch's files), the partitions with records left beyond this batch (they hold the
    watermark back) and whether the batch is final (a finished log: everything pending is labelled)."""

    sources: list[OffsetRange | FileSlice]
    ranges: list[SourceRange]
    lagging: list[str]
    final: bool


class ReadEvents(beam.PTransform):
    """PBegin -> Parsed, one per planned piece: Kafka offset ranges (``bootstrap`` given) are read raw
    and then parsed; file slices are read and validated in one step (Parquet columns, vectorised).

    The plan enters through ``Create``, which reshuffles, so the pieces spread over the workers. Parsing
    counts every record of its partition (consumed = accepted + dead-lettered) as it goes."""

    def __init__(self, sources: Sequence[OffsetRange | FileSlice], bootstrap: str | None):
        super().__init__()
        self.sources = list(sources)
        self.bootstrap = bootstrap

    def expand(self, pbegin: PBegin) -> PCollection:
        pieces = pbegin | "Plan" >> beam.Create(self.sources)
        if self.bootstrap is None:
            return pieces | "ReadFile" >> beam.ParDo(ReadFileSlice())
        raw = pieces | "ReadKafka" >> beam.ParDo(ReadOffsetRange(self.bootstrap))
        return raw | "Parse" >> beam.ParDo(ParseRaw())


class SinkDeadLetters(beam.PTransform):
    """Parsed -> nothing downstream: each piece's malformed records as its own ``dead_letters`` part
    file (exactly once: the name carries the piece's range, so a rerun replaces it) and, for a Kafka
    source (``dead_letter_topic`` = (bootstrap, topic)), to the dead-letter topic (at least once).

    A side branch of the parsed pieces: the features never wait for it."""

    def __init__(self, writer: WarehouseWriter, dead_letter_topic: tuple[str, str] | None):
        super().__init__()
        self.writer = writer
        self.dead_letter_topic = dead_letter_topic

    def expand(self, parsed: PCollection) -> None:
        if self.dead_letter_topic is not None:
            _ = parsed | "DeadLetterTopic" >> beam.ParDo(ProduceDeadLetters(*self.dead_letter_topic))
        _ = parsed | "DeadLetterTable" >> beam.ParDo(WriteDeadLetters(self.writer))


class Watermark(beam.PTransform):
    """Parsed -> the batch's watermark (one element, for the shards' singleton side input), or None for
    a final batch, which needs none (everything is ready).

    Every batch, final or not, records each partition's largest event time as a metric: the driver
    merges those into the checkpoint's progress, from which the next batch's watermark starts. The
    watermark itself combines this batch's progress with the previous checkpoint's, and only partitions
    with records left (``lagging``) hold it back."""

    def __init__(self, previous: st.Checkpoint, lagging: Sequence[str], final: bool):
        super().__init__()
        self.fn = (
            None if final else WatermarkFn(previous.max_event_times, list(lagging), previous.watermark_ms)
        )

    def expand(self, parsed: PCollection) -> PCollection | None:
        progress = parsed | "Progress" >> beam.Map(progress_of)
        if self.fn is None:
            return None
        return progress | "Combine" >> beam.CombineGlobally(self.fn)


class ComputeFeatures(beam.PTransform):
    """Parsed -> one name per shard done ("user-3", "item-0"): each shard has written its part of every
    table (labelled samples, statistics, sequences, item attributes, duplicate dead letters) and its
    next state, through ``features`` (a ShardFeatures: attribution, statistics, sequences).

    Pieces split their events by user shard and by item shard and stage them as Arrow files under
    ``staging``: the one shuffle carries file paths, not rows. User and item shards share that shuffle
    and one stage, so they run side by side. Every shard of both kinds is fed an empty element too
    (``AllShards``), so a shard with no new events still advances its pending state with the watermark.
    """

    def __init__(self, features: ShardFeatures, staging: str, watermark: AsSingleton | None):
        super().__init__()
        self.features = features
        self.staging = staging
        self.watermark = watermark

    def expand(self, parsed: PCollection) -> PCollection:
        shards = self.features.num_shards
        return (
            (
                parsed | "ByShard" >> beam.FlatMap(shard_events, shards, self.staging),
                parsed.pipeline | "AllShards" >> beam.Create(all_shard_keys(shards)),
            )
            | "FlattenShards" >> beam.Flatten()
            | "GroupShards" >> beam.GroupByKey()
            | "ShardFeatures" >> beam.ParDo(self.features, watermark_ms=self.watermark)
        )


class FeatureJob(beam.PTransform):
    """PBegin -> one name per shard done: a micro-batch's whole graph, ReadEvents -> SinkDeadLetters
    (aside) -> Watermark -> ComputeFeatures.

    ``checkpoint`` is the one the batch starts from (progress and watermark so far); ``state_in`` and
    ``state_out`` are the state directories to read and to write (``state_out`` None: a one-shot build
    keeps no state); ``writer`` names and writes every part file of the batch; ``staging`` holds the
    shards' hand-off files; ``bootstrap`` is None for a file source."""

    def __init__(
        self,
        settings: Settings,
        plan: BatchPlan,
        checkpoint: st.Checkpoint,
        *,
        writer: WarehouseWriter,
        staging: str,
        state_in: str | None,
        state_out: str | None,
        num_shards: int,
        bootstrap: str | None,
    ):
        super().__init__()
        self.plan = plan
        self.checkpoint = checkpoint
        self.writer = writer
        self.staging = staging
        self.bootstrap = bootstrap
        self.dead_letter_topic = (bootstrap, settings.topic("deadletter")) if bootstrap is not None else None
        self.features = ShardFeatures(
            state_in,
            state_out,
            num_shards,
            settings.attribution_window_s * 1000,
            settings.sequence_length,
            writer,
            settings.dedup_window_s * 1000,
            settings.horizons,
            self.dead_letter_topic,
        )

    def expand(self, pbegin: PBegin) -> PCollection:
        parsed = pbegin | "ReadEvents" >> ReadEvents(self.plan.sources, self.bootstrap)
        _ = parsed | "SinkDeadLetters" >> SinkDeadLetters(self.writer, self.dead_letter_topic)
        watermark = parsed | "Watermark" >> Watermark(self.checkpoint, self.plan.lagging, self.plan.final)
        side = AsSingleton(watermark) if watermark is not None else None
        return parsed | "ComputeFeatures" >> ComputeFeatures(self.features, self.staging, side)
