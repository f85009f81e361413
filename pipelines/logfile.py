"""Reading and writing canonical event logs (JSON Lines or Parquet, chosen by extension), in chunks.

Public API (used by the simulator, the adapters' ``convert``, replay and the Beam file backfill):

- ``LogWriter(path)``: context manager; ``write(table)`` appends a ``pyarrow.Table`` whose columns are
  a subset of ``events.EVENT_SCHEMA`` (missing columns become null); ``write_records(records)`` appends
  canonical dicts. Nulls are left out of JSON lines, exactly like ``events.encode_event``. Parquet keeps
  only the contract columns: ``extra_fields_dropped`` counts the records whose extra fields it lost.
- ``iter_lines(path)``: ``(line_number, raw_bytes)`` of a JSONL log, 1-based, newline stripped.
- ``iter_events(path)``: every record of a log, validated once: a dict for a good record, a
  ``DeadLetter`` (source = path, partition = -1, offset = 1-based line/row number) for a bad one.
  Blank lines are not records (as for most JSON Lines readers): they are skipped.
- ``open_parquet(path)``, ``check_columns(schema, source)``, ``conform_columns(table)``: the one
  conform step for columnar (Parquet) logs, used by replay, the feature job and validation alike: an
  unreadable file, a missing required column or a column of a type that cannot safely become the
  contract's is a ``LogSchemaError`` (one line, raised before any record is read); what is safely
  coercible is coerced (a timestamp column -> int ms UTC, integer ids -> strings, narrower ints and
  floats -> the contract's widths); other columns are ignored.
- ``iter_log(path, chunk_rows)``: ``pyarrow.Table`` chunks in ``EVENT_SCHEMA`` (at most ``chunk_rows``
  rows each). Malformed records go to ``on_dead_letter`` if given, else raise ``MalformedEvent`` naming
  the line: a bad record is never skipped silently.
- ``sort_by_event_time(records, chunk_rows)``: a stable external sort (bounded memory) for sources that
  are not already in event-time order.
- ``check_block(lines)``: validates a block of JSON lines at once in Arrow (the replay fast path); lines
  it cannot vouch for are left to ``events.decode_event``, which gives the exact reason.
"""

from __future__ import annotations

import heapq
import io
import json
import tempfile
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.json as pa_json
import pyarrow.parquet as pq

from pipelines.events import (
    CLICK,
    CLICK_REQUIRED,
    EVENT_COLUMNS,
    EVENT_SCHEMA,
    HOUR_RANGE,
    IMPRESSION,
    IMPRESSION_REQUIRED,
    MAX_EVENT_TIME_MS,
    MAX_ID_LENGTH,
    MAX_POSITION,
    MAX_RECORD_BYTES,
    MIN_EVENT_TIME_MS,
    OPTIONAL_FIELDS,
    DeadLetter,
    MalformedEvent,
    decode_event,
    encode_event,
    is_utf8,
    validate_event,
)

JSONL_SUFFIXES = (".jsonl", ".json", ".ndjson")
PARQUET_SUFFIXES = (".parquet", ".pq")
_READ_BLOCK_BYTES = 4 * 1024 * 1024
_EVENT_FIELDS = frozenset(EVENT_COLUMNS)
_STRING_COLUMNS = tuple(f.name for f in EVENT_SCHEMA if pa.types.is_string(f.type))
# Characters that need JSON escaping; string columns free of them take the vectorised fast path.
_NEEDS_ESCAPE = r'["\\\x00-\x1f]'


def log_format(path: Path | str) -> str:
    """``"jsonl"`` or ``"parquet"`` from the file extension; anything else is an error."""
    suffix = Path(path).suffix.lower()
    if suffix in JSONL_SUFFIXES:
        return "jsonl"
    if suffix in PARQUET_SUFFIXES:
        return "parquet"
    raise ValueError(
        f"cannot tell the log format of {path}: use one of {JSONL_SUFFIXES + PARQUET_SUFFIXES}"
    )


def conform(table: pa.Table) -> pa.Table:
    """The table with exactly the EVENT_SCHEMA columns, in order, cast to their types."""
    unknown = set(table.column_names) - set(EVENT_COLUMNS)
    if unknown:
        raise ValueError(f"columns not in the canonical event schema: {sorted(unknown)}")
    columns = [
        table[f.name].cast(f.type) if f.name in table.column_names else pa.nulls(len(table), f.type)
        for f in EVENT_SCHEMA
    ]
    return pa.Table.from_arrays(columns, schema=EVENT_SCHEMA)


def _json_fragment(name: str, column: pa.ChunkedArray) -> pa.ChunkedArray:
    """``"name":value`` per row (null where the value is null) for a column that needs no escaping."""
    if pa.types.is_string(column.type):
        return pc.binary_join_element_wise(f'"{name}":"', column, '"', "")
    text = column.cast(pa.string())
    if pa.types.is_floating(column.type):
        # Arrow writes 1.0 as "1": keep a float a float when it is read back.
        with_point = pc.binary_join_element_wise(text, ".0", "")
        text = pc.if_else(pc.match_substring_regex(text, "[.eE]"), text, with_point)
    return pc.binary_join_element_wise(f'"{name}":', text, "")


def table_to_jsonl(table: pa.Table) -> bytes:
    """JSON Lines for an EVENT_SCHEMA table; vectorised in Arrow unless some string needs escaping."""
    if len(table) == 0:
        return b""
    needs_escape = any(
        pc.any(pc.match_substring_regex(table[name], _NEEDS_ESCAPE)).as_py() for name in _STRING_COLUMNS
    )
    if needs_escape:
        return b"".join(encode_event(r) + b"\n" for r in table.to_pylist())
    fragments = [_json_fragment(name, table[name]) for name in table.column_names]
    body = pc.binary_join_element_wise(*fragments, ",", null_handling="skip")
    lines = pc.binary_join_element_wise("{", body, "}\n", "")
    return b"".join(_string_data(chunk) for chunk in lines.chunks)


def _string_data(chunk: pa.StringArray) -> bytes:
    """The concatenated values of a null-free string array, straight from its data buffer."""
    offsets = np.frombuffer(chunk.buffers()[1], dtype=np.int32)[chunk.offset : chunk.offset + len(chunk) + 1]
    return chunk.buffers()[2].to_pybytes()[int(offsets[0]) : int(offsets[-1])]


class LogWriter:
    """Appends event chunks to a canonical log; the format follows the extension."""

    def __init__(self, path: Path | str) -> None:
        self.path = Path(path)
        self.format = log_format(self.path)
        self.rows = 0
        # Records whose extra (non-contract) fields a Parquet log could not keep; JSONL keeps them all.
        self.extra_fields_dropped = 0
        self._jsonl = None
        self._parquet: pq.ParquetWriter | None = None

    def __enter__(self) -> LogWriter:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if self.format == "jsonl":
            self._jsonl = open(self.path, "wb")  # noqa: SIM115 - closed in __exit__
        else:
            self._parquet = pq.ParquetWriter(self.path, EVENT_SCHEMA, compression="zstd")
        return self

    def write(self, table: pa.Table) -> None:
        table = conform(table)
        if self._jsonl is not None:
            self._jsonl.write(table_to_jsonl(table))
        elif self._parquet is not None:
            self._parquet.write_table(table)
        else:
            raise RuntimeError("LogWriter used outside its `with` block")
        self.rows += len(table)

    def write_records(self, records: Iterable[dict[str, Any]]) -> None:
        records = list(records)
        if not records:
            return
        if self._jsonl is not None:
            # Records may carry extra context fields: JSON keeps them all.
            self._jsonl.write(b"".join(encode_event(r) + b"\n" for r in records))
            self.rows += len(records)
        else:
            self.extra_fields_dropped += sum(not record.keys() <= _EVENT_FIELDS for record in records)
            self.write(pa.Table.from_pylist(records, schema=EVENT_SCHEMA))

    def __exit__(self, *exc: object) -> None:
        if self._jsonl is not None:
            self._jsonl.close()
        if self._parquet is not None:
            self._parquet.close()


def iter_lines(path: Path | str) -> Iterator[tuple[int, bytes]]:
    """``(line_number, raw)`` for every line of a text file, 1-based, newline stripped, read in blocks.

    A final line without a newline is still yielded (it is often a truncated record)."""
    line_no = 0
    with open(path, "rb") as f:
        while True:
            block = f.readlines(_READ_BLOCK_BYTES)
            if not block:
                return
            for raw in block:
                line_no += 1
                yield line_no, raw.rstrip(b"\r\n")


class LogSchemaError(ValueError):
    """A columnar log whose columns cannot be read as canonical events (one line, names the column)."""


# Integer columns are conformed to int64 (not the contract's int32/int8) so that an out-of-range value is
# a per-row dead letter with its reason, not a failed cast of the whole column.
COLUMNAR_SCHEMA = pa.schema(
    [
        pa.field(f.name, pa.int64() if pa.types.is_integer(f.type) else f.type, nullable=True)
        for f in EVENT_SCHEMA
    ]
)
REQUIRED_COLUMNS = tuple(f.name for f in EVENT_SCHEMA if not f.nullable)


def _coercible(name: str, source: pa.DataType, target: pa.DataType) -> bool:
    """Whether column ``name`` of type ``source`` becomes ``target`` without losing or inventing meaning."""
    if pa.types.is_dictionary(source):
        source = source.value_type
    if pa.types.is_null(source) or source == target:
        return True
    if pa.types.is_string(target):  # ids: text, or integers (1234 -> "1234")
        return pa.types.is_string(source) or pa.types.is_large_string(source) or pa.types.is_integer(source)
    if pa.types.is_integer(target):  # event_time may also be a timestamp column (-> ms UTC)
        return pa.types.is_integer(source) or (name == "event_time" and pa.types.is_timestamp(source))
    if pa.types.is_floating(target):
        return pa.types.is_floating(source) or pa.types.is_integer(source)
    return False


def check_columns(schema: pa.Schema, source: Path | str) -> None:
    """Raise LogSchemaError unless a columnar log with this schema can be conformed (see module doc)."""
    missing = [name for name in REQUIRED_COLUMNS if name not in schema.names]
    if missing:
        raise LogSchemaError(
            f"{source}: columnar log lacks required column(s) {missing} (it has {schema.names})"
        )
    for target in COLUMNAR_SCHEMA:
        if target.name not in schema.names:
            continue
        kind = schema.field(target.name).type
        if not _coercible(target.name, kind, target.type):
            raise LogSchemaError(
                f"{source}: column {target.name!r} is {kind}, which cannot be read as {target.type}"
            )


def open_parquet(path: Path | str) -> pq.ParquetFile:
    """A columnar log whose columns ``check_columns`` accepts; LogSchemaError (one line) otherwise."""
    try:
        parquet = pq.ParquetFile(path)
    except (pa.ArrowException, OSError) as exc:
        raise LogSchemaError(f"{path}: not a readable Parquet file ({exc})") from None
    check_columns(parquet.schema_arrow, path)
    return parquet


def conform_columns(table: pa.Table) -> pa.Table:
    """A columnar log's table as ``COLUMNAR_SCHEMA`` (check its schema with ``check_columns`` first):
    contract columns in order, coerced, every one nullable (bad rows are found afterwards, per row)."""
    columns = []
    for target in COLUMNAR_SCHEMA:
        if target.name not in table.column_names:
            columns.append(pa.nulls(table.num_rows, target.type))
            continue
        column = table[target.name]
        if pa.types.is_dictionary(column.type):
            column = column.cast(column.type.value_type)
        if pa.types.is_timestamp(column.type):
            # A naive timestamp is taken as UTC; a zoned one is an instant whatever its zone.
            column = column.cast(pa.timestamp("ms", tz=column.type.tz)).cast(pa.int64())
        columns.append(column.cast(target.type))
    return pa.Table.from_arrays(columns, schema=COLUMNAR_SCHEMA)


def _dead_letter(path: Path | str, line_no: int, error: str, raw: bytes) -> DeadLetter:
    return DeadLetter(source=str(path), partition=-1, offset=line_no, error=error, raw=raw)


def iter_events(path: Path | str) -> Iterator[dict[str, Any] | DeadLetter]:
    """Every record of a canonical log, validated once: dicts for good records, DeadLetters for bad.

    A Parquet log's columns are checked here, at the call (LogSchemaError), not at the first record."""
    if log_format(path) == "jsonl":
        return _jsonl_events(path)
    return _parquet_events(path, open_parquet(path))  # columns checked now, not at the first record


def _jsonl_events(path: Path | str) -> Iterator[dict[str, Any] | DeadLetter]:
    for line_no, raw in iter_lines(path):
        if raw.isspace() or not raw:
            continue
        try:
            yield decode_event(raw)
        except MalformedEvent as exc:
            yield _dead_letter(path, line_no, str(exc), raw)


def _parquet_events(path: Path | str, parquet: pq.ParquetFile) -> Iterator[dict[str, Any] | DeadLetter]:
    row_no = 0
    for batch in parquet.iter_batches(batch_size=65_536, columns=_present(parquet.schema_arrow)):
        for record in conform_columns(pa.Table.from_batches([batch])).to_pylist():
            row_no += 1
            clean = {k: v for k, v in record.items() if v is not None}
            try:
                yield validate_event(clean)
            except MalformedEvent as exc:
                yield _dead_letter(path, row_no, str(exc), encode_event(clean))


def _present(schema: pa.Schema) -> list[str]:
    """The contract columns a columnar log has (the others are never read)."""
    return [name for name in COLUMNAR_SCHEMA.names if name in schema.names]


def iter_log(
    path: Path | str,
    chunk_rows: int = 100_000,
    on_dead_letter: Callable[[DeadLetter], None] | None = None,
) -> Iterator[pa.Table]:
    """The log as EVENT_SCHEMA tables of at most ``chunk_rows`` rows (extra JSON fields are dropped)."""
    if chunk_rows < 1:
        raise ValueError("chunk_rows must be >= 1")
    buffer: list[dict[str, Any]] = []
    for item in iter_events(path):
        if isinstance(item, DeadLetter):
            if on_dead_letter is None:
                raise MalformedEvent(f"{item.source}:{item.offset}: {item.error}")
            on_dead_letter(item)
            continue
        buffer.append(item)
        if len(buffer) >= chunk_rows:
            yield _records_table(buffer)
            buffer = []
    if buffer:
        yield _records_table(buffer)


def _records_table(records: list[dict[str, Any]]) -> pa.Table:
    return pa.Table.from_pylist([{c: r.get(c) for c in EVENT_COLUMNS} for r in records], schema=EVENT_SCHEMA)


def iter_records(path: Path | str) -> Iterator[dict[str, Any]]:
    """The good records of a log; raises MalformedEvent (with the line) on the first bad one."""
    for item in iter_events(path):
        if isinstance(item, DeadLetter):
            raise MalformedEvent(f"{item.source}:{item.offset}: {item.error}")
        yield item


def _event_order_key(record: dict[str, Any]) -> tuple[int, int]:
    # At equal times an impression sorts before clicks, so a click never precedes its impression.
    return record["event_time"], 0 if record.get("type") == "impression" else 1


def sort_by_event_time(
    records: Iterable[dict[str, Any]], chunk_rows: int = 500_000
) -> Iterator[dict[str, Any]]:
    """Records in event-time order (stable), holding at most ``chunk_rows`` records in memory.

    Inputs that fit in one chunk are sorted in memory; larger ones spill sorted runs to temporary
    JSONL files that are merged lazily and deleted afterwards."""
    if chunk_rows < 1:
        raise ValueError("chunk_rows must be >= 1")
    with tempfile.TemporaryDirectory(prefix="ctrflow-sort-") as tmp:
        runs: list[Path] = []
        buffer: list[dict[str, Any]] = []
        for record in records:
            buffer.append(record)
            if len(buffer) >= chunk_rows:
                runs.append(_spill_run(buffer, Path(tmp) / f"run{len(runs)}.jsonl"))
                buffer = []
        buffer.sort(key=_event_order_key)
        if not runs:
            yield from buffer
            return
        if buffer:
            runs.append(_spill_run(buffer, Path(tmp) / f"run{len(runs)}.jsonl"))
        streams = [(json.loads(raw) for _, raw in iter_lines(run)) for run in runs]
        yield from heapq.merge(*streams, key=_event_order_key)


def _spill_run(buffer: list[dict[str, Any]], path: Path) -> Path:
    buffer.sort(key=_event_order_key)
    with open(path, "wb") as f:
        f.write(b"".join(encode_event(r) + b"\n" for r in buffer))
    return path


# Every contract field with its strict Arrow type: the JSON reader refuses a value of another JSON type
# (a number for a string, a float or bool for an int, a duplicated key), which sends the whole block to
# the exact per-line path. Unknown fields are ignored here and passed through untouched.
_BLOCK_TYPES = {str: pa.string(), int: pa.int64(), float: pa.float64()}
_BLOCK_FIELDS = {"type": str, **IMPRESSION_REQUIRED, **CLICK_REQUIRED, **OPTIONAL_FIELDS}
_BLOCK_SCHEMA = pa.schema([(name, _BLOCK_TYPES[kind]) for name, kind in _BLOCK_FIELDS.items()])
_BLOCK_PARSE = pa_json.ParseOptions(explicit_schema=_BLOCK_SCHEMA, unexpected_field_behavior="ignore")
# One thread: the caller's block is small and Kafka's sender thread needs the other core.
_BLOCK_READ = pa_json.ReadOptions(use_threads=False, block_size=16 << 20)


@dataclass
class CheckedBlock:
    """Per line: ``valid`` (certainly a valid canonical event), and its type, user id and event time."""

    valid: list[bool]
    types: list[str | None]
    user_ids: list[str | None]
    event_times: list[int | None]


def check_block(lines: list[bytes]) -> CheckedBlock | None:
    """Validate many JSON lines at once, exactly as ``events.validate_event`` would accept them.

    Returns None when Arrow cannot map the block line by line (a line that is not one JSON object of
    contract types, an empty line, invalid UTF-8...): the caller then decodes line by line. A line with
    ``valid`` False may still be valid; only ``decode_event`` gives the verdict and the reason."""
    # Every line must hold exactly one object: no empty or blank line (Arrow would skip it and shift
    # the rows), none over the size limit. Checked with C-level map() calls: this is the hot path.
    if not lines:
        return None
    lengths = list(map(len, lines))
    if min(lengths) == 0 or max(lengths) > MAX_RECORD_BYTES or any(map(bytes.isspace, lines)):
        return None
    block = b"\n".join(lines)
    if not is_utf8(block):
        return None
    try:
        table = pa_json.read_json(io.BytesIO(block), read_options=_BLOCK_READ, parse_options=_BLOCK_PARSE)
    except pa.ArrowInvalid:
        return None
    if table.num_rows != len(lines):
        return None
    kind = table["type"]
    impression = pc.fill_null(pc.equal(kind, IMPRESSION), False)
    click = pc.fill_null(pc.equal(kind, CLICK), False)
    valid = pc.or_(impression, click)
    for fields, applies in ((IMPRESSION_REQUIRED, impression), (CLICK_REQUIRED, click)):
        for name, expected in fields.items():
            column = table[name]
            ok = pc.is_valid(column)
            if expected is str:
                length = pc.utf8_length(column)
                ok = pc.and_(ok, pc.and_(pc.greater_equal(length, 1), pc.less_equal(length, MAX_ID_LENGTH)))
            valid = pc.and_(valid, pc.or_(pc.invert(applies), pc.fill_null(ok, False)))
    times = table["event_time"]
    in_range = pc.and_(pc.greater_equal(times, MIN_EVENT_TIME_MS), pc.less(times, MAX_EVENT_TIME_MS))
    valid = pc.and_(valid, pc.fill_null(in_range, False))
    position = table["position"]
    position_ok = pc.and_(pc.greater_equal(position, 0), pc.less_equal(position, MAX_POSITION))
    valid = pc.and_(valid, pc.or_(pc.invert(impression), pc.fill_null(position_ok, False)))
    hour = table["hour"]
    hour_ok = pc.and_(pc.greater_equal(hour, HOUR_RANGE[0]), pc.less_equal(hour, HOUR_RANGE[1]))
    valid = pc.and_(valid, pc.or_(pc.is_null(hour), pc.fill_null(hour_ok, False)))
    p = table["p_click"]
    p_ok = pc.and_(pc.is_finite(p), pc.and_(pc.greater_equal(p, 0.0), pc.less_equal(p, 1.0)))
    valid = pc.and_(valid, pc.or_(pc.is_null(p), pc.fill_null(p_ok, False)))
    return CheckedBlock(
        valid=pc.fill_null(valid, False).to_pylist(),
        types=kind.to_pylist(),
        user_ids=table["user_id"].to_pylist(),
        event_times=times.to_pylist(),
    )
