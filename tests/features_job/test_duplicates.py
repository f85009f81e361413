"""Duplicate impression ids: the same records give the same rows whatever the batching.

A log with re-sent impressions (the same record again, at the same or a later time, or with another
item) and ids reused after the dedup window runs through four batchings: a one-shot file backfill,
one Kafka batch, small Kafka batches, and incremental Kafka micro-batches over a log that arrives in
three parts. Every one gives identical tables and dead-letters exactly the copies inside the window.
"""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from kafka import TopicPartition

from features_job.helpers import TABLE_KEYS, comparable, read_table
from pipelines.beam.attribution import DUPLICATE_REASON
from pipelines.beam.job import JobConfig, RunReport, run_file, run_kafka
from pipelines.events import DeadLetter, decode_event, encode_event
from pipelines.kafka import high_watermarks, make_consumer
from pipelines.replay import replay
from pipelines.settings import Settings

MINUTE_MS = 60_000
ROOT = Path(__file__).resolve().parents[2]
DAY_MS = 24 * 60 * MINUTE_MS


def _with_duplicates(small_log: Path, seed: int = 11) -> tuple[list[dict], dict]:
    """The simulated log plus copies of distinct impressions; returns the records and what was added."""
    records = pq.read_table(small_log).to_pylist()
    rng = random.Random(seed)
    impressions = [r for r in records if r["type"] == "impression"]
    end = max(r["event_time"] for r in records)
    late_enough = [r for r in impressions if r["event_time"] < end - DAY_MS - 10 * MINUTE_MS]
    chosen = rng.sample(late_enough, 100)
    added: dict = {"same_time": 0, "later": 0, "other_item": 0, "reused": 0}
    extra: list[dict] = []
    for k, original in enumerate(chosen):
        copy = dict(original)
        kind = ("same_time", "later", "other_item", "reused")[k % 4]
        if kind == "later":
            copy["event_time"] += rng.randint(1, 600) * MINUTE_MS  # re-sent up to 10 h later
        elif kind == "other_item":
            copy["event_time"] += 5 * MINUTE_MS
            copy["item_id"] = "dup-item"
            # A click on the copy's id lands inside the survivor's attribution window: it counts for it.
            click = {"type": "click", "impression_id": copy["impression_id"], "user_id": copy["user_id"]}
            at = copy["event_time"] + MINUTE_MS
            extra.append({**click, "item_id": original["item_id"], "event_time": at})
            added.setdefault("clicked_ids", []).append(copy["impression_id"])
        elif kind == "reused":
            copy["event_time"] += DAY_MS + rng.randint(1, 600) * MINUTE_MS  # after the window: a new one
        added[kind] += 1
        extra.append(copy)
    # Canonical logs are in event-time order (replay relies on it); a stable sort puts a copy at the same
    # time after its original.
    return sorted(records + extra, key=lambda r: r["event_time"]), added


def _write_jsonl(path: Path, records: list[dict]) -> Path:
    path.write_bytes(b"".join(encode_event(r) + b"\n" for r in records))
    return path


@pytest.fixture
def kafka_settings(settings: Settings, broker) -> Settings:
    return settings.model_copy(update={"kafka_bootstrap": broker.bootstrap, "topic_partitions": 2})


def _variant(base: Settings, name: str) -> Settings:
    return base.model_copy(update={"home": base.home.parent / name, "topic_prefix": base.topic_prefix + name})


def _dead_letter_topic(settings: Settings) -> list[DeadLetter]:
    consumer = make_consumer(settings.kafka_bootstrap)
    tps = [TopicPartition(settings.topic("deadletter"), p) for p in range(settings.topic_partitions)]
    end = high_watermarks(consumer, tps)
    consumer.assign(tps)
    consumer.seek_to_beginning(*tps)
    letters: list[DeadLetter] = []
    while len(letters) < sum(end.values()):
        for batch in consumer.poll(timeout_ms=1000).values():
            letters += [DeadLetter.from_json(r.value) for r in batch]
    consumer.close()
    return letters


def test_duplicate_ids_give_the_same_rows_whatever_the_batching(
    kafka_settings: Settings, small_log: Path, tmp_path: Path
) -> None:
    records, added = _with_duplicates(small_log)
    n_dup = added["same_time"] + added["later"] + added["other_item"]
    log = _write_jsonl(tmp_path / "dup.jsonl", records)
    reports: dict[str, RunReport] = {}

    one_shot = _variant(kafka_settings, "file")
    reports["file"] = run_file(one_shot, log, config=JobConfig(num_shards=3))

    one_batch = _variant(kafka_settings, "one")
    replay(log, one_batch, one_batch.kafka_bootstrap)
    reports["one"] = run_kafka(one_batch, final=True, config=JobConfig(num_shards=4))
    assert len(reports["one"].batches) == 1

    small = _variant(kafka_settings, "small")
    replay(log, small, small.kafka_bootstrap)
    reports["small"] = run_kafka(
        small, final=True, config=JobConfig(num_shards=2, max_records_per_partition=300, piece_size=120)
    )
    assert len(reports["small"].batches) > 5

    # The log arrives in three parts (by event time); each part is run without final, then finished.
    incremental = _variant(kafka_settings, "incr")
    cuts = [0, len(records) // 3, 2 * len(records) // 3, len(records)]
    batches: list = []
    config = JobConfig(num_shards=5, max_records_per_partition=500, piece_size=250)
    for i in range(3):
        part = _write_jsonl(tmp_path / f"part{i}.jsonl", records[cuts[i] : cuts[i + 1]])
        replay(part, incremental, incremental.kafka_bootstrap)
        batches += run_kafka(incremental, final=i == 2, config=config).batches
    reports["incr"] = RunReport(batches)
    assert len(batches) > 3 and not batches[0].final

    reference = None
    for name, report in reports.items():
        home = {"file": one_shot, "one": one_batch, "small": small, "incr": incremental}[name].home
        assert report.balanced, name
        assert report.consumed == len(records), name
        assert sum(v["dead_lettered"] for v in report.accounting.values()) == n_dup, name
        dead = read_table(home, "dead_letters").to_pylist()
        assert len(dead) == n_dup and {d["error"] for d in dead} == {DUPLICATE_REASON}, name
        tables = {t: comparable(read_table(home, t), keys) for t, keys in TABLE_KEYS.items()}
        tables["dead_letters"] = sorted(json.dumps(decode_event(d["raw"]), sort_keys=True) for d in dead)
        if reference is None:
            reference = tables
            continue
        for table in tables:
            assert tables[table] == reference[table], (name, table)

    # What the rows say: one labelled sample per impression (reuses after the window included), the
    # click on a copy's id counted for the surviving impression.
    n_impressions = sum(r["type"] == "impression" for r in records)
    labelled = reference["labelled_samples"]
    assert len(labelled) == n_impressions - n_dup
    keys = [(r["impression_id"], r["event_time"]) for r in labelled]
    assert len(set(keys)) == len(keys)
    assert all(r["item_id"] != "dup-item" for r in labelled)  # the copy with another item never won
    survivors = {r["impression_id"]: r["label"] for r in labelled}
    assert all(survivors[i] == 1 for i in added["clicked_ids"])
    reused = [r for r in labelled if sum(1 for k in keys if k[0] == r["impression_id"]) == 2]
    assert len(reused) == 2 * added["reused"]

    # The Kafka runs also put the duplicates on the dead-letter topic, by source partition and offset.
    letters = [d for d in _dead_letter_topic(small) if d.error == DUPLICATE_REASON]
    assert len({(d.partition, d.offset) for d in letters}) == n_dup
    assert {d.source for d in letters} == {small.topic("impressions")}


def test_a_dedup_window_shorter_than_the_attribution_window_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="dedup_window_s"):
        Settings(home=tmp_path, attribution_window_s=1800, dedup_window_s=600)
    env = {**os.environ, "CTRFLOW_HOME": str(tmp_path), "CTRFLOW_DEDUP_WINDOW_S": "600"}
    cli = [sys.executable, "-c", "from orchestration.cli import main; main()"]
    cmd = [*cli, "features", "build", "--from-file", str(tmp_path / "log.jsonl")]
    done = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
    assert done.returncode == 2
    errors = [line for line in done.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and "dedup_window_s (600) must be at least attribution_window_s" in errors[0]
    assert "Traceback" not in done.stderr
