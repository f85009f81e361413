"""The ingest commands end to end: simulate -> convert -> replay (real broker), and `ctrflow broker`."""

from __future__ import annotations

import json
import socket
import threading
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from orchestration.cli import app
from orchestration.cli.ingest import parse_speed, serve_broker
from pipelines.events import DeadLetter
from pipelines.kafka import EmbeddedBroker, make_consumer, partitions_for
from pipelines.logfile import iter_records
from pipelines.settings import Settings

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
runner = CliRunner()


def _last_json(output: str) -> dict:
    return json.loads(output.strip().splitlines()[-1])


def test_simulate_prints_oracle_metrics_and_writes_the_log(tmp_path: Path) -> None:
    out = tmp_path / "sim.parquet"
    result = runner.invoke(app, ["simulate", "--days", "2", "--users", "300", "--items", "200",
                                 "--impressions", "3000", "--seed", "9", "--out", str(out), "--json"])
    assert result.exit_code == 0, result.output
    summary = _last_json(result.stdout)
    assert summary["impressions"] == 3000 and 0.5 < summary["oracle_auc"] < 1
    assert "oracle AUC" in result.output
    assert sum(r["type"] == "impression" for r in iter_records(out)) == 3000


def test_convert_keeps_bad_lines_aside(tmp_path: Path) -> None:
    source = tmp_path / "ratings.data"
    source.write_bytes((FIXTURES / "movielens_u.data").read_bytes() + b"1\t2\tbad\t881250949\n")
    out = tmp_path / "ml.jsonl"
    result = runner.invoke(app, ["convert", "movielens", str(source), str(out), "--json"])
    assert result.exit_code == 0, result.output
    assert _last_json(result.stdout) == {"events": 23, "dead_lettered": 1, "skipped": 0}
    times = [r["event_time"] for r in iter_records(out)]
    assert len(times) == 23 and times == sorted(times)  # u.data is not time-ordered; the output is
    (letter,) = [DeadLetter.from_json(line) for line in (tmp_path / "ml.jsonl.deadletter.jsonl").read_bytes()
                 .splitlines()]
    assert letter.offset == 17 and "rating" in letter.error


def test_replay_command_reports_counts_as_json(
    broker: EmbeddedBroker, settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CTRFLOW_KAFKA_BOOTSTRAP", broker.bootstrap)
    prefix = settings.topic_prefix + "cli"
    result = runner.invoke(app, ["replay", str(FIXTURES / "mind_behaviors.tsv"), "--format", "mind",
                                 "--speed", "max", "--topic-prefix", prefix, "--json"])
    assert result.exit_code == 0, result.output
    counts = _last_json(result.stdout)
    assert (counts["read"], counts["produced"], counts["dead_lettered"]) == (29, 29, 0)
    consumer = make_consumer(broker.bootstrap)
    try:
        assert len(partitions_for(consumer, f"{prefix}.impressions")) == settings.topic_partitions
    finally:
        consumer.close()


def test_replay_command_rejects_bad_options() -> None:
    source = str(FIXTURES / "mind_behaviors.tsv")
    assert runner.invoke(app, ["replay", source, "--format", "xml"]).exit_code == 2
    assert runner.invoke(app, ["replay", source, "--speed", "fast"]).exit_code == 2
    assert parse_speed("max") is None and parse_speed("2.5") == 2.5


def test_broker_serves_on_the_requested_loopback_port_until_stopped() -> None:
    port = _free_port()
    stop = threading.Event()
    ready: list[str] = []
    server = threading.Thread(target=serve_broker, args=(port, stop, ready.append), daemon=True)
    server.start()
    try:
        deadline = time.monotonic() + 20
        while not ready and time.monotonic() < deadline:
            time.sleep(0.05)
        assert ready == [f"127.0.0.1:{port}"]
        consumer = make_consumer(ready[0])
        try:
            assert consumer.topics() is not None  # a real Kafka-protocol answer
        finally:
            consumer.close()
    finally:
        stop.set()
        server.join(timeout=15)
    assert not server.is_alive()
    with socket.socket() as s:
        s.bind(("127.0.0.1", port))  # the port is free again: the broker process is gone


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_convert_canonical_sorts_by_event_time_and_changes_format(tmp_path: Path) -> None:
    base = 1_767_571_214_000
    shuffled = [
        {"type": "impression", "impression_id": str(i), "request_id": str(i), "user_id": "1", "item_id": "2",
         "position": 0, "event_time": base + ((i * 7) % 10) * 1000}
        for i in range(10)
    ]
    source = tmp_path / "shuffled.jsonl"
    source.write_text("".join(json.dumps(r) + "\n" for r in shuffled) + "not json\n")
    out = tmp_path / "sorted.parquet"
    result = runner.invoke(app, ["convert", "canonical", str(source), str(out), "--json"])
    assert result.exit_code == 0, result.output
    assert _last_json(result.stdout) == {"events": 10, "dead_lettered": 1, "skipped": 0}
    assert list(iter_records(out)) == sorted(shuffled, key=lambda r: r["event_time"])


def _said(result) -> str:
    """The command's output with rich's line wrapping undone."""
    return " ".join(result.output.split())


def _canonical_lines(n: int) -> bytes:
    base = 1_767_571_214_000
    return b"".join(
        json.dumps({"type": "impression", "impression_id": str(i), "request_id": "r", "user_id": "1",
                    "item_id": "2", "position": 0, "event_time": base + i}).encode() + b"\n"
        for i in range(n)
    )


def test_convert_refuses_to_overwrite_its_input(tmp_path: Path) -> None:
    source = tmp_path / "log.jsonl"
    source.write_bytes(_canonical_lines(5))
    for out in (source, tmp_path / "." / "log.jsonl"):
        result = runner.invoke(app, ["convert", "canonical", str(source), str(out)])
        assert result.exit_code == 2 and "would overwrite the input" in _said(result), result.output
    assert source.read_bytes() == _canonical_lines(5)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["log.jsonl"]


def test_convert_checks_the_input_format_before_writing_anything(tmp_path: Path) -> None:
    source = tmp_path / "src.csv"
    source.write_bytes(_canonical_lines(3))
    result = runner.invoke(app, ["convert", "canonical", str(source), str(tmp_path / "out.jsonl")])
    assert result.exit_code == 2 and "cannot tell the log format" in _said(result), result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)  # a message, no traceback
    assert sorted(p.name for p in tmp_path.iterdir()) == ["src.csv"]


def test_a_failed_convert_leaves_the_previous_output_and_no_partial_files(tmp_path: Path) -> None:
    source = tmp_path / "broken.parquet"
    source.write_bytes(b"PAR1 this is not a parquet file")
    out = tmp_path / "out.jsonl"
    out.write_bytes(_canonical_lines(2))
    result = runner.invoke(app, ["convert", "canonical", str(source), str(out)])
    assert result.exit_code == 2 and "not a readable Parquet file (Parquet magic bytes" in _said(result)
    assert out.read_bytes() == _canonical_lines(2)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["broken.parquet", "out.jsonl"]


def test_convert_to_parquet_warns_about_extra_fields_it_cannot_keep(tmp_path: Path) -> None:
    source = tmp_path / "extra.jsonl"
    lines = _canonical_lines(4).splitlines()
    lines[1] = lines[1][:-1] + b', "I1": 7}'
    source.write_bytes(b"\n".join(lines) + b"\n")
    result = runner.invoke(app, ["convert", "canonical", str(source), str(tmp_path / "out.parquet")])
    assert result.exit_code == 0, result.output
    assert "1 records carried fields beyond the canonical columns" in _said(result)
    result = runner.invoke(app, ["convert", "canonical", str(source), str(tmp_path / "out.jsonl")])
    assert result.exit_code == 0 and "beyond the canonical" not in _said(result)
    assert [r.get("I1") for r in iter_records(tmp_path / "out.jsonl")] == [None, 7, None, None]


def test_convert_joins_side_files_and_parquet_keeps_the_side_fields(tmp_path: Path) -> None:
    out = tmp_path / "mind.parquet"
    result = runner.invoke(app, ["convert", "mind", str(FIXTURES / "mind_behaviors.tsv"), str(out),
                                 "--news", str(FIXTURES / "mind_news.tsv"), "--json"])
    assert result.exit_code == 0, result.output
    impressions = {r["item_id"]: r for r in iter_records(out) if r["type"] == "impression"}
    assert (impressions["N13"]["subcategory"], impressions["N13"]["request_size"]) == ("basketball_nba", 4)
    out = tmp_path / "ml.jsonl"
    result = runner.invoke(app, ["convert", "movielens", str(FIXTURES / "movielens_u.data"), str(out),
                                 "--items", str(FIXTURES / "movielens_u.item"),
                                 "--users", str(FIXTURES / "movielens_u.user")])
    assert result.exit_code == 0, result.output
    first = next(r for r in iter_records(out) if r["item_id"] == "242")
    assert (first["category"], first["user_gender"], first["user_zip"]) == ("Comedy", "M", "55105")


def test_side_files_of_another_format_or_broken_ones_are_usage_errors(tmp_path: Path) -> None:
    result = runner.invoke(app, ["convert", "movielens", str(FIXTURES / "movielens_u.data"),
                                 str(tmp_path / "x.jsonl"), "--news", str(FIXTURES / "mind_news.tsv")])
    assert result.exit_code == 2 and result.output.startswith("error: --news is a mind side file")
    result = runner.invoke(app, ["replay", str(FIXTURES / "mind_behaviors.tsv"), "--format", "mind",
                                 "--users", str(FIXTURES / "movielens_u.user")])
    assert result.exit_code == 2 and "--users is a movielens side file" in result.output
    broken = tmp_path / "news.tsv"
    broken.write_text("N1\tsports\n")
    result = runner.invoke(app, ["convert", "mind", str(FIXTURES / "mind_behaviors.tsv"),
                                 str(tmp_path / "y.jsonl"), "--news", str(broken)])
    assert result.exit_code == 2 and "news.tsv:1: expected 8 fields" in result.output
    assert not (tmp_path / "y.jsonl").exists()


def test_replay_source_carries_the_joined_side_fields() -> None:
    from pipelines.replay import source_records

    records = source_records(FIXTURES / "mind_behaviors.tsv", "mind", news=FIXTURES / "mind_news.tsv")
    payloads = [json.loads(payload) for kind, _, _, payload in records if kind == "impression"]
    first = next(p for p in payloads if p["impression_id"] == "1-0")
    assert (first["subcategory"], first["request_size"], first["hour"]) == ("football_nfl", 3, 9)
