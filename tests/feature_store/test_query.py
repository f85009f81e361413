"""`features query` runs one plain SELECT/WITH over the warehouse views and refuses everything else."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from typer.testing import CliRunner

from features.query import QueryError, run_query
from orchestration.cli import app
from pipelines.beam.sinks import ALL_TABLES, refresh_views
from pipelines.settings import Settings
from tests.feature_store.synthetic_warehouse import write_synthetic_warehouse

runner = CliRunner()


@pytest.fixture
def warehouse(settings: Settings) -> Settings:
    write_synthetic_warehouse(settings, n_samples=50)
    refresh_views(settings.warehouse_dir, settings.warehouse_db)
    return settings


REFUSED = {
    "COPY (SELECT 1) TO 'out.csv'": "COPY",
    "ATTACH 'other.duckdb' AS other": "ATTACH",
    "INSTALL httpfs": "LOAD",
    "LOAD httpfs": "LOAD",
    "PRAGMA version": "PRAGMA",
    "SET threads = 1": "SET",
    "EXPORT DATABASE 'dump'": "EXPORT",
    "CALL pragma_version()": "CALL",
    "EXPLAIN SELECT 1": "EXPLAIN",
    "CREATE TABLE t AS SELECT 1": "CREATE",
    "DROP VIEW user_stats": "DROP",
}


@pytest.mark.parametrize("sql", list(REFUSED))
def test_anything_but_a_select_is_refused_and_writes_nothing(
    warehouse: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, sql: str
) -> None:
    monkeypatch.chdir(tmp_path)
    before = set(os.listdir(tmp_path))
    with pytest.raises(QueryError, match=f"only SELECT/WITH queries are allowed, not {REFUSED[sql]} "):
        run_query(warehouse, sql)
    result = runner.invoke(app, ["--home", str(warehouse.home), "features", "query", sql])
    assert result.exit_code == 2
    (line,) = result.output.strip().splitlines()
    assert line.startswith("error: only SELECT/WITH queries are allowed")
    assert set(os.listdir(tmp_path)) == before  # no out.csv, no dump, no other.duckdb
    assert run_query(warehouse, "SELECT count(*) AS n FROM user_stats").to_pylist() == [{"n": 50}]


def test_several_statements_are_refused(warehouse: Settings) -> None:
    with pytest.raises(QueryError, match="exactly one SELECT statement, got 2"):
        run_query(warehouse, "SELECT 1; COPY (SELECT 1) TO 'x.csv'")


def test_a_select_cannot_read_files_outside_the_warehouse(warehouse: Settings, tmp_path: Path) -> None:
    secret = tmp_path / "secret.csv"
    secret.write_text("a\n1\n")
    with pytest.raises(QueryError, match="disabled by configuration"):
        run_query(warehouse, f"SELECT * FROM read_csv('{secret}')")


def test_selects_over_every_view_still_work(warehouse: Settings) -> None:
    empty = {"unattributed_clicks", "dead_letters", "served"}  # no files in the synthetic warehouse
    for name in ALL_TABLES:
        table = run_query(warehouse, f'WITH t AS (SELECT * FROM "{name}") SELECT count(*) AS n FROM t')
        assert table.column("n").to_pylist() == [0 if name in empty else 50], name
    result = runner.invoke(app, ["--home", str(warehouse.home), "features", "query", "--json",
                                 "SELECT user_id FROM user_stats ORDER BY user_id LIMIT 2"])
    assert result.exit_code == 0, result.output
    assert [r["user_id"] for r in json.loads(result.stdout)] == sorted(
        run_query(warehouse, "SELECT user_id FROM user_stats").column("user_id").to_pylist())[:2]
