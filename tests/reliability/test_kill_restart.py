"""Reliability: a log mixed with malformed records, a streaming job SIGKILLed at random points and
restarted, and nothing lost, nothing counted twice.

The log (simulated, seeded) is produced straight into the embedded broker with every kind of bad record
the parser knows (undecodable bytes, bad JSON, missing fields, wrong types, absurd timestamps, unknown
types, oversized and null records...), duplicate impression ids and orphan clicks, at random positions of
random partitions. ``ctrflow features stream`` runs in a subprocess and is killed with SIGKILL a few times
(seeded delays after a commit, so some kills land mid-batch), restarted each time, then a bounded final
build finishes the log. The scenario runs once per module; each test checks one guarantee on its result.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from features_job.helpers import comparable, read_table

from pipelines.beam import state as st
from pipelines.beam.attribution import DUPLICATE_REASON
from pipelines.beam.job import JobConfig, RunReport, run_file, run_kafka
from pipelines.events import MAX_ID_LENGTH, MAX_RECORD_BYTES, encode_event
from pipelines.kafka import EmbeddedBroker, ensure_ctr_topics, make_producer
from pipelines.settings import Settings
from pipelines.simulator import SimulatorConfig, simulate

SEED = 20_261_202
KILLS = 3
PARTITIONS = 2
BATCH_RECORDS, PIECE_RECORDS = 80, 80
ROOT = Path(__file__).resolve().parents[2]
LOG = SimulatorConfig(days=2, users=25, items=40, impressions=700, seed=7, long_click_share=0.1)
MINUTE_MS = 60_000

_IMP = {"type": "impression", "impression_id": "bad", "request_id": "r", "user_id": "u", "item_id": "i",
        "position": 1, "event_time": 1_767_600_000_000}  # fmt: skip
_CLK = {
    "type": "click",
    "impression_id": "bad",
    "user_id": "u",
    "item_id": "i",
    "event_time": 1_767_600_000_000,
}


def _ms(table: pa.Table, column: str = "event_time") -> list[int]:
    return table[column].cast(pa.timestamp("ms")).cast(pa.int64()).to_pylist()


def _without(record: dict, name: str) -> bytes:
    return encode_event({k: v for k, v in record.items() if k != name})


def _with(record: dict, **changes: object) -> bytes:
    return json.dumps({**record, **changes}, separators=(",", ":")).encode()


# (kind, raw value, a word the dead letter's reason must contain): every reason events.py gives.
MALFORMED: list[tuple[str, bytes | None, str]] = [
    ("undecodable bytes", b'{"type":"click","user_id":"\xff\xfe"}', "UTF-8"),
    ("binary garbage", bytes(range(128, 256)), "UTF-8"),
    ("bad JSON", b"{not json", "invalid JSON"),
    ("truncated JSON", encode_event(_IMP)[:-9], "invalid JSON"),
    ("empty record", b"", "invalid JSON"),
    ("null record", None, "null value"),
    ("JSON array", b"[1,2,3]", "JSON object"),
    ("JSON number", b"42", "JSON object"),
    ("unknown type", _with(_IMP, type="view"), "unknown type"),
    ("missing type", _without(_IMP, "type"), "unknown type"),
    ("missing impression_id", _without(_IMP, "impression_id"), "impression_id"),
    ("missing user_id", _without(_CLK, "user_id"), "user_id"),
    ("missing item_id", _without(_IMP, "item_id"), "item_id"),
    ("missing event_time", _without(_CLK, "event_time"), "event_time"),
    ("missing request_id", _without(_IMP, "request_id"), "request_id"),
    ("missing position", _without(_IMP, "position"), "position"),
    ("event_time as string", _with(_CLK, event_time="2026-01-05"), "event_time"),
    ("user_id as number", _with(_IMP, user_id=17), "user_id"),
    ("position as bool", _with(_IMP, position=True), "position"),
    ("p_click as string", _with(_IMP, p_click="high"), "p_click"),
    ("negative timestamp", _with(_CLK, event_time=-5), "outside"),
    ("timestamp in seconds", _with(_IMP, event_time=1_767_600_000), "outside"),
    ("timestamp in year 2500", _with(_IMP, event_time=16_725_225_600_000), "outside"),
    ("empty id", _with(_IMP, impression_id=""), "characters"),
    ("oversized id", _with(_CLK, item_id="x" * (MAX_ID_LENGTH + 1)), "characters"),
    ("position out of range", _with(_IMP, position=99_999), "position"),
    ("hour out of range", _with(_IMP, hour=24), "hour"),
    ("p_click above 1", _with(_IMP, p_click=1.5), "probability"),
    ("oversized record", _with(_IMP, page="p" * MAX_RECORD_BYTES), "exceeds"),
]


@dataclass
class Scenario:
    settings: Settings
    clean_home: Path
    good_impressions: set[tuple[str, str, int]]  # (user, impression id, event time)
    bad: dict[tuple[str, int, int], str]  # (topic, partition, offset) -> word its reason must contain
    orphans: set[tuple[str, str, int]]  # orphan clicks: (user, impression id, event time)
    produced: dict[str, int] = field(default_factory=dict)  # "topic|partition" -> records
    kills_inside_a_batch: int = 0
    final_report: RunReport | None = None


def _log_with_duplicates(path: Path, rng: random.Random) -> tuple[list[dict], int]:
    """Simulated events plus re-sent impressions (same time, or minutes later) and orphan clicks."""
    simulate(LOG, path)
    records = pq.read_table(path).to_pylist()
    impressions = [r for r in records if r["type"] == "impression"]
    copies = []
    for k, original in enumerate(rng.sample(impressions, 30)):
        copies.append(
            {**original, "event_time": original["event_time"] + (k % 3) * rng.randint(1, 90) * MINUTE_MS}
        )
    orphans = []
    for k, clicked in enumerate(rng.sample(impressions, 12)):
        click = {"type": "click", "impression_id": f"orphan-{k}", "user_id": clicked["user_id"]}
        orphans.append({**click, "item_id": clicked["item_id"], "event_time": clicked["event_time"] + 1_000})
    return sorted(records + copies + orphans, key=lambda r: r["event_time"]), len(copies)


def _produce(settings: Settings, records: list[dict], rng: random.Random) -> tuple[dict, dict]:
    """Good records in time order, keyed by user (as replay does), bad ones at random places; returns
    (where each good record went: index -> (topic, partition, offset), where each bad one went)."""
    ensure_ctr_topics(settings.kafka_bootstrap, settings)
    producer = make_producer(settings.kafka_bootstrap, linger_ms=0)
    slots = sorted(rng.sample(range(len(records)), len(MALFORMED)))
    sent: list[tuple[str, object, object]] = []
    bad_at = dict(zip(slots, MALFORMED, strict=True))
    for i, record in enumerate(records):
        if i in bad_at:
            kind, raw, word = bad_at[i]
            topic = settings.topic(rng.choice(("impressions", "clicks")))
            future = producer.send(topic, value=raw, key=b"bad", partition=rng.randrange(PARTITIONS))
            sent.append(("bad", word, future))
        topic = settings.topic("impressions" if record["type"] == "impression" else "clicks")
        sent.append(
            ("good", i, producer.send(topic, value=encode_event(record), key=record["user_id"].encode()))
        )
    producer.flush()
    producer.close()
    good, bad = {}, {}
    for what, tag, future in sent:
        meta = future.get(timeout=30)
        where = (meta.topic, meta.partition, meta.offset)
        if what == "bad":
            bad[where] = tag
        else:
            good[tag] = where
    return good, bad


def _kill_at_random_point(
    settings: Settings, job_directory: Path, rng: random.Random, mid_batch: bool
) -> bool:
    """Start `ctrflow features stream`, wait for it to commit one more batch, then SIGKILL it: while the
    next batch writes its state (``mid_batch``) or a seeded moment later (mid-batch or idle). Returns
    whether the kill landed inside a batch, before its commit."""
    env = {
        **os.environ,
        "CTRFLOW_TOPIC_PREFIX": settings.topic_prefix,
        "CTRFLOW_TOPIC_PARTITIONS": str(PARTITIONS),
    }
    cmd = [
        sys.executable, "-c", "from orchestration.cli import main; main()",
        "--home", str(settings.home), "--bootstrap", settings.kafka_bootstrap,
        "features", "stream", "--no-online", "--poll-interval", "0.1", "--shards", "3",
        "--batch-records", str(BATCH_RECORDS), "--piece-records", str(PIECE_RECORDS),
        "--direct-num-workers", "2",
    ]  # fmt: skip
    before = st.load_checkpoint(job_directory).batch_seq
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def committed() -> int:
        return st.load_checkpoint(job_directory).batch_seq

    def writing() -> bool:  # the next batch's state directory exists before its commit
        return (job_directory / st.state_dir_name(committed() + 1)).exists()

    try:
        deadline = time.monotonic() + 60
        while proc.poll() is None and time.monotonic() < deadline and committed() <= before:
            time.sleep(0.02)
        if mid_batch:
            while proc.poll() is None and time.monotonic() < deadline and not writing():
                time.sleep(0.005)
        else:
            time.sleep(rng.uniform(0.0, 1.2))
        assert proc.poll() is None, "the stream job exited on its own"
        inside = writing()
        proc.send_signal(signal.SIGKILL)
        assert proc.wait(timeout=30) == -signal.SIGKILL
        return inside
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


@pytest.fixture(scope="module")
def scenario(tmp_path_factory: pytest.TempPathFactory) -> Scenario:
    rng = random.Random(SEED)
    work = tmp_path_factory.mktemp("reliability")
    records, n_copies = _log_with_duplicates(work / "log.parquet", rng)
    with EmbeddedBroker() as broker:
        settings = Settings(
            home=work / "home",
            topic_prefix="rel",
            kafka_bootstrap=broker.bootstrap,
            topic_partitions=PARTITIONS,
        )
        good_at, bad = _produce(settings, records, rng)
        # Which good records are duplicates: the rule's first occurrence (event time, then offset) wins.
        first: dict[tuple[str, str], tuple[int, int, int]] = {}
        good_impressions, orphans = set(), set()
        for i in sorted(good_at, key=lambda i: (records[i]["event_time"], good_at[i][1], good_at[i][2])):
            r = records[i]
            if r["type"] == "click":
                if r["impression_id"].startswith("orphan-"):
                    orphans.add((r["user_id"], r["impression_id"], r["event_time"]))
                continue
            key = (r["user_id"], r["impression_id"])
            if key in first and r["event_time"] - first[key][0] <= settings.dedup_window_s * 1000:
                bad[good_at[i]] = DUPLICATE_REASON
                continue
            first[key] = (r["event_time"], *good_at[i][1:])
            good_impressions.add((r["user_id"], r["impression_id"], r["event_time"]))
        assert sum(reason == DUPLICATE_REASON for reason in bad.values()) == n_copies
        produced: dict[str, int] = {}
        for topic, partition, _ in set(good_at.values()) | set(bad):  # duplicates are in both
            key = st.Checkpoint.key(topic, partition)
            produced[key] = produced.get(key, 0) + 1

        job_directory = st.job_dir(settings.checkpoints_dir, settings.topic_prefix)
        inside = [_kill_at_random_point(settings, job_directory, rng, k % 2 == 0) for k in range(KILLS)]
        report = run_kafka(
            settings,
            final=True,
            config=JobConfig(num_shards=3, max_records_per_partition=BATCH_RECORDS, piece_size=PIECE_RECORDS),
        )

    # The same good records, one shot from a file, without any kill: the tables to compare with.
    clean = Settings(home=work / "clean")
    path = work / "good.jsonl"
    path.write_bytes(b"".join(encode_event(records[i]) + b"\n" for i in sorted(good_at)))
    run_file(clean, path, config=JobConfig(num_shards=2))
    return Scenario(settings, clean.home, good_impressions, bad, orphans, produced, sum(inside), report)


def test_every_record_consumed_once_and_accounted_per_partition(scenario: Scenario) -> None:
    """consumed = accepted + dead_lettered per partition over all the killed and restarted runs:
    the committed offsets cover every record once, and the dead letters are exactly the bad ones."""
    assert scenario.kills_inside_a_batch >= 1  # at least one batch was cut short before its commit
    checkpoint = st.load_checkpoint(
        st.job_dir(scenario.settings.checkpoints_dir, scenario.settings.topic_prefix)
    )
    assert checkpoint.final and checkpoint.offsets == scenario.produced
    assert scenario.final_report is not None and scenario.final_report.balanced
    dead = read_table(scenario.settings.home, "dead_letters").to_pylist()
    for key, consumed in scenario.produced.items():
        topic, partition = key.rsplit("|", 1)
        dead_lettered = sum(d["source"] == topic and d["partition"] == int(partition) for d in dead)
        bad = sum(t == topic and p == int(partition) for t, p, _ in scenario.bad)
        accepted = consumed - dead_lettered
        assert dead_lettered == bad and accepted == consumed - bad, key


def test_every_bad_record_is_dead_lettered_with_its_reason(scenario: Scenario) -> None:
    dead = read_table(scenario.settings.home, "dead_letters").to_pylist()
    got = {(d["source"], d["partition"], d["offset"]): d["error"] for d in dead}
    assert len(got) == len(dead)  # no dead letter twice
    assert set(got) == set(scenario.bad)
    for where, word in scenario.bad.items():
        assert word in got[where], (where, got[where])
    kinds = {word for word in scenario.bad.values()}
    assert len(MALFORMED) >= 20 and DUPLICATE_REASON in kinds


def test_every_good_impression_exactly_once(scenario: Scenario) -> None:
    labelled = read_table(scenario.settings.home, "labelled_samples")
    users, ids = labelled["user_id"].to_pylist(), labelled["impression_id"].to_pylist()
    keys = list(zip(users, ids, _ms(labelled), strict=True))
    assert len(keys) == len(set(keys))
    assert set(keys) == scenario.good_impressions
    # ...and labelled as a run without kills labels them.
    assert comparable(labelled, ["impression_id"]) == comparable(
        read_table(scenario.clean_home, "labelled_samples"), ["impression_id"]
    )


def test_orphan_clicks_are_kept_aside_with_a_reason(scenario: Scenario) -> None:
    table = read_table(scenario.settings.home, "unattributed_clicks")
    aside = [{**r, "event_time": t} for r, t in zip(table.to_pylist(), _ms(table), strict=True)]
    orphans = [r for r in aside if r["impression_id"].startswith("orphan-")]
    assert {(r["user_id"], r["impression_id"], r["event_time"]) for r in orphans} == scenario.orphans
    assert {r["reason"] for r in orphans} == {"no_impression"}


# One row per natural key in every table.
KEYS = {
    "labelled_samples": ["user_id", "impression_id", "event_time"],
    "item_stats": ["item_id", "event_time"],
    "unattributed_clicks": ["user_id", "impression_id", "event_time", "reason"],
    "dead_letters": ["source", "partition", "offset"],
}
USER_KEYED = {"user_stats": ["user_id", "event_time"], "user_sequences": ["user_id", "event_time"]}


def _duplicated_keys(home: Path, table: str, keys: list[str]) -> list[tuple]:
    rows = read_table(home, table).select(keys).to_pylist()
    seen, twice = set(), []
    for row in rows:
        key = tuple(row.values())
        if key in seen:
            twice.append(key)
        seen.add(key)
    return twice


@pytest.mark.parametrize("table", sorted(KEYS))
def test_no_table_has_a_duplicated_row(scenario: Scenario, table: str) -> None:
    assert _duplicated_keys(scenario.settings.home, table, KEYS[table]) == []
    if table != "dead_letters":  # the clean run's dead letters are file lines, not Kafka offsets
        assert comparable(read_table(scenario.settings.home, table), KEYS[table]) == comparable(
            read_table(scenario.clean_home, table), KEYS[table]
        )


@pytest.mark.parametrize("table", sorted(USER_KEYED))
def test_user_keyed_tables_have_no_duplicated_row(scenario: Scenario, table: str) -> None:
    # KNOWN BUG, fixed on branch reliab-stream (not here): a restart after SIGKILL can re-emit the last
    # (user, event_time) row of the previous batch into user_stats / user_sequences. Whether a kill lands
    # where it shows depends on timing; until that branch is merged this is the one assertion that may fail.
    assert _duplicated_keys(scenario.settings.home, table, USER_KEYED[table]) == []
    assert comparable(read_table(scenario.settings.home, table), USER_KEYED[table]) == comparable(
        read_table(scenario.clean_home, table), USER_KEYED[table]
    )
