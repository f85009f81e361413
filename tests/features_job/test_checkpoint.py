"""The checkpoint is never silently misused: another log, an old format, other statistics horizons, a
damaged file or state, and a missing warehouse part file are each refused with one line naming the way out
(--reset)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from features.datasets import build_dataset
from features_job.helpers import read_table
from orchestration.cli import app
from pipelines.beam import state as st
from pipelines.beam.job import (
    JobConfig,
    LogMismatch,
    MissingParts,
    reset_checkpoint,
    run_file,
    run_kafka,
)
from pipelines.beam.sinks import HorizonsMismatch
from pipelines.events import encode_event
from pipelines.kafka import EmbeddedBroker, ensure_ctr_topics, make_producer
from pipelines.replay import replay
from pipelines.settings import Settings
from pipelines.simulator import SimulatorConfig, simulate

runner = CliRunner()


def _cli(settings: Settings, *args: str, debug: bool = False, env: dict[str, str] | None = None):
    env = {"CTRFLOW_TOPIC_PREFIX": settings.topic_prefix, "CTRFLOW_TOPIC_PARTITIONS": "2", **(env or {})}
    base = ["--home", str(settings.home), "--bootstrap", str(settings.kafka_bootstrap)]
    return runner.invoke(app, [*(["--debug"] if debug else []), *base, *args], env=env)


def _one_line_error(result, *words: str) -> str:
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert "Traceback" not in result.output
    for word in words:
        assert word in lines[0], lines[0]
    return lines[0]


def _checkpoint_path(settings: Settings) -> Path:
    return st.job_dir(settings.checkpoints_dir, settings.topic_prefix) / st.CHECKPOINT_FILE


def test_a_checkpoint_is_refused_against_another_log(settings: Settings, small_log: Path, tmp_path: Path):
    """A restarted in-memory broker holds a different, longer log: resuming would skip its records."""
    other_log = tmp_path / "other.parquet"
    simulate(SimulatorConfig(days=3, users=40, items=80, impressions=8_000, seed=11), other_log)
    with EmbeddedBroker() as first:
        before = settings.model_copy(update={"kafka_bootstrap": first.bootstrap, "topic_partitions": 2})
        replay(small_log, before, first.bootstrap)
        assert run_kafka(before, final=True).balanced
    checkpoint = _checkpoint_path(settings)
    with EmbeddedBroker() as second:  # same cluster id ("ctrflow"), new topics, another log
        after = before.model_copy(update={"kafka_bootstrap": second.bootstrap})
        stats = replay(other_log, after, second.bootstrap)
        with pytest.raises(LogMismatch, match="--reset") as refused:
            run_kafka(after, final=True)
        assert str(checkpoint) in str(refused.value) and "topic" in str(refused.value)

        # A broker that reports no topic ids: the fingerprint of the last committed record tells.
        data = json.loads(checkpoint.read_text())
        checkpoint.write_text(json.dumps({**data, "cluster_id": None, "topic_ids": {}}))
        with pytest.raises(LogMismatch, match="record before offset"):
            run_kafka(after, final=True)
        _one_line_error(_cli(after, "features", "build", "--from-kafka", "--final", "--no-online"), "--reset")

        # A checkpoint of the format before log identities is refused the same way...
        old = {k: data[k] for k in ("batch_seq", "offsets", "max_event_times", "watermark_ms",
                                    "last_created_ms", "state_dir", "final")}  # fmt: skip
        checkpoint.write_text(json.dumps({**old, "version": 1}))
        _one_line_error(_cli(after, "features", "verify"), "format 1", "--reset", str(checkpoint))
        # ...and --reset rebuilds from the new log alone, no row of the old one left (found by footer).
        assert reset_checkpoint(after) > 0
        rebuilt = run_kafka(after, final=True)
    assert rebuilt.balanced and rebuilt.consumed == stats.produced
    assert read_table(after.home, "labelled_samples").num_rows == stats.impressions


def _tiny_job(settings: Settings) -> Path:
    """A committed checkpoint with state (held events) from a few records."""
    ensure_ctr_topics(settings.kafka_bootstrap, settings)
    producer = make_producer(settings.kafka_bootstrap)
    t0 = 1_767_600_000_000
    for i, (user, partition) in enumerate([("u1", 0), ("u2", 1), ("u1", 0)]):
        event = {"type": "impression", "impression_id": f"i{i}", "request_id": f"r{i}", "user_id": user,
                 "item_id": "x", "position": 0, "event_time": t0 + i * 1000}  # fmt: skip
        topic = settings.topic("impressions")
        producer.send(topic, value=encode_event(event), key=user.encode(), partition=partition)
    producer.flush()
    producer.close()
    assert run_kafka(settings).batches
    return st.job_dir(settings.checkpoints_dir, settings.topic_prefix)


@pytest.fixture
def kafka_settings(settings: Settings, broker) -> Settings:
    return settings.model_copy(update={"kafka_bootstrap": broker.bootstrap, "topic_partitions": 2})


def _garble_pages(path: Path) -> None:
    """Overwrite every byte between the leading magic and the footer: the footer still reads."""
    data = bytearray(path.read_bytes())
    footer = int.from_bytes(data[-8:-4], "little") + 8
    data[4 : len(data) - footer] = b"\x5a" * (len(data) - footer - 4)
    path.write_bytes(bytes(data))


@pytest.mark.parametrize(
    "damage", ["not json", "offset of the wrong type", "corrupt state file", "corrupt state pages"]
)
def test_a_damaged_checkpoint_is_a_one_line_error(kafka_settings: Settings, damage: str, monkeypatch) -> None:
    directory = _tiny_job(kafka_settings)
    path = directory / st.CHECKPOINT_FILE
    data = json.loads(path.read_text())
    if damage == "not json":
        path.write_text(path.read_text()[:40])
        named, why = path, "not valid JSON"
    elif damage == "offset of the wrong type":
        key = next(iter(data["offsets"]))
        path.write_text(json.dumps({**data, "offsets": {**data["offsets"], key: str(data["offsets"][key])}}))
        named, why = path, "not a non-negative integer"
    elif damage == "corrupt state file":
        named = sorted((directory / data["state_dir"]).rglob("*.parquet"))[0]
        named.write_bytes(b"PAR1 this is not parquet")
        why = "corrupt"
    else:  # every page of the state is read before a run starts
        held = (directory / data["state_dir"] / "held").glob("*.parquet")
        named = max(held, key=lambda p: p.stat().st_size)
        _garble_pages(named)
        why = "corrupt"
    build = ["features", "build", "--from-kafka", "--no-online"]
    _one_line_error(_cli(kafka_settings, *build), str(named), why, "--reset")
    _one_line_error(_cli(kafka_settings, "features", "verify", "--json"), str(named))
    debug = _cli(kafka_settings, *build, debug=True)
    assert debug.exit_code == 2 and "Traceback" in debug.stderr and str(named) in debug.stderr
    with pytest.raises(st.CheckpointError):
        run_kafka(kafka_settings)
    if damage == "corrupt state pages":  # damage that appears after the run's check: a shard finds it
        monkeypatch.setattr(st, "check_state", lambda *args: None)
        with pytest.raises(st.CheckpointError, match=r"corrupt \(.*\); rebuild with .*--reset`$"):
            run_kafka(kafka_settings, final=True)
        monkeypatch.undo()
    if damage == "not json":  # the way out that the message names works (here even without a manifest)
        fixed = _cli(kafka_settings, *build, "--reset", "--final")
        assert fixed.exit_code == 0, fixed.output


def test_a_deleted_part_file_is_found_by_verify_and_by_the_next_run(
    kafka_settings: Settings, small_log: Path
) -> None:
    replay(small_log, kafka_settings, kafka_settings.kafka_bootstrap)
    run_kafka(kafka_settings, final=True, config=JobConfig(max_records_per_partition=700))
    ok = _cli(kafka_settings, "features", "verify", "--json")
    assert ok.exit_code == 0, ok.output
    report = json.loads(ok.stdout)
    files = sorted(kafka_settings.warehouse_dir.rglob("*.parquet"))
    assert report["ok"] and report["missing"] == [] and report["parts"] == len(files) > 10

    victim = files[len(files) // 2]
    victim.unlink()
    rel = str(victim.relative_to(kafka_settings.warehouse_dir))
    bad = _cli(kafka_settings, "features", "verify", "--json")
    assert json.loads(bad.stdout)["missing"] == [rel]
    _one_line_error(bad, f"1 of {len(files)}", rel, "--reset")
    with pytest.raises(MissingParts, match="--reset"):
        run_kafka(kafka_settings, final=True)
    _one_line_error(_cli(kafka_settings, "features", "build", "--from-kafka", "--no-online"), rel)

    rebuilt = _cli(kafka_settings, "features", "build", "--from-kafka", "--final", "--no-online", "--reset")
    assert rebuilt.exit_code == 0, rebuilt.output
    again = json.loads(_cli(kafka_settings, "features", "verify", "--json").stdout)
    assert again["ok"] and again["parts"] == len(list(kafka_settings.warehouse_dir.rglob("*.parquet")))


def test_other_statistics_horizons_are_refused_until_the_warehouse_is_rebuilt(
    kafka_settings: Settings, small_log: Path
) -> None:
    """The job's state holds as much history as the longest sliding window and the tables the built
    horizons' columns: a changed CTRFLOW_STAT_WINDOWS must not be mixed in, by streaming or by a file
    build, until --reset rebuilds everything with the new ones."""
    _tiny_job(kafka_settings)
    changed = {"CTRFLOW_STAT_WINDOWS": "2h,3d", "CTRFLOW_STAT_DECAYED_WINDOWS": "90d"}
    other = kafka_settings.model_copy(update={"stat_windows": "2h,3d", "stat_decayed_windows": "90d"})
    build = ["features", "build", "--from-kafka", "--final", "--no-online"]

    def cli(*args: str):
        return _cli(kafka_settings, *args, env=changed)

    was_and_asked = "sliding 1h,24h,7d, decayed 30d.*sliding 2h,3d, decayed 90d"
    with pytest.raises(st.CheckpointError, match=was_and_asked):
        run_kafka(other)
    _one_line_error(cli(*build), "statistics horizons", "--reset")
    _one_line_error(cli("features", "verify"), "statistics horizons")
    with pytest.raises(HorizonsMismatch, match="1h,24h,7d,30d,all.*2h,3d,90d,all"):
        run_file(other, small_log)  # a file build into the same warehouse is refused the same way

    rebuilt = cli(*build, "--reset")
    assert rebuilt.exit_code == 0, rebuilt.output
    columns = read_table(kafka_settings.home, "user_stats").column_names
    assert [c for c in columns if c.startswith("ctr_")] == ["ctr_2h", "ctr_3d", "ctr_90d", "ctr_all"]
    with pytest.raises(st.CheckpointError, match="sliding 2h,3d"):  # and now the old ones are refused
        run_kafka(kafka_settings)
    with pytest.raises(HorizonsMismatch, match="set CTRFLOW_STAT_WINDOWS"):  # also by training-set builds
        build_dataset(kafka_settings)
