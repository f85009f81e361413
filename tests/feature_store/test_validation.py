"""Great Expectations gates on real training sets and event logs: each kind of bad data is caught."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from features.datasets import build_dataset, load_dataset
from features.validation import (
    SCHEMA_CHECK,
    ValidationBounds,
    ValidationFailed,
    ValidationInputError,
    read_events,
    require_valid,
    validate_dataset,
    validate_events,
    validate_table,
)
from pipelines.events import EVENT_SCHEMA
from pipelines.settings import Settings

from .synthetic_warehouse import write_synthetic_warehouse


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> tuple[Settings, pa.Table]:
    settings = Settings(home=tmp_path_factory.mktemp("validation") / "home")
    write_synthetic_warehouse(settings, n_samples=120, n_users=8, n_items=10)
    build_dataset(settings)
    return settings, load_dataset(settings)[0]


def _replace(table: pa.Table, name: str, values: pa.Array | list) -> pa.Table:
    field = table.schema.field(name)
    values = pa.array(values, field.type) if isinstance(values, list) else values.cast(field.type)
    return table.set_column(table.schema.get_field_index(name), field, values)


def _all_zero_labels(t: pa.Table) -> pa.Table:
    return _replace(t, "label", [0] * t.num_rows)


def _null_user_id(t: pa.Table) -> pa.Table:
    return _replace(t, "user_id", [None] + t.column("user_id").to_pylist()[1:])


def _future_timestamps(t: pa.Table) -> pa.Table:
    return _replace(t, "event_time", pc.add(t.column("event_time"), pa.scalar(timedelta(days=3650))))


def _duplicate_impression_ids(t: pa.Table) -> pa.Table:
    return _replace(t, "impression_id", ["dup"] * 2 + t.column("impression_id").to_pylist()[2:])


def _empty_window(t: pa.Table) -> pa.Table:
    return t.slice(0, 0)


def _failed_types(report) -> dict[str, str]:
    return {f"{f.expectation}:{f.column}": f.message for f in report.failed}


def test_a_good_dataset_passes_and_keeps_results_and_data_docs(built) -> None:
    settings, _ = built
    report = require_valid(validate_dataset(settings, run="cycle-1"))
    assert report.success and report.evaluated >= 15 and not report.failed
    assert report.results_path == settings.runs_dir / "cycle-1" / "validation" / "dataset-results.json"
    assert json.loads(report.results_path.read_text())["success"] is True
    assert report.docs_path is not None and report.docs_path.read_text().startswith("<!DOCTYPE html>")


@pytest.mark.parametrize(
    ("corrupt", "expected_failure", "message_part"),
    [
        (_all_zero_labels, "expect_column_mean_to_be_between:label", "observed 0.0"),
        (_null_user_id, "expect_column_values_to_not_be_null:user_id", "1 of 120 rows unexpected"),
        (_future_timestamps, "expect_column_values_to_be_between:event_time", "120 of 120 rows unexpected"),
        (_duplicate_impression_ids, "expect_column_values_to_be_unique:impression_id", "2 of 120 rows"),
        (_empty_window, "expect_table_row_count_to_be_between:None", "observed 0"),
    ],
    ids=["all-zero-labels", "null-user-id", "future-timestamps", "duplicate-impression-ids", "empty-window"],
)
def test_bad_training_data_fails_with_a_clear_message(built, corrupt, expected_failure, message_part) -> None:
    settings, table = built
    report = validate_table(settings, "dataset", corrupt(table))
    failures = _failed_types(report)
    assert not report.success
    assert expected_failure in failures, failures
    assert message_part in failures[expected_failure]
    with pytest.raises(ValidationFailed) as raised:
        require_valid(report)
    assert raised.value.report is report and "FAILED" in str(raised.value)


def test_every_statistics_column_is_range_checked_whatever_its_horizon(built) -> None:
    """The suite checks statistics by column pattern, so horizons a home configured are checked too."""
    settings, table = built
    n = table.num_rows
    odd = table.append_column("item_stats__ctr_3d", pa.array([0.1] * (n - 1) + [1.5]))
    odd = odd.append_column("user_stats__clicks_90d", pa.array([-0.5] + [2.0] * (n - 1)))
    failures = _failed_types(validate_table(settings, "dataset", odd))
    assert set(failures) >= {"expect_column_values_to_be_between:item_stats__ctr_3d",
                             "expect_column_values_to_be_between:user_stats__clicks_90d"}, failures
    assert "1 of 120 rows unexpected" in failures["expect_column_values_to_be_between:item_stats__ctr_3d"]
    stats = [c for c in table.column_names if c.startswith(("user_stats__", "item_stats__"))]
    without = validate_table(settings, "dataset", table.drop_columns(stats)).evaluated
    assert len(stats) == 30 and validate_table(settings, "dataset", table).evaluated == without + len(stats)


def test_freshness_and_sequence_length_bounds(built) -> None:
    settings, table = built
    stale = validate_table(settings, "dataset", table, bounds=ValidationBounds(max_age_s=3600))
    assert "expect_column_max_to_be_between:event_time" in _failed_types(stale)
    short = validate_table(settings, "dataset", table, bounds=ValidationBounds(max_sequence_length=3))
    assert "expect_column_values_to_be_between:user_sequence__seq_length" in _failed_types(short)


def _write_events(path: Path, records: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def _impression(i: int, **extra) -> dict:
    t = int(datetime(2026, 3, 1, tzinfo=UTC).timestamp() * 1000) + i * 1000
    return {"type": "impression", "impression_id": f"imp{i}", "request_id": f"r{i}", "user_id": f"u{i % 3}",
            "item_id": f"i{i % 5}", "position": i % 4, "event_time": t, **extra}


def test_event_logs_pass_and_fail_on_real_problems(built, tmp_path: Path) -> None:
    settings, _ = built
    good = [_impression(i) for i in range(10)]
    good.append({"type": "click", "impression_id": "imp3", "user_id": "u0", "item_id": "i3",
                 "event_time": good[3]["event_time"] + 5000})
    assert validate_events(settings, _write_events(tmp_path / "good.jsonl", good)).success
    future_ms = int((datetime.now(UTC) + timedelta(days=2)).timestamp() * 1000)
    bad = [*good, _impression(1), _impression(11, event_time=future_ms), {**_impression(12), "user_id": None},
           {**_impression(13), "type": "view"}]
    failures = _failed_types(validate_events(settings, _write_events(tmp_path / "bad.jsonl", bad)))
    assert "2 of 15 rows unexpected" in failures["expect_compound_columns_to_be_unique:type,impression_id"]
    assert "expect_column_values_to_be_between:event_time" in failures
    assert "expect_column_values_to_not_be_null:user_id" in failures
    assert "expect_column_values_to_be_in_set:type" in failures
    empty = validate_events(settings, _write_events(tmp_path / "empty.jsonl", []))
    assert "expect_table_row_count_to_be_between:None" in _failed_types(empty)


def test_parquet_event_logs_are_validated_too(built, tmp_path: Path) -> None:
    settings, _ = built
    rows = [_impression(i) for i in range(5)] + [_impression(2)]
    rows.append({"type": "click", "impression_id": "imp3", "user_id": "u0", "item_id": "i3",
                 "event_time": rows[3]["event_time"] + 5000})
    records = [{k: r.get(k) for k in EVENT_SCHEMA.names} for r in rows]
    table = pa.Table.from_pylist(records, schema=EVENT_SCHEMA)
    pq.write_table(table, tmp_path / "log.parquet")
    report = validate_events(settings, tmp_path / "log.parquet")
    assert list(_failed_types(report)) == ["expect_compound_columns_to_be_unique:type,impression_id"]


def test_values_of_the_wrong_type_fail_the_suite_instead_of_crashing(built, tmp_path: Path) -> None:
    settings, _ = built
    records = [_impression(i) for i in range(6)]
    records[1]["event_time"] = "soon"
    records[2]["event_time"] = 1.5e12  # a float time: pyarrow would silently truncate it
    records[3]["hour"] = 300  # an int, but the columnar form stores hour as int8
    records[4]["user_id"] = 7
    records[5]["position"] = True
    report = validate_events(settings, _write_events(tmp_path / "typed.jsonl", records))
    assert not report.success and report.rows == 6
    failures = _failed_types(report)
    assert "2 values not int fitting int64, e.g. line 2: 'soon'" in failures[f"{SCHEMA_CHECK}:event_time"]
    assert "line 4: 300" in failures[f"{SCHEMA_CHECK}:hour"]
    assert "line 5: 7" in failures[f"{SCHEMA_CHECK}:user_id"]
    assert "line 6: True" in failures[f"{SCHEMA_CHECK}:position"]
    # The mistyped values are read as null, so the suite's own expectations see them as missing.
    assert "2 of 6 rows unexpected" in failures["expect_column_values_to_not_be_null:event_time"]
    assert "expect_column_values_to_not_be_null:user_id" in failures


def test_unreadable_event_logs_are_input_errors(tmp_path: Path) -> None:
    with pytest.raises(ValidationInputError, match="does not exist"):
        read_events(tmp_path / "missing.jsonl")
    (tmp_path / "log.csv").write_text("type,impression_id\n")
    with pytest.raises(ValidationInputError, match="cannot tell the log format"):
        read_events(tmp_path / "log.csv")
