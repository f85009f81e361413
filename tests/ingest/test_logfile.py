"""Canonical log files: vectorised JSONL writing, chunked reading, dead letters, external sort."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pytest

from pipelines.events import EVENT_SCHEMA, DeadLetter, MalformedEvent, decode_event, encode_event
from pipelines.logfile import (
    LogWriter,
    check_block,
    conform,
    iter_events,
    iter_lines,
    iter_log,
    iter_records,
    log_format,
    sort_by_event_time,
    table_to_jsonl,
)

T0 = 1_767_571_214_000


def _impression(i: int, **extra: object) -> dict:
    return {
        "type": "impression", "impression_id": str(i), "request_id": str(i // 3), "user_id": str(i % 7),
        "item_id": str(i * 11), "position": i % 3, "event_time": T0 + i * 10, "p_click": i / 1000, **extra,
    }


def _typed(record: dict) -> list[tuple[str, object, type]]:
    return sorted((k, v, type(v).__name__) for k, v in record.items())


def test_vectorised_jsonl_reads_back_as_the_same_records() -> None:
    records = [_impression(i, hour=i % 24, page="home") for i in range(50)]
    records += [_impression(60, p_click=1e-05), _impression(61, p_click=1.0)]
    records += [{"type": "click", "impression_id": "3", "user_id": "3", "item_id": "3", "event_time": T0 + 9}]
    out = table_to_jsonl(conform(pa.Table.from_pylist(records, schema=EVENT_SCHEMA)))
    # Same values, same JSON types (a float stays a float), nulls left out.
    assert [_typed(json.loads(line)) for line in out.splitlines()] == [_typed(r) for r in records]


def test_strings_that_need_escaping_are_escaped() -> None:
    records = [_impression(1, device='pho"ne\\x'), _impression(2, page="tab\there")]
    out = table_to_jsonl(conform(pa.Table.from_pylist(records, schema=EVENT_SCHEMA)))
    assert [json.loads(line)["device" if i == 0 else "page"] for i, line in enumerate(out.splitlines())] == [
        'pho"ne\\x', "tab\there"]


@pytest.mark.parametrize("suffix", [".jsonl", ".parquet"])
def test_write_then_read_back_in_chunks(tmp_path: Path, suffix: str) -> None:
    records = [_impression(i) for i in range(1, 1001)]
    path = tmp_path / f"log{suffix}"
    with LogWriter(path) as writer:
        writer.write(pa.Table.from_pylist(records[:400], schema=EVENT_SCHEMA))
        writer.write_records(records[400:])
    chunks = list(iter_log(path, chunk_rows=300))
    assert [len(c) for c in chunks] == [300, 300, 300, 100]
    assert all(c.schema == EVENT_SCHEMA for c in chunks)
    assert list(iter_records(path)) == records


def test_malformed_lines_are_reported_with_line_numbers_never_skipped(tmp_path: Path) -> None:
    path = tmp_path / "log.jsonl"
    good = encode_event(_impression(1))
    path.write_bytes(good + b"\n{bad json\n" + good + b'\n{"type":"click"')  # truncated last line
    assert [n for n, _ in iter_lines(path)] == [1, 2, 3, 4]
    letters = [x for x in iter_events(path) if isinstance(x, DeadLetter)]
    assert [(d.offset, d.raw) for d in letters] == [(2, b"{bad json"), (4, b'{"type":"click"')]
    assert all(d.error.startswith("invalid JSON") for d in letters)
    with pytest.raises(MalformedEvent, match=r"log.jsonl:2: invalid JSON"):
        list(iter_log(path))
    collected: list[DeadLetter] = []
    tables = list(iter_log(path, on_dead_letter=collected.append))
    assert sum(len(t) for t in tables) == 2 and len(collected) == 2


@pytest.mark.parametrize("chunk_rows", [4, 1000])
def test_external_sort_is_stable_and_puts_impressions_before_clicks(chunk_rows: int) -> None:
    records = []
    for i in range(50):
        t = T0 + ((i * 37) % 13) * 1000
        click = {"type": "click", "impression_id": f"c{i}", "user_id": "1", "item_id": "1", "event_time": t}
        records.append(click)
        records.append(_impression(i) | {"event_time": t})
    out = list(sort_by_event_time(iter(records), chunk_rows=chunk_rows))
    keyed = sorted(records, key=lambda r: (r["event_time"], r["type"] == "click"))
    assert out == keyed  # Python's sort is stable: this is the stable order


def test_unknown_extensions_are_refused() -> None:
    with pytest.raises(ValueError, match="cannot tell the log format"):
        log_format("events.csv")


TRICKY_LINES = [
    encode_event(_impression(1)),
    encode_event({"type": "click", "impression_id": "1", "user_id": "1", "item_id": "1", "event_time": T0}),
    encode_event(_impression(2) | {"p_click": 1}),  # an int probability is fine
    encode_event(_impression(3) | {"extra": {"nested": [1, 2]}}),  # unknown fields pass through
    encode_event(_impression(4) | {"request_id": ""}),
    encode_event(_impression(5) | {"event_time": 1_767_571_214}),
    encode_event(_impression(6) | {"position": 10_001}),
    encode_event(_impression(7) | {"p_click": 1.5}),
    encode_event(_impression(8) | {"type": "view"}),
    encode_event({"type": "click", "impression_id": "1", "user_id": "1", "event_time": T0}),
    encode_event(_impression(9) | {"request_id": None}),
    encode_event(_impression(14) | {"hour": 24}),
]
BLOCK_BREAKERS = [
    encode_event(_impression(10) | {"position": True}),
    encode_event(_impression(11) | {"user_id": 11}),
    b'{"type":"impression","type":"click"}',
    encode_event(_impression(12)) + b" " + encode_event(_impression(13)),  # two objects on one line
    b"   ",
    b"[1, 2]",
    b"\xff{}",
    # Arrow's reader does not check UTF-8 inside string values; decode_event refuses the line.
    encode_event(_impression(15))[:-1] + b',"device":"\xff"}',
]


def test_block_check_accepts_exactly_what_validate_event_accepts() -> None:
    checked = check_block(TRICKY_LINES)
    assert checked is not None
    verdicts = []
    for line in TRICKY_LINES:
        try:
            decode_event(line)
            verdicts.append(True)
        except MalformedEvent:
            verdicts.append(False)
    assert checked.valid == verdicts == [True] * 4 + [False] * 8
    assert checked.types[:2] == ["impression", "click"] and checked.user_ids[0] == "1"


@pytest.mark.parametrize("breaker", BLOCK_BREAKERS)
def test_lines_arrow_cannot_map_one_to_one_fall_back_to_per_line_decoding(breaker: bytes) -> None:
    assert check_block([*TRICKY_LINES[:2], breaker, TRICKY_LINES[0]]) is None
