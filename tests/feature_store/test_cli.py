"""The store commands end to end through the real Typer app: dataset build, online lookup, validate."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

import orchestration.cli.store_cmd  # noqa: F401  (registers the commands under test)
from features.online import push_latest
from orchestration.cli.app import app
from pipelines.settings import Settings

from .synthetic_warehouse import write_synthetic_warehouse


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("cli") / "home"
    tables = write_synthetic_warehouse(Settings(home=path), n_samples=80, n_users=6, n_items=8)
    push_latest(Settings(home=path), "item_stats", tables["item_stats"])
    return path


def _run(home: Path, *args: str):
    return CliRunner().invoke(app, ["--home", str(home), *args])


def test_dataset_build_json_then_validate_passes(home: Path) -> None:
    built = _run(home, "dataset", "build", "--start", "2026-03-02", "--json")
    assert built.exit_code == 0, built.output
    manifest = json.loads(built.stdout)
    assert manifest["window"] == {"start": "2026-03-02T00:00:00+00:00", "end": None}
    assert manifest["rows"] > 0 and manifest["feature_service"] == "sequence_ctr"
    shown = _run(home, "dataset", "show")
    assert json.loads(shown.stdout)["name"] == manifest["name"]
    validated = _run(home, "validate", "dataset", "--run", "cli-ok")
    assert validated.exit_code == 0, validated.output
    assert (home / "runs" / "cli-ok" / "validation" / "dataset-results.json").exists()


def test_validate_exits_non_zero_with_the_failed_expectation(home: Path) -> None:
    assert _run(home, "dataset", "build").exit_code == 0
    # A label-rate floor above the data's rate must fail the gate.
    failed = _run(home, "validate", "dataset", "--min-label-rate", "0.9", "--max-label-rate", "1")
    assert failed.exit_code == 1
    assert "expect_column_mean_to_be_between" in failed.output and "FAILED" in failed.output


def test_bad_inputs_are_clear_errors(home: Path, tmp_path: Path) -> None:
    empty = _run(home, "dataset", "build", "--start", "2020-01-01", "--end", "2020-01-02")
    assert empty.exit_code == 2 and "no labelled samples in window" in empty.output
    bad_time = _run(home, "dataset", "build", "--start", "yesterday")
    assert bad_time.exit_code == 2 and "ISO-8601" in bad_time.output
    missing = _run(home, "validate", "events", str(tmp_path / "none.jsonl"))
    assert missing.exit_code == 2 and "does not exist" in missing.output
    # A value of the wrong type is a failed check, not a traceback.
    mistyped = tmp_path / "mistyped.jsonl"
    mistyped.write_text(json.dumps({"type": "click", "impression_id": "i1", "user_id": "u1", "item_id": "i1",
                                    "event_time": "soon"}) + "\n")
    typed = _run(home, "validate", "events", str(mistyped))
    assert typed.exit_code == 1 and not isinstance(typed.exception, Exception), typed.output
    assert "event_time: column_values_match_event_schema" in typed.output and "'soon'" in typed.output


def test_features_online_prints_what_serving_sees(home: Path) -> None:
    result = _run(home, "features", "online", "--user", "u1", "--items", "i1,i-unknown", "--json")
    assert result.exit_code == 0, result.output
    rows = [json.loads(line) for line in result.stdout.splitlines()]
    assert [r["item_id"] for r in rows] == ["i1", "i-unknown"]
    assert rows[1]["item_stats__impressions_7d"] == 0 and "user_sequence__seq_item_ids" in rows[0]
