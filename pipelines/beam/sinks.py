"""Warehouse sinks: date-partitioned Parquet named by source offset range, and DuckDB views over them.

``<warehouse>/<table>/date=YYYY-MM-DD/<range name>.<part>.parquet``: the name (and the file's metadata)
carry the source offset ranges of the micro-batch that produced it; the part says which shard wrote it
(``s0001``) or which range's dead letters it holds. Before a batch writes, every existing file whose
ranges overlap the batch's is removed, so a rerun of a range replaces its output instead of duplicating
it. Files are written to a temp name and renamed into place.
"""

from __future__ import annotations

import glob
import hashlib
import json
import os
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from pipelines.beam.attribution import ASIDE_SCHEMA
from pipelines.events import DEADLETTER_SCHEMA
from pipelines.tables import FEATURE_TABLES, SERVED, STAT_TABLES, TS, StatHorizons, table_schemas

MS_PER_DAY = 86_400_000
# The way out of a warehouse (or checkpoint) this release cannot continue: rebuild it from the log.
RESET_HINT = "rebuild with `ctrflow features build --from-kafka --reset`"
RANGES_METADATA_KEY = b"ctrflow.source_ranges"
MAX_READABLE_NAME = 180

# Tables beyond the Feast contracts: clicks kept aside by attribution, dead letters, and the serving
# stub's prediction log (written by pipelines.served, listed here so every batch refreshes its view).
UNATTRIBUTED_CLICKS = pa.schema(
    [f if f.name != "event_time" else pa.field("event_time", TS) for f in ASIDE_SCHEMA]
    + [pa.field("created", TS)]
)
EXTRA_TABLES: dict[str, pa.Schema] = {
    "unattributed_clicks": UNATTRIBUTED_CLICKS,
    "dead_letters": DEADLETTER_SCHEMA,
    "served": SERVED,
}
ALL_TABLES: tuple[str, ...] = (*FEATURE_TABLES, *EXTRA_TABLES)


def warehouse_schemas(horizons: StatHorizons) -> dict[str, pa.Schema]:
    """Every warehouse table's schema (the statistics tables' follow the home's horizons)."""
    return {**table_schemas(horizons), **EXTRA_TABLES}


class HorizonsMismatch(ValueError):
    """The warehouse's statistics tables hold other horizons' columns than the settings ask for."""


def check_warehouse_horizons(warehouse: Path, horizons: StatHorizons) -> None:
    """Refuse to write statistics of one set of horizons into tables written with another (they would mix
    two schemas), or to read them as if they held another's columns. One footer per statistics table is
    read: every file of a table has the same horizons, or this check stopped the run that mixed them."""
    schemas = warehouse_schemas(horizons)
    for table in STAT_TABLES:
        first = next(iter(sorted((warehouse / table).rglob("*.parquet"))), None)
        if first is None:
            continue
        try:
            names = pq.read_schema(first).names
        except (OSError, pa.ArrowException):
            continue  # a damaged file is verify's and the reader's to report
        if names != schemas[table].names:
            found = [n.removeprefix("ctr_") for n in names if n.startswith("ctr_")]
            raise HorizonsMismatch(
                f"{warehouse / table} holds statistics over {','.join(found)}, the settings ask for "
                f"{','.join(horizons.suffixes)}: set CTRFLOW_STAT_WINDOWS / CTRFLOW_STAT_DECAYED_WINDOWS to "
                f"the warehouse's, or {RESET_HINT} (or build into an empty warehouse)"
            )


# Row order inside a file (and the tie-break behind `created`): time, then the entity.
SORT_KEYS: dict[str, list[str]] = {
    "labelled_samples": ["event_time", "impression_id"],
    "user_stats": ["event_time", "user_id"],
    "item_stats": ["event_time", "item_id"],
    "user_sequences": ["event_time", "user_id"],
    "item_attributes": ["event_time", "item_id"],
    "served": ["event_time", "request_id", "rank_in_request"],
    "unattributed_clicks": ["event_time", "impression_id", "reason"],
    "dead_letters": ["source", "partition", "offset"],
}


@dataclass(frozen=True, order=True)
class SourceRange:
    """Records ``[start, end)`` of one source partition (a Kafka topic partition, or a file: -1)."""

    source: str
    partition: int
    start: int
    end: int

    def overlaps(self, other: SourceRange) -> bool:
        return (
            self.source == other.source
            and self.partition == other.partition
            and self.start < other.end
            and other.start < self.end
        )


def _source_tag(r: SourceRange) -> str:
    # Topic "<prefix>.impressions" partition 3 -> "impressions.3"; a file -> "<stem>.rows".
    if r.partition < 0:
        return f"{Path(r.source).stem}.rows"
    return f"{r.source.rsplit('.', 1)[-1]}.{r.partition}"


def range_tag(r: SourceRange) -> str:
    """``impressions.0.0-500``: which records of which source partition."""
    return f"{_source_tag(r)}.{r.start}-{r.end}"


def batch_file_name(ranges: Sequence[SourceRange], fallback: str) -> str:
    """A file stem that says which offsets produced the file, e.g. ``impressions.0.0-500+clicks.0.0-40``."""
    parts = [range_tag(r) for r in sorted(ranges)]
    name = "+".join(parts) or fallback
    if len(name) > MAX_READABLE_NAME:
        digest = hashlib.sha1(name.encode()).hexdigest()[:16]
        name = f"{parts[0]}+{len(parts) - 1}more-{digest}"
    return name


def _ranges_of(path: Path) -> list[SourceRange]:
    meta = pq.read_schema(path).metadata or {}
    raw = meta.get(RANGES_METADATA_KEY)
    return [SourceRange(*r) for r in json.loads(raw)] if raw else []


def part_file_name(file_name: str, part: str) -> str:
    """One part of a batch's output (a shard's rows, a range's dead letters): ``<batch>.<part>``."""
    return f"{file_name}.{part}"


def _may_overlap(stem: str, ranges: Sequence[SourceRange]) -> bool:
    """False when the file name alone shows no overlap with ``ranges`` (its footer need not be read).

    A readable name is its ranges' tags joined by "+" (``batch_file_name``), so every range of a source
    shows up as ``<tag>.<start>-<end>`` at the start of the name or after a "+". Tags drop topic
    prefixes and long names are hashed, so True only means "read the footer to know".
    """
    if "more-" in stem:  # a hashed name lists only its first range
        return True
    for r in ranges:
        pattern = rf"(?:^|\+){re.escape(_source_tag(r))}\.(\d+)-(\d+)"
        if any(r.start < int(end) and int(start) < r.end for start, end in re.findall(pattern, stem)):
            return True
    return False


def remove_batch_files(warehouse: Path, ranges: Sequence[SourceRange], file_name: str) -> list[Path]:
    """Delete every table's files produced from any of ``ranges`` (or by a batch of the same name),
    before a batch writes: a rerun of a range replaces its output instead of duplicating it.

    Only files whose names may overlap have their footers read: a streaming warehouse holds many
    thousands of files, and this runs before every micro-batch.
    """
    removed = []
    for table in ALL_TABLES:
        table_dir = warehouse / table
        if not table_dir.is_dir():
            continue
        for path in table_dir.rglob("*.parquet"):
            stem = path.stem
            same_batch = stem == file_name or stem.startswith(f"{file_name}.")
            if same_batch or (
                _may_overlap(stem, ranges) and any(a.overlaps(b) for a in _ranges_of(path) for b in ranges)
            ):
                path.unlink()
                removed.append(path)
    return removed


def batch_parts(warehouse: Path, file_name: str) -> list[str]:
    """Warehouse-relative paths of every part file a batch named ``file_name`` wrote (its manifest)."""
    pattern = f"{part_file_name(glob.escape(file_name), '*')}.parquet"
    tables = [warehouse / t for t in ALL_TABLES if (warehouse / t).is_dir()]
    return sorted(str(p.relative_to(warehouse)) for table in tables for p in table.rglob(pattern))


def remove_parts(warehouse: Path, parts: Iterable[str]) -> int:
    """Delete the given warehouse-relative part files (those already gone are skipped)."""
    removed = 0
    for rel in parts:
        path = warehouse / rel
        if path.is_file():
            path.unlink()
            removed += 1
    return removed


def sources_of(path: Path) -> set[str]:
    """The sources (topics, log files) whose records produced a part file, from its footer."""
    return {r.source for r in _ranges_of(path)}


def to_table_schema(
    name: str, schema: pa.Schema, rows: pa.Table, created_base_ms: int, created_stride: int = 1
) -> pa.Table:
    """Sort rows, convert ms columns to timestamps and add a strictly increasing ``created``:
    ``created_base_ms + i * created_stride`` for the i-th row (a stride lets parallel writers of one
    batch interleave their values without ever repeating one)."""
    rows = rows.sort_by([(k, "ascending") for k in SORT_KEYS[name]])
    columns = []
    for fld in schema:
        if fld.name == "created":
            created = created_base_ms + np.arange(rows.num_rows, dtype=np.int64) * created_stride
            columns.append(pa.array(created).cast(TS))
        elif fld.type == TS:
            columns.append(rows[fld.name].cast(pa.int64()).cast(TS))
        else:
            columns.append(rows[fld.name].cast(fld.type))
    return pa.Table.from_arrays(columns, schema=schema)


def _write_atomic(table: pa.Table, path: Path, ranges: Sequence[SourceRange]) -> None:
    meta = dict(table.schema.metadata or {})
    meta[RANGES_METADATA_KEY] = json.dumps([list(r.__dict__.values()) for r in sorted(ranges)]).encode()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    # Measured on the 1M-event backfill: snappy writes about twice as fast as zstd for ~1.6x the bytes;
    # dictionary pages cost ~25% of the write time (ids, times and features are high-cardinality);
    # delta-encoded integers make files 15-30% smaller at no cost; statistics only where queries
    # filter (time), as string statistics cost ~20% of the write.
    pq.write_table(
        table.replace_schema_metadata(meta),
        tmp,
        compression="snappy",
        use_dictionary=False,
        column_encoding=_delta_columns(table.schema),
        write_statistics=[n for n in ("event_time", "created") if n in table.column_names],
    )
    os.replace(tmp, path)


def _delta_columns(schema: pa.Schema) -> dict[str, str]:
    is_int = [pa.types.is_integer(f.type) or pa.types.is_timestamp(f.type) for f in schema]
    return {f.name: "DELTA_BINARY_PACKED" for f, flag in zip(schema, is_int, strict=True) if flag}


def write_table(
    warehouse: Path, name: str, table: pa.Table, ranges: Sequence[SourceRange], file_name: str
) -> list[Path]:
    """Write ``table`` as ``file_name`` files of table ``name`` (date-partitioned unless dead letters);
    ``remove_batch_files`` has cleared the range's earlier output."""
    table_dir = warehouse / name
    if table.num_rows == 0:
        return []
    if "event_time" not in table.column_names:
        path = table_dir / f"{file_name}.parquet"
        _write_atomic(table, path, ranges)
        return [path]
    # Day number from integer ms (strftime over every row costs more than the Parquet write). Rows are
    # sorted by event_time (to_table_schema), so each day is one contiguous, zero-copy slice.
    day = pc.divide(table["event_time"].cast(pa.int64()), MS_PER_DAY).to_numpy()
    if np.any(day[1:] < day[:-1]):
        order = np.argsort(day, kind="stable")
        table, day = table.take(pa.array(order)), day[order]
    starts = np.flatnonzero(np.r_[True, day[1:] != day[:-1]])
    ends = np.r_[starts[1:], len(day)]
    written = []
    for a, b in zip(starts, ends, strict=True):
        name_of_day = datetime.fromtimestamp(int(day[a]) * 86_400, UTC).strftime("%Y-%m-%d")
        path = table_dir / f"date={name_of_day}" / f"{file_name}.parquet"
        _write_atomic(table.slice(a, b - a), path, ranges)
        written.append(path)
    return written


def read_batch_files(warehouse: Path, name: str, schema: pa.Schema, file_name: str) -> pa.Table:
    """Everything one batch wrote to table ``name`` (of ``schema``), all parts (for the online push)."""
    files = sorted((warehouse / name).rglob(f"{part_file_name(glob.escape(file_name), '*')}.parquet"))
    if not files:
        return schema.empty_table()
    return pa.concat_tables([pq.read_table(f, schema=schema) for f in files])


def refresh_views(
    warehouse: Path, database: Path, horizons: StatHorizons, tables: Iterable[str] = ALL_TABLES
) -> list[str]:
    """One DuckDB view per table over its Parquet directory (hive partitioning by date); a table with no
    file yet (no dead letters, say) gets an empty view of the same columns, so every table answers."""
    database.parent.mkdir(parents=True, exist_ok=True)
    schemas = warehouse_schemas(horizons)
    created = []
    with duckdb.connect(str(database)) as con:
        for name in tables:
            table_dir = warehouse / name
            if any(table_dir.rglob("*.parquet")):
                pattern = str(table_dir / "**" / "*.parquet").replace("'", "''")
                options = "hive_partitioning = true, union_by_name = true"
                body = f"SELECT * FROM read_parquet('{pattern}', {options})"
            else:
                # No file yet (no dead letters, say) or none left after a reset: an empty view of the
                # same columns, since a view over no files fails every query.
                body = _empty_select(con, schemas[name])
            con.execute(f'CREATE OR REPLACE VIEW "{name}" AS {body}')
            created.append(name)
    return created


def _empty_select(con: duckdb.DuckDBPyConnection, schema: pa.Schema) -> str:
    """A SELECT of no rows with the columns (and DuckDB types) the table's files would have."""
    relation = con.from_arrow(schema.empty_table())
    columns = [f'CAST(NULL AS {kind}) AS "{name}"' for name, kind in zip(relation.columns, relation.types,
                                                                          strict=True)]
    if "event_time" in schema.names:  # date-partitioned: the hive partition column
        columns.append('CAST(NULL AS DATE) AS "date"')
    return f"SELECT {', '.join(columns)} WHERE false"
