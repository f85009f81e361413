"""Replay throughput vs the raw kafka-python producer on the same records, same broker, same run.

The reference sends the already-encoded JSON lines with their user keys, pre-loaded in memory, through
``make_producer`` (same producer settings), so it measures the client and broker alone. Replay does
the full job: read the file, validate every line once, route by type and key, produce, flush. Each
round uses fresh topics; rounds alternate so machine noise hits both sides alike.

    .venv/bin/python benchmarks/bench_ingest.py [--impressions 200000] [--rounds 5] [--no-write]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

from kafka.partitioner.default import murmur2

from pipelines.kafka import EmbeddedBroker, ensure_ctr_topics, make_producer
from pipelines.replay import replay
from pipelines.settings import Settings
from pipelines.simulator import SimulatorConfig, simulate

GOAL = 0.8
RESULTS = Path(__file__).parent / "results" / "ingest.md"


def _raw_producer_rate(bootstrap: str, settings: Settings, lines: list[bytes], keys: list[bytes],
                       is_click: list[bool], partitions: list[int] | None) -> float:
    """The reference: plain ``send`` of pre-encoded records (with precomputed partitions if given)."""
    ensure_ctr_topics(bootstrap, settings)
    impressions, clicks = settings.topic("impressions"), settings.topic("clicks")
    producer = make_producer(bootstrap)
    try:
        producer.partitions_for(impressions)
        producer.partitions_for(clicks)  # metadata fetched before the clock starts, as replay does
        started = time.perf_counter()
        if partitions is None:
            for value, key, click in zip(lines, keys, is_click, strict=True):
                producer.send(clicks if click else impressions, value=value, key=key)
        else:
            for value, key, click, part in zip(lines, keys, is_click, partitions, strict=True):
                producer.send(clicks if click else impressions, value=value, key=key, partition=part)
        producer.flush()
        return len(lines) / (time.perf_counter() - started)
    finally:
        producer.close()


def _replay_rate(bootstrap: str, settings: Settings, path: Path) -> tuple[float, dict]:
    """Replay with a producer connected beforehand, exactly like the reference's."""
    ensure_ctr_topics(bootstrap, settings)
    producer = make_producer(bootstrap)
    try:
        producer.partitions_for(settings.topic("impressions"))
        started = time.perf_counter()
        stats = replay(path, settings, bootstrap, producer=producer)
        return stats.read / (time.perf_counter() - started), stats.as_dict()
    finally:
        producer.close()


def _machine() -> str:
    cpu = subprocess.run(["nproc"], capture_output=True, text=True).stdout.strip()
    return f"{cpu}-core {platform.machine()} CPU, Python {platform.python_version()}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--impressions", type=int, default=200_000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--no-write", action="store_true", help=f"Do not write {RESULTS}.")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="ctrflow-bench-") as tmp:
        path = Path(tmp) / "log.jsonl"
        summary = simulate(SimulatorConfig(days=2, users=20_000, items=10_000, impressions=args.impressions,
                                           seed=1), path)
        lines = path.read_bytes().splitlines()
        parsed = [json.loads(line) for line in lines]
        keys = [r["user_id"].encode() for r in parsed]
        is_click = [r["type"] == "click" for r in parsed]
        del parsed
        n_parts = Settings().topic_partitions
        partitions = [(murmur2(k) & 0x7FFFFFFF) % n_parts for k in keys]
        rows: list[tuple[float, float, float]] = []
        with EmbeddedBroker() as broker:
            for i in range(args.rounds):
                home = Path(tmp) / "home"
                raw = _raw_producer_rate(broker.bootstrap, Settings(home=home, topic_prefix=f"raw{i}"),
                                         lines, keys, is_click, None)
                raw_part = _raw_producer_rate(broker.bootstrap, Settings(home=home, topic_prefix=f"rawp{i}"),
                                              lines, keys, is_click, partitions)
                rep_settings = Settings(home=home, topic_prefix=f"rep{i}")
                rate, stats = _replay_rate(broker.bootstrap, rep_settings, path)
                assert stats["produced"] == len(lines) and stats["dead_lettered"] == 0, stats
                rows.append((raw, raw_part, rate))
                print(f"round {i + 1}: raw producer {raw:,.0f} rec/s, raw with partitions {raw_part:,.0f} "
                      f"rec/s, replay {rate:,.0f} rec/s (ratio {rate / raw:.2f})", flush=True)

    ratio = statistics.median(r[2] / r[0] for r in rows)
    strict_ratio = statistics.median(r[2] / r[1] for r in rows)
    verdict = "meets" if ratio >= GOAL else "misses"
    print(f"records: {len(lines):,} ({summary.impressions:,} impressions, {summary.clicks:,} clicks)")
    print(f"median ratio replay / raw producer: {ratio:.2f} ({verdict} the goal of >= {GOAL}x)")
    print(f"median ratio replay / raw producer with precomputed partitions: {strict_ratio:.2f}")
    if not args.no_write:
        _write_results(args, len(lines), rows, ratio, strict_ratio, verdict)


def _write_results(args: argparse.Namespace, n: int, rows: list[tuple[float, float, float]], ratio: float,
                   strict_ratio: float, verdict: str) -> None:
    now = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    table = "\n".join(
        f"| {i + 1} | {raw:,.0f} | {part:,.0f} | {rep:,.0f} | {rep / raw:.2f} | {rep / part:.2f} |"
        for i, (raw, part, rep) in enumerate(rows)
    )
    command = (f".venv/bin/python benchmarks/bench_ingest.py --impressions {args.impressions} "
               f"--rounds {args.rounds}")
    RESULTS.write_text(f"""# Ingest: replay throughput vs the raw kafka-python producer

- Command: `{command}`
- Machine: 2-core x86_64 CPU, 24 GiB, no GPU ({_machine()}; shared with other work, load average
  {os.getloadavg()[0]:.1f} at the end of the run, so single rounds are noisy: compare ratios within a round)
- Date: {now}
- Broker: embedded Tansu (in memory, loopback), {Settings().topic_partitions} partitions per topic,
  fresh topics for every run
- Records: {n:,} simulated events (canonical JSONL), keyed by user_id
- Reference A (the goal's reference): kafka-python `KafkaProducer.send(topic, value, key)` of the same
  pre-encoded values and keys held in memory (no file reading, no validation), same producer settings
  (`pipelines.kafka.make_producer`), then flush.
- Reference B (stricter): the same with the partition precomputed, as replay does from its per-user cache.
- Measured: `pipelines.replay.replay` on the file, its producer connected beforehand as for A: read,
  validate every line once (Arrow block check, exact per-line fallback), route by type and user key,
  produce, flush, check every delivery.

| round | A: raw producer (rec/s) | B: raw + partitions (rec/s) | replay (rec/s) | replay / A | replay / B |
|---|---|---|---|---|---|
{table}

**Median ratio replay / raw producer: {ratio:.2f}** ({verdict} the goal of >= {GOAL}x);
median ratio against the stricter reference B: {strict_ratio:.2f}.
""")
    print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
