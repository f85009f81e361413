"""The conversion use case (`pipelines.convert.convert_log`) on its own: its report, and what it refuses."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pipelines.convert import ConvertReport, convert_log, dead_letter_path
from pipelines.logfile import iter_records

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
T0 = 1_767_571_214_000


def _write_log(path: Path, times: list[int], bad_lines: int = 0, extra: bool = False) -> None:
    records = [
        {"type": "impression", "impression_id": str(i), "request_id": str(i), "user_id": "1", "item_id": "2",
         "position": 0, "event_time": T0 + t} | ({"I1": i} if extra else {})
        for i, t in enumerate(times)
    ]
    path.write_text("".join(json.dumps(r) + "\n" for r in records) + "not json\n" * bad_lines)


def test_the_report_says_what_was_written_and_where_the_bad_lines_went(tmp_path: Path) -> None:
    source, out = tmp_path / "in.jsonl", tmp_path / "sub" / "out.parquet"
    _write_log(source, [3, 1, 2], bad_lines=2, extra=True)
    written: list[int] = []
    report = convert_log("canonical", source, out, on_progress=written.append)
    assert report == ConvertReport(out=out, events=3, dead_lettered=2, skipped=0, extra_fields_dropped=3,
                                   dead_letter_path=dead_letter_path(out))
    assert sum(written) == 3
    assert [r["event_time"] - T0 for r in iter_records(out)] == [1, 2, 3]
    assert len(dead_letter_path(out).read_bytes().splitlines()) == 2
    # A clean rerun removes the dead letters of the previous one: they do not describe the new OUT.
    _write_log(source, [1])
    again = convert_log("canonical", source, out)
    assert (again.events, again.dead_lettered, again.dead_letter_path) == (1, 0, None)
    assert not dead_letter_path(out).exists()


def test_adapter_options_reach_the_adapter(tmp_path: Path) -> None:
    out = tmp_path / "mind.jsonl"
    report = convert_log("mind", FIXTURES / "mind_behaviors.tsv", out,
                         options={"news": FIXTURES / "mind_news.tsv"})
    assert report.events > 0 and report.counts() == {"events": report.events, "dead_lettered": 0,
                                                     "skipped": report.skipped}
    assert any(r.get("subcategory") for r in iter_records(out))


@pytest.mark.parametrize(
    ("fmt", "source_name", "out_name", "message"),
    [
        ("xml", "in.jsonl", "out.jsonl", "unknown format 'xml'"),
        ("canonical", "in.jsonl", "in.jsonl", "would overwrite the input"),
        # The dead letters of OUT would land on the input.
        ("canonical", "out.jsonl.deadletter.jsonl", "out.jsonl", "would overwrite the input"),
        ("canonical", "in.jsonl", "dir.jsonl", "is a directory"),
        ("canonical", "in.jsonl", "out.csv", "cannot tell the log format"),
        ("canonical", "in.txt", "out.jsonl", "cannot tell the log format"),
    ],
)
def test_bad_input_is_a_value_error_before_anything_is_written(
    tmp_path: Path, fmt: str, source_name: str, out_name: str, message: str
) -> None:
    source = tmp_path / source_name
    _write_log(source, [1, 2])
    (tmp_path / "dir.jsonl").mkdir()  # a log-like name: refused for being a directory
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir() if p.is_file()}
    with pytest.raises(ValueError, match=message):
        convert_log(fmt, source, tmp_path / out_name)
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir() if p.is_file()} == before
