"""Helpers of the feature-job tests: reading warehouse tables the way users do."""

from __future__ import annotations

from pathlib import Path

import duckdb
import pyarrow as pa

# Each warehouse table's natural key: a canonical row order for run-vs-run comparisons.
TABLE_KEYS: dict[str, list[str]] = {
    "labelled_samples": ["impression_id"],
    "user_stats": ["user_id", "event_time"],
    "item_stats": ["item_id", "event_time"],
    "user_sequences": ["user_id", "event_time"],
    "unattributed_clicks": ["impression_id", "event_time", "reason"],
}


def read_table(home: Path, name: str) -> pa.Table:
    """A warehouse table as DuckDB sees it through the job's view (the same path users query)."""
    with duckdb.connect(str(home / "warehouse.duckdb"), read_only=True) as con:
        table = con.sql(f'SELECT * FROM "{name}"').to_arrow_table()
    return table.drop_columns(["date"]) if "date" in table.column_names else table


def comparable(table: pa.Table, keys: list[str]) -> list[dict]:
    """Rows without the write-time `created` column, in a canonical order (for run-vs-run equality)."""
    if "created" in table.column_names:
        table = table.drop_columns(["created"])
    return table.sort_by([(k, "ascending") for k in keys]).to_pylist()


# Every table's key: one row per key, whatever batches, restarts or resets came in between.
UNIQUE_KEYS: dict[str, list[str]] = {**TABLE_KEYS, "dead_letters": ["source", "partition", "offset"]}


def duplicate_keys(home: Path, name: str) -> list[tuple]:
    """Keys of ``name`` (UNIQUE_KEYS) that more than one row of the table holds."""
    keys = ", ".join(f'"{k}"' for k in UNIQUE_KEYS[name])
    with duckdb.connect(str(home / "warehouse.duckdb"), read_only=True) as con:
        if not con.execute("SELECT 1 FROM duckdb_views() WHERE view_name = ?", [name]).fetchall():
            return []  # the job never wrote a row of this table
        return con.execute(f'SELECT {keys} FROM "{name}" GROUP BY ALL HAVING count(*) > 1').fetchall()
