"""Ad-hoc SQL over the offline warehouse, read only: the use case behind `ctrflow features query`, and
its results as JSON or CSV (``rows_as_json``, ``write_csv``).

Only plain queries run: one statement that DuckDB classifies as a SELECT (``SELECT``, ``WITH``, ``FROM``,
``VALUES``, ``DESCRIBE``, ``SHOW``, ``SUMMARIZE``). COPY, ATTACH, INSTALL, LOAD, PRAGMA, SET, EXPORT,
CALL, EXPLAIN and everything else are refused before anything runs: the connection is opened read-only,
but a read-only connection still writes files (``COPY ... TO``) and loads extensions. As a second fence
the connection may read files only under the warehouse and datasets directories, and its configuration
is locked.
"""

from __future__ import annotations

import json
from decimal import Decimal
from typing import BinaryIO

import duckdb
import pyarrow as pa
import pyarrow.csv as pacsv

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


def rows_as_json(table: pa.Table) -> str:
    """A query result as a JSON array of row objects; values beyond JSON's types are converted
    (see ``_json_value``)."""
    return json.dumps(table.to_pylist(), default=_json_value)


def write_csv(table: pa.Table, stream: BinaryIO) -> None:
    """A query result as CSV with a header, to a binary stream. The Arrow CSV writer has no nested
    types and refuses bytes that are not UTF-8: lists and structs (sequence features) are written as JSON
    text, binary columns (a dead letter's raw record) as text the way ``rows_as_json`` writes them."""
    for i, f in enumerate(table.schema):
        if pa.types.is_nested(f.type):
            text = [None if v is None else json.dumps(v, default=_json_value)
                    for v in table.column(i).to_pylist()]
        elif pa.types.is_binary(f.type) or pa.types.is_large_binary(f.type):
            text = [None if v is None else _json_value(v) for v in table.column(i).to_pylist()]
        else:
            continue
        table = table.set_column(i, pa.field(f.name, pa.string()), pa.array(text, pa.string()))
    pacsv.write_csv(table, stream)


def _json_value(value: object) -> object:
    """JSON for what DuckDB returns beyond JSON types: sums are decimals (integral ones become ints),
    times are datetimes (ISO 8601), blobs are bytes (UTF-8, undecodable bytes escaped); anything else
    becomes its ``str``."""
    if isinstance(value, Decimal):
        return int(value) if value == value.to_integral_value() else float(value)
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="backslashreplace")
    if hasattr(value, "isoformat"):
        return value.isoformat()
    return str(value)


def _first_line(exc: Exception) -> str:
    return str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
