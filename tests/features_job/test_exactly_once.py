"""Exactly once: a feature job killed with SIGKILL mid-run and restarted ends with the tables of a
clean run, row for row; rerunning the same offset range changes nothing; a reset leaves no row of
the build it drops; one row per distinct (entity, event time) holds across runs."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow as pa
import pytest

from features_job.helpers import TABLE_KEYS, UNIQUE_KEYS, comparable, duplicate_keys, read_table
from pipelines.beam import state as st
from pipelines.beam.job import JobConfig, reset_checkpoint, run_kafka
from pipelines.events import encode_event
from pipelines.kafka import ensure_ctr_topics, make_producer
from pipelines.replay import replay
from pipelines.settings import Settings

BATCH, PIECE = 400, 200
# Fewer, larger batches where the scenario needs only a few batch boundaries.
FEW = JobConfig(max_records_per_partition=1_000, piece_size=500)
ROOT = Path(__file__).resolve().parents[2]


def _snapshot(home: Path) -> tuple[dict[str, list[dict]], set[str]]:
    tables = {name: comparable(read_table(home, name), keys) for name, keys in TABLE_KEYS.items()}
    files = {str(p.relative_to(home / "warehouse")) for p in (home / "warehouse").rglob("*.parquet")}
    return tables, files


def _kill_mid_batch(settings: Settings, job_directory: Path) -> int:
    """Start the CLI job in a subprocess and SIGKILL it while a micro-batch is being written."""
    env = {
        **os.environ,
        "CTRFLOW_TOPIC_PREFIX": settings.topic_prefix,
        "CTRFLOW_TOPIC_PARTITIONS": str(settings.topic_partitions),
    }
    cmd = [
        sys.executable, "-c", "from orchestration.cli import main; main()",
        "--home", str(settings.home), "--bootstrap", settings.kafka_bootstrap,
        "features", "build", "--from-kafka", "--final", "--no-online",
        "--batch-records", str(BATCH), "--piece-records", str(PIECE),
    ]  # fmt: skip
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    try:
        while time.monotonic() < deadline and proc.poll() is None:
            committed = st.load_checkpoint(job_directory).batch_seq
            # The next batch is under way once its state directory appears before its commit.
            if committed >= 2 and (job_directory / st.state_dir_name(committed + 1)).exists():
                proc.send_signal(signal.SIGKILL)
                break
            time.sleep(0.02)
    finally:
        if proc.poll() is None and time.monotonic() >= deadline:
            proc.kill()
        proc.wait()
    return proc.returncode


def test_killed_and_restarted_job_equals_clean_run(
    settings: Settings, broker, small_log: Path, tmp_path: Path
):
    killed = settings.model_copy(update={"kafka_bootstrap": broker.bootstrap, "topic_partitions": 2})
    stats = replay(small_log, killed, broker.bootstrap)
    config = JobConfig(max_records_per_partition=BATCH, piece_size=PIECE)

    clean = killed.model_copy(update={"home": tmp_path / "clean"})
    clean_report = run_kafka(clean, final=True, config=config)
    assert clean_report.consumed == stats.produced and len(clean_report.batches) >= 3

    job_directory = st.job_dir(killed.checkpoints_dir, killed.topic_prefix)
    assert _kill_mid_batch(killed, job_directory) == -signal.SIGKILL
    at_kill = st.load_checkpoint(job_directory)
    assert 2 <= at_kill.batch_seq < len(clean_report.batches) and not at_kill.final

    resumed = run_kafka(killed, final=True, config=config)
    assert resumed.balanced
    # Nothing read twice into the tables, nothing skipped: offsets resume at the last commit.
    assert sum(at_kill.offsets.values()) + resumed.consumed == stats.produced

    want_tables, want_files = _snapshot(clean.home)
    got_tables, got_files = _snapshot(killed.home)
    for name in TABLE_KEYS:
        assert got_tables[name] == want_tables[name], name
    for name in UNIQUE_KEYS:  # one row per distinct (entity, event time), across the restart
        assert duplicate_keys(killed.home, name) == [], name
    assert got_files == want_files  # same offset-range-named files: the killed batch was replaced

    # Rerunning the same ranges from scratch replaces files, never duplicates rows.
    reset_checkpoint(killed)
    again = run_kafka(killed, final=True, config=config)
    assert again.consumed == stats.produced
    assert _snapshot(killed.home) == (got_tables, got_files)

    # Again with another shard count: every file of the earlier layout is replaced, none left behind.
    reset_checkpoint(killed)
    run_kafka(
        killed, final=True, config=JobConfig(num_shards=3, max_records_per_partition=BATCH, piece_size=PIECE)
    )
    tables, files = _snapshot(killed.home)
    assert tables == got_tables
    parts = {Path(f).stem.rsplit(".", 1)[-1] for f in files if not f.startswith("dead_letters")}
    assert parts == {"s0000", "s0001", "s0002"}


def _kafka(settings: Settings, broker) -> Settings:
    return settings.model_copy(update={"kafka_bootstrap": broker.bootstrap, "topic_partitions": 2})


def test_reset_leaves_no_row_of_the_dropped_build(settings: Settings, broker, small_log: Path, tmp_path):
    """build, build --final (a flush batch named final-...), then --reset --final: the flush's files
    belong to the dropped checkpoint and must go, or its rows come back twice."""
    kafka = _kafka(settings, broker)
    replay(small_log, kafka, kafka.kafka_bootstrap)
    config = FEW
    run_kafka(kafka, config=config)
    flushed = run_kafka(kafka, final=True, config=config)
    assert [b.file_name for b in flushed.batches] == [f"final-{flushed.batches[0].batch_seq:08d}"]

    removed = reset_checkpoint(kafka)
    rebuilt = run_kafka(kafka, final=True, config=config)
    assert rebuilt.balanced and rebuilt.batches[-1].final

    clean = kafka.model_copy(update={"home": tmp_path / "clean"})
    run_kafka(clean, final=True, config=config)
    got, want = _snapshot(kafka.home), _snapshot(clean.home)
    assert got == want  # same rows and the same part files: nothing of the old build survived
    for name in UNIQUE_KEYS:
        assert duplicate_keys(kafka.home, name) == [], name
    assert removed > 0


def test_a_late_event_at_an_instant_already_written_adds_no_second_row(settings: Settings, broker):
    """A run ends with every partition caught up, so its watermark passes the last instant of each;
    the next run reads the rest of a request at that same instant: no second row for (user, time)."""
    kafka = _kafka(settings, broker)
    ensure_ctr_topics(kafka.kafka_bootstrap, kafka)
    producer = make_producer(kafka.kafka_bootstrap)
    t0 = 1_767_600_000_000

    def impression(iid: str, user: str, item: str, at: int, partition: int) -> None:
        event = {"type": "impression", "impression_id": iid, "request_id": f"r-{user}-{at}", "user_id": user,
                 "item_id": item, "position": len(iid), "event_time": at}  # fmt: skip
        topic = kafka.topic("impressions")
        producer.send(topic, value=encode_event(event), key=user.encode(), partition=partition)
        producer.flush()

    impression("a", "u1", "i1", t0, 0)
    impression("c", "u2", "i3", t0 + 60_000, 1)
    first = run_kafka(kafka)
    assert first.rows["user_stats"] == 1  # (u1, t0): behind the watermark of a caught-up log
    impression("bb", "u1", "i2", t0, 0)  # the same request, read by the next run
    run_kafka(kafka, final=True)
    producer.close()
    stats = read_table(kafka.home, "user_stats")
    micros = stats["event_time"].cast(pa.timestamp("us", tz="UTC")).cast(pa.int64()).to_pylist()
    points = zip(stats["user_id"].to_pylist(), (us // 1000 for us in micros), strict=True)
    assert sorted(points) == [("u1", t0), ("u2", t0 + 60_000)]
    assert sorted(r["impression_id"] for r in read_table(kafka.home, "labelled_samples").to_pylist()) == [
        "a",
        "bb",
        "c",
    ]
    for name in ("user_stats", "user_sequences", "item_stats"):
        assert duplicate_keys(kafka.home, name) == [], name


def test_a_batch_that_died_before_its_commit_leaves_no_file(
    settings: Settings, broker, small_log: Path, tmp_path: Path, monkeypatch
) -> None:
    """A final flush (named final-<seq>, no offset range) dies before its commit; the restart is not
    final, so it plans another batch under that seq: the dead flush's rows must not stay behind."""
    kafka = _kafka(settings, broker)
    replay(small_log, kafka, kafka.kafka_bootstrap)
    config = FEW
    run_kafka(kafka, config=config)

    def die(*args: object) -> None:
        raise RuntimeError("killed before the commit")

    monkeypatch.setattr(st, "commit_checkpoint", die)
    with pytest.raises(RuntimeError, match="killed"):
        run_kafka(kafka, final=True, config=config)
    monkeypatch.undo()
    warehouse = kafka.warehouse_dir
    assert list(warehouse.rglob("final-*.parquet"))  # the dead attempt wrote its files

    run_kafka(kafka, config=config)  # the restart: nothing new to read, not final
    assert not list(warehouse.rglob("final-*.parquet"))
    run_kafka(kafka, final=True, config=config)
    clean = kafka.model_copy(update={"home": tmp_path / "clean"})
    run_kafka(clean, final=True, config=config)
    assert _snapshot(kafka.home)[0] == _snapshot(clean.home)[0]
    for name in UNIQUE_KEYS:
        assert duplicate_keys(kafka.home, name) == [], name
