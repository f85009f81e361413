"""The feature job's graph: named composite stages, and the steps each source and batch kind gets.

Built, not run: the structure is what these tests check (the suite's job runs check the results).
"""

from __future__ import annotations

from pathlib import Path

import apache_beam as beam
from apache_beam.portability.api import beam_runner_api_pb2

from pipelines.beam import state as st
from pipelines.beam.graph import BatchPlan, FeatureJob
from pipelines.beam.kafka_source import OffsetRange
from pipelines.beam.options import pipeline_options, runner_for
from pipelines.beam.sinks import SourceRange
from pipelines.beam.transforms import FileSlice, WarehouseWriter
from pipelines.settings import Settings

STAGES = ["ReadEvents", "SinkDeadLetters", "Watermark", "ComputeFeatures"]
SHARD_STEPS = ["ByShard", "AllShards", "FlattenShards", "GroupShards", "ShardFeatures"]


def _graph(tmp_path: Path, plan: BatchPlan, bootstrap: str | None) -> beam_runner_api_pb2.Pipeline:
    options = pipeline_options()
    p = beam.Pipeline(runner=runner_for(options), options=options)
    writer = WarehouseWriter(str(tmp_path / "warehouse"), plan.ranges, "batch", 0, Settings().horizons)
    _ = p | "FeatureJob" >> FeatureJob(
        Settings(),
        plan,
        st.Checkpoint(),
        writer=writer,
        staging=str(tmp_path / "staging"),
        state_in=None,
        state_out=None,
        num_shards=2,
        bootstrap=bootstrap,  # constructing the graph connects to nothing
    )
    return p.to_runner_api()


def _children(proto: beam_runner_api_pb2.Pipeline, name: str) -> list[str]:
    """The labels of the steps directly inside the composite called ``name``, in application order."""
    transforms = proto.components.transforms
    (composite,) = [t for t in transforms.values() if t.unique_name == name]
    return [transforms[i].unique_name.removeprefix(name + "/") for i in composite.subtransforms]


def _step(proto: beam_runner_api_pb2.Pipeline, name: str) -> beam_runner_api_pb2.PTransform:
    (step,) = [t for t in proto.components.transforms.values() if t.unique_name == name]
    return step


def _producer(proto: beam_runner_api_pb2.Pipeline, pcollection: str) -> str:
    """The innermost step that outputs ``pcollection`` (composites output it too)."""
    leaves = [t for t in proto.components.transforms.values() if not t.subtransforms]
    (step,) = [t for t in leaves if pcollection in t.outputs.values()]
    return step.unique_name


def test_a_kafka_micro_batch_reads_parses_and_shards_under_the_watermark(tmp_path: Path) -> None:
    ranges = [SourceRange("t.impressions", 0, 0, 10)]
    plan = BatchPlan([OffsetRange("t.impressions", 0, 0, 10)], ranges, ["t.impressions/0"], final=False)
    proto = _graph(tmp_path, plan, bootstrap="localhost:1")

    assert _children(proto, "FeatureJob") == STAGES
    assert _children(proto, "FeatureJob/ReadEvents") == ["Plan", "ReadKafka", "Parse"]
    assert _children(proto, "FeatureJob/SinkDeadLetters") == ["DeadLetterTopic", "DeadLetterTable"]
    assert _children(proto, "FeatureJob/Watermark") == ["Progress", "Combine"]
    assert _children(proto, "FeatureJob/ComputeFeatures") == SHARD_STEPS
    # The shards get the batch's watermark as their one side input.
    shard_step = _step(proto, "FeatureJob/ComputeFeatures/ShardFeatures")
    side = [pc for tag, pc in shard_step.inputs.items() if tag.startswith("python_side_input")]
    assert len(side) == 1
    assert _producer(proto, side[0]).startswith("FeatureJob/Watermark/Combine/")


def test_a_final_file_batch_has_no_watermark_and_no_dead_letter_topic(tmp_path: Path) -> None:
    log = str(tmp_path / "log.parquet")
    plan = BatchPlan([FileSlice(log, 0, 10)], [SourceRange(log, -1, 0, 10)], [], final=True)
    proto = _graph(tmp_path, plan, bootstrap=None)

    assert _children(proto, "FeatureJob") == STAGES
    assert _children(proto, "FeatureJob/ReadEvents") == ["Plan", "ReadFile"]
    assert _children(proto, "FeatureJob/SinkDeadLetters") == ["DeadLetterTable"]
    # Progress still feeds the checkpoint's metrics; a finished log labels everything (no watermark).
    assert _children(proto, "FeatureJob/Watermark") == ["Progress"]
    assert _children(proto, "FeatureJob/ComputeFeatures") == SHARD_STEPS
    shard_step = _step(proto, "FeatureJob/ComputeFeatures/ShardFeatures")
    assert [tag for tag in shard_step.inputs if tag.startswith("python_side_input")] == []
