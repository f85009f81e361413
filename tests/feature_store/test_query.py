"""`features query` runs one plain SELECT/WITH over the warehouse views and refuses everything else."""

from __future__ import annotations

import csv
import io
import json
import os
from pathlib import Path

import pytest
from typer.testing import CliRunner

from features.query import QueryError, rows_as_json, run_query, write_csv
from orchestration.cli import app
from pipelines.beam.sinks import ALL_TABLES, refresh_views
from pipelines.settings import Settings
from tests.feature_store.synthetic_warehouse import write_synthetic_warehouse

runner = CliRunner()


@pytest.fixture
def warehouse(settings: Settings) -> Settings:
    write_synthetic_warehouse(settings, n_samples=50)
    refresh_views(settings.warehouse_dir, settings.warehouse_db, settings.horizons)
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


# What DuckDB returns beyond JSON's types: a decimal sum (integral and not), a timestamp, a blob with a byte
# that is not UTF-8, a list and a struct (the shape of sequence features).
BEYOND_JSON = ("SELECT sum(x) AS whole, sum(x) / 4 AS part, TIMESTAMP '2026-01-05 10:00:00' AS t, "
               "'\\xFFok'::BLOB AS b, [1, 2] AS seq, {'a': 1, 'b': [2.5]} AS s "
               "FROM (VALUES (1.0::DECIMAL(9, 2)), (2.0::DECIMAL(9, 2))) v(x)")


def test_results_as_json_convert_what_json_has_no_type_for(warehouse: Settings) -> None:
    (row,) = json.loads(rows_as_json(run_query(warehouse, BEYOND_JSON)))
    assert row == {"whole": 3, "part": 0.75, "t": "2026-01-05T10:00:00", "b": "\\xffok", "seq": [1, 2],
                   "s": {"a": 1, "b": [2.5]}}


def test_results_as_csv_write_nested_columns_as_json_text_and_bytes_as_text(warehouse: Settings) -> None:
    out = io.BytesIO()
    write_csv(run_query(warehouse, BEYOND_JSON), out)
    header, row = list(csv.reader(io.StringIO(out.getvalue().decode())))
    assert header == ["whole", "part", "t", "b", "seq", "s"]
    assert (json.loads(row[4]), json.loads(row[5])) == ([1, 2], {"a": 1, "b": [2.5]})
    assert row[3] == "\\xffok"  # as in JSON: the Arrow writer refuses bytes that are not UTF-8
    assert row[0] == "3.00" and row[2].startswith("2026-01-05")  # flat columns as Arrow writes them
