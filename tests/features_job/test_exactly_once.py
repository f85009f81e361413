"""Exactly once: a feature job killed with SIGKILL mid-run and restarted ends with the tables of a
clean run, row for row; rerunning the same offset range changes nothing."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from features_job.helpers import TABLE_KEYS, comparable, read_table
from pipelines.beam import state as st
from pipelines.beam.job import JobConfig, reset_checkpoint, run_kafka
from pipelines.replay import replay
from pipelines.settings import Settings

BATCH, PIECE = 400, 200
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
