"""The job's parts on their own: offset planning, both validation paths, range naming, watermark."""

from __future__ import annotations

import json

import pyarrow as pa
import pytest

from pipelines.beam.kafka_source import OffsetRange, plan_batch
from pipelines.beam.parse import NULLABLE_EVENT_SCHEMA, parse_columns, parse_json_batch, parse_records
from pipelines.beam.sinks import SourceRange, batch_file_name
from pipelines.beam.watermark import next_watermark
from pipelines.events import encode_event

T = 1_767_600_000_000
GOOD = {"type": "impression", "impression_id": "1", "request_id": "r", "user_id": "u", "item_id": "i",
        "position": 3, "event_time": T, "hour": 5}  # fmt: skip
BAD = [
    {**GOOD, "type": "view"},
    {**GOOD, "event_time": 1_700_000_000},  # seconds, not ms
    {**GOOD, "position": -1},
    {**GOOD, "user_id": ""},
    {**GOOD, "hour": 30},
    {**GOOD, "p_click": 1.5},
    {"type": "click", "impression_id": "1", "user_id": "u", "event_time": T},  # no item_id
]


def test_plan_splits_each_partition_from_checkpoint_to_highwater() -> None:
    pieces = plan_batch({("t", 0): 10}, {("t", 0): 35, ("t", 1): 4, ("t", 2): 0}, 20, 8)
    assert pieces == [OffsetRange("t", 0, 10, 18), OffsetRange("t", 0, 18, 26), OffsetRange("t", 0, 26, 30),
                      OffsetRange("t", 1, 0, 4)]  # fmt: skip
    with pytest.raises(ValueError, match="beyond its high-water mark"):
        plan_batch({("t", 0): 50}, {("t", 0): 35}, 20, 8)


def test_row_and_columnar_validation_agree() -> None:
    records = [GOOD, *BAD]
    rowwise = parse_records(
        "topic", 0, 0, len(records), list(range(len(records))), [encode_event(r) for r in records]
    )
    columnar = parse_columns("log.parquet", 0, pa.Table.from_pylist(records, schema=NULLABLE_EVENT_SCHEMA))
    for parsed in (rowwise, columnar):
        assert parsed.consumed == parsed.accepted + len(parsed.dead) == len(records)
        assert parsed.events["impression_id"].to_pylist() == ["1"]
    assert [d.offset for d in rowwise.dead] == list(range(1, len(records)))
    assert [d.offset for d in columnar.dead] == list(range(2, len(records) + 1))  # 1-based rows for files
    for row, col in zip(rowwise.dead, columnar.dead, strict=True):
        for word in ("type", "event_time", "position", "user_id", "hour", "p_click", "item_id"):
            assert (word in row.error) == (word in col.error), (row.error, col.error)


def test_file_names_carry_offset_ranges() -> None:
    ranges = [SourceRange("ctr.impressions", 1, 100, 200), SourceRange("ctr.clicks", 0, 7, 9)]
    assert batch_file_name(ranges, "x") == "clicks.0.7-9+impressions.1.100-200"
    assert SourceRange("a", 0, 0, 10).overlaps(SourceRange("a", 0, 9, 20))
    assert not SourceRange("a", 0, 0, 10).overlaps(SourceRange("a", 0, 10, 20))
    many = [SourceRange("ctr.impressions", p, 0, 10**9) for p in range(64)]
    assert len(batch_file_name(many, "x")) < 200


def test_watermark_is_the_slowest_lagging_partition_and_never_goes_back() -> None:
    progress = {"a|0": 100, "a|1": 50, "b|0": 10}
    assert next_watermark(progress, ["a|0", "a|1"], None) == 50  # b|0 is caught up: idle, ignored
    assert next_watermark(progress, [], None) == 100
    assert next_watermark(progress, ["b|0"], 60) == 60


ODD_BUT_JSON = [
    {**GOOD, "category": 5}, {**GOOD, "position": True}, {**GOOD, "position": 3.0},
    {**GOOD, "user_id": 7}, {**GOOD, "p_click": 1}, {**GOOD, "p_click": "0.5"},
    {**GOOD, "event_time": 1.7e12}, {**GOOD, "type": None}, {**GOOD, "extra": {"nested": [1]}},
    {**GOOD, "user_id": None},
]  # fmt: skip


@pytest.mark.parametrize("odd", ODD_BUT_JSON)
def test_vectorised_json_path_equals_row_wise(odd: dict) -> None:
    values = [encode_event(GOOD), json.dumps(odd).encode(), encode_event(BAD[1]), b"[1, 2]"]
    offsets = [10, 11, 12, 13]
    fast = parse_json_batch("topic", 0, 10, 14, offsets, values)
    slow = parse_records("topic", 0, 10, 14, offsets, values)
    assert fast.events.to_pylist() == slow.events.to_pylist()
    assert [(d.offset, d.error, d.raw) for d in fast.dead] == [(d.offset, d.error, d.raw) for d in slow.dead]
    # A type-correct batch takes the Arrow path; rejected rows still get decode_event's exact reason.
    typed = [encode_event(r) for r in (GOOD, BAD[1], BAD[4])]
    fast = parse_json_batch("topic", 0, 0, 3, [0, 1, 2], typed)
    assert fast.accepted == 1
    assert [d.error for d in fast.dead] == [
        d.error for d in parse_records("topic", 0, 0, 3, [0, 1, 2], typed).dead
    ]
    assert "event_time 1700000000 is outside" in fast.dead[0].error


def test_vectorised_json_path_refuses_invalid_utf8_inside_a_string() -> None:
    # Arrow's JSON reader does not check UTF-8 inside string values: the batch must go row-wise.
    values = [encode_event(GOOD), encode_event(GOOD)[:-1] + b',"device":"\xff"}', encode_event(GOOD)]
    fast = parse_json_batch("topic", 0, 0, 3, [0, 1, 2], values)
    slow = parse_records("topic", 0, 0, 3, [0, 1, 2], values)
    assert fast.accepted == slow.accepted == 2
    assert [(d.offset, d.error, d.raw) for d in fast.dead] == [(d.offset, d.error, d.raw) for d in slow.dead]
    assert "not UTF-8" in fast.dead[0].error and fast.dead[0].raw == values[1]


def test_runner_is_explicit_and_beam_options_pass_through() -> None:
    from apache_beam.options.pipeline_options import DirectOptions
    from apache_beam.runners.portability.fn_api_runner import FnApiRunner

    from pipelines.beam.options import pipeline_options, runner_for

    local = pipeline_options(num_workers=2)
    assert isinstance(runner_for(local), FnApiRunner)  # never the Prism-downloading default
    assert local.view_as(DirectOptions).direct_running_mode == "multi_threading"
    flink = pipeline_options(["--runner=FlinkRunner", "--flink_master=localhost:8081", "--parallelism=4"])
    assert runner_for(flink) == "FlinkRunner"
    assert flink.get_all_options()["flink_master"] == "localhost:8081"
    passed = pipeline_options(["--direct_num_workers=3", "--direct_running_mode=multi_threading"])
    assert passed.view_as(DirectOptions).direct_num_workers == 3
    assert passed.view_as(DirectOptions).direct_running_mode == "multi_threading"
    with pytest.raises(ValueError, match="direct_running_mode"):
        pipeline_options(running_mode="threads")


def test_removing_a_batch_reads_only_footers_whose_names_may_overlap(tmp_path, monkeypatch) -> None:
    from pipelines.beam import sinks

    letter = {"source": "p.impressions", "partition": 0, "offset": 1, "error": "x", "raw": b"{"}
    table = pa.Table.from_pylist([letter], schema=sinks.DEADLETTER_SCHEMA)
    written = {}
    for ranges in (
        [SourceRange("p.impressions", 0, 0, 100)],
        [SourceRange("p.impressions", 0, 100, 200), SourceRange("p.clicks", 0, 0, 10)],
        [SourceRange("q.impressions", 0, 150, 250)],  # another topic prefix: same tag, other source
        [SourceRange("p.impressions", 1, 150, 250)],
    ):
        name = sinks.part_file_name(sinks.batch_file_name(ranges, "x"), "s0000")
        (path,) = sinks.write_table(tmp_path, "dead_letters", table, ranges, name)
        written[path.stem] = path
    footers = []
    real = sinks._ranges_of
    monkeypatch.setattr(sinks, "_ranges_of", lambda path: footers.append(path.stem) or real(path))

    removed = sinks.remove_batch_files(tmp_path, [SourceRange("p.impressions", 0, 150, 300)], "new")
    assert len(removed) == 1
    left = {p.stem for p in tmp_path.rglob("*.parquet")}
    assert left == set(written) - {"clicks.0.0-10+impressions.0.100-200.s0000"}
    # Names rule out the first and last files; the same-tag file of another prefix needs its footer.
    assert sorted(footers) == ["clicks.0.0-10+impressions.0.100-200.s0000", "impressions.0.150-250.s0000"]
