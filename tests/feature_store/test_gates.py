"""The gates catch a log without clicks, a log of one user and a training set of one user (real GX runs),
and `validate events` counts every undecodable and blank line instead of stopping at the first."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pyarrow as pa
from typer.testing import CliRunner

from features.validation import ValidationReport, validate_events, validate_table
from orchestration.cli import app
from pipelines.settings import Settings

from .synthetic_warehouse import labelled_samples

runner = CliRunner()
T0 = int(datetime(2026, 3, 1, tzinfo=UTC).timestamp() * 1000)
CLICK_RATE = "expect_column_mean_to_be_between:is_click"
DISTINCT_USERS = "expect_column_unique_value_count_to_be_between:user_id"


def _log(path: Path, users: int = 4, clicks: int = 2, n: int = 12) -> Path:
    records = []
    for i in range(n):
        records.append({"type": "impression", "impression_id": f"imp{i}", "request_id": f"r{i}",
                        "user_id": f"u{i % users}", "item_id": f"i{i % 5}", "position": 0,
                        "event_time": T0 + i * 1000})
    for i in range(clicks):
        records.append({"type": "click", "impression_id": f"imp{i}", "user_id": f"u{i % users}",
                        "item_id": f"i{i % 5}", "event_time": T0 + i * 1000 + 500})
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def _failed(report: ValidationReport) -> set[str]:
    return {f"{f.expectation}:{f.column}" for f in report.failed}


def test_events_gate_bounds_the_click_rate_and_the_distinct_users(settings: Settings, tmp_path: Path) -> None:
    # (test_validation shows that good logs, with clicks and several users, pass these gates.)
    no_clicks = validate_events(settings, _log(tmp_path / "no_clicks.jsonl", clicks=0))
    assert _failed(no_clicks) == {CLICK_RATE}
    one_user = validate_events(settings, _log(tmp_path / "one_user.jsonl", users=1))
    assert _failed(one_user) == {DISTINCT_USERS}
    # The bounds are settings: 2 clicks / 12 impressions is too many for a ceiling of 0.1.
    strict = settings.model_copy(update={"max_click_rate": 0.1})
    assert _failed(validate_events(strict, _log(tmp_path / "good.jsonl"))) == {CLICK_RATE}


def test_dataset_gate_has_a_distinct_users_floor(settings: Settings) -> None:
    samples = labelled_samples(np.random.default_rng(3), 60, 6, 8, 2.0)
    one_user = samples.set_column(samples.schema.get_field_index("user_id"), "user_id",
                                  pa.array(["u1"] * samples.num_rows))
    assert _failed(validate_table(settings, "dataset", one_user)) == {DISTINCT_USERS}


def test_validate_events_counts_every_undecodable_and_blank_line(home: Path, tmp_path: Path) -> None:
    path = _log(tmp_path / "dirty.jsonl")
    lines = path.read_text().splitlines()
    lines[3:3] = ["not json", "", "   ", '["a list"]', "{truncated"]
    path.write_text("\n".join(lines) + "\n")
    result = runner.invoke(app, ["--home", str(home), "validate", "events", str(path)])
    assert result.exit_code == 1, result.output  # a failed gate, not an input error at line 4
    assert "14 rows, 2 blank lines skipped" in result.output
    assert "3 lines are not JSON objects, e.g. line 4" in result.output
