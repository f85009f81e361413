"""Ad-hoc SQL over the offline warehouse, read only: the use case behind `ctrflow features query`.

Only plain queries run: one statement that DuckDB classifies as a SELECT (``SELECT``, ``WITH``, ``FROM``,
``VALUES``, ``DESCRIBE``, ``SHOW``, ``SUMMARIZE``). COPY, ATTACH, INSTALL, LOAD, PRAGMA, SET, EXPORT,
CALL, EXPLAIN and everything else are refused before anything runs: the connection is opened read-only,
but a read-only connection still writes files (``COPY ... TO``) and loads extensions. As a second fence
the connection may read files only under the warehouse and datasets directories, and its configuration
is locked.
"""

from __future__ import annotations

import duckdb
import pyarrow as pa

from pipelines.settings import Settings


class QueryError(ValueError):
    """A query that is refused or fails; ``str(exc)`` is one line saying why."""


def check_query(sql: str) -> None:
    """Raise QueryError unless ``sql`` is exactly one plain SELECT/WITH statement."""
    try:
        statements = duckdb.extract_statements(sql)
    except duckdb.Error as exc:
        raise QueryError(_first_line(exc)) from None
    if len(statements) != 1:
        raise QueryError(f"give exactly one SELECT statement, got {len(statements)} statements")
    kind = statements[0].type
    if kind != duckdb.StatementType.SELECT:
        raise QueryError(f"only SELECT/WITH queries are allowed, not {kind.name} statements")


def run_query(settings: Settings, sql: str) -> pa.Table:
    """The result of one read-only query over the warehouse views (see the module doc for what runs)."""
    check_query(sql)
    if not settings.warehouse_db.exists():
        raise QueryError(f"no warehouse at {settings.warehouse_db}: run `ctrflow features build` first")
    # Trailing separators: an allowed prefix is the directory, not every path that starts like it.
    allowed = [f"{settings.warehouse_dir}/", f"{settings.datasets_dir}/"]
    try:
        with duckdb.connect(str(settings.warehouse_db), read_only=True) as con:
            con.execute("SET allowed_directories = $dirs", {"dirs": allowed})
            con.execute("SET enable_external_access = false")
            con.execute("SET lock_configuration = true")
            return con.sql(sql).to_arrow_table()
    except duckdb.Error as exc:
        raise QueryError(_first_line(exc)) from None


def _first_line(exc: Exception) -> str:
    return str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
