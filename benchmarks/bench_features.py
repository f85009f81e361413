"""Feature-job throughput, each against a reference measured in the same run.

1. End to end: Kafka -> Beam -> Parquet + online push (events/s), vs raw kafka-python consumption of
   the same records (goal: >= 0.5x).
2. Backfill from a Parquet log (events/s, goal: >= 500k/s on 2 cores), vs a plain pyarrow read of the
   same file.

    .venv/bin/python -m benchmarks.bench_features [--events 300000] [--backfill-events 1000000]
        [--workers N] [--shards N] [--piece-records N] [--rounds 3] [--no-online] [--out PATH]

Job settings default to the job's own defaults (JobConfig): what `ctrflow features build` runs.
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import pyarrow.parquet as pq

from benchmarks.machine import machine
from pipelines.beam.job import JobConfig, run_file, run_kafka
from pipelines.kafka import EmbeddedBroker, high_watermarks, make_consumer, partitions_for
from pipelines.replay import replay
from pipelines.settings import Settings
from pipelines.simulator import SimulatorConfig, simulate

BACKFILL_TARGET = 500_000
E2E_GOAL = 0.5
RESULTS = Path(__file__).parent / "results" / "features.md"


def simulated_log(path: Path, impressions: int, days: int) -> Path:
    users = max(1_000, impressions // 100)
    simulate(
        SimulatorConfig(days=days, users=users, items=max(500, users // 2), impressions=impressions, seed=11),
        path,
    )
    return path


def raw_consume(bootstrap: str, topics: list[str]) -> tuple[int, float]:
    """Every record of the topics with a bare kafka-python consumer (assign + seek), as fast as it goes."""
    consumer = make_consumer(bootstrap)
    parts = [tp for t in topics for tp in partitions_for(consumer, t)]
    end = high_watermarks(consumer, parts)
    started = time.perf_counter()
    consumer.assign(parts)
    consumer.seek_to_beginning(*parts)
    n, target = 0, sum(end.values())
    while n < target:
        for records in consumer.poll(timeout_ms=500).values():
            n += len(records)
    seconds = time.perf_counter() - started
    consumer.close()
    return n, seconds


def _median_round(rounds: list[dict], key: str) -> dict:
    """The round with the median ``key``, plus every round's ``key`` for the spread."""
    ordered = sorted(rounds, key=lambda r: r[key])
    return {**ordered[len(ordered) // 2], "all": [r[key] for r in rounds]}


def bench_end_to_end(work: Path, impressions: int, config: JobConfig, online: bool, rounds: int) -> dict:
    """Each round: a fresh job (new home, no checkpoint) over the same topics, between two raw reads."""
    log = simulated_log(work / "e2e.parquet", impressions, days=3)
    results = []
    with EmbeddedBroker() as broker:
        first = Settings(home=work / "home-e2e-0", kafka_bootstrap=broker.bootstrap, topic_prefix="bench")
        stats = replay(log, first, broker.bootstrap)
        topics = [first.topic("impressions"), first.topic("clicks")]
        raw_consume(broker.bootstrap, topics)  # warm-up: the broker's first read of the segments
        for i in range(rounds):
            settings = first.model_copy(update={"home": work / f"home-e2e-{i}"})
            sink = None
            if online:
                from features.online import push_latest
                from features.store import feature_store

                feature_store(settings)  # one-time Feast apply of a fresh home: setup, not per-event work

                def sink(table, frame, settings=settings):
                    return push_latest(settings, table, frame)

            before = raw_consume(broker.bootstrap, topics)
            report = run_kafka(settings, final=True, online_sink=sink, config=config)
            after = raw_consume(broker.bootstrap, topics)
            assert report.balanced and report.consumed == stats.produced
            raw_rate = (before[0] + after[0]) / (before[1] + after[1])
            job_rate = report.consumed / report.seconds
            results.append(
                {
                    "events": report.consumed,
                    "raw_rate": raw_rate,
                    "job_rate": job_rate,
                    "ratio": job_rate / raw_rate,
                    "batches": len(report.batches),
                    "online_rows": sum(sum(b.online_rows.values()) for b in report.batches),
                    "job_seconds": report.seconds,
                    "pipeline_s": sum(b.pipeline_s for b in report.batches),
                    "online_s": sum(b.online_s for b in report.batches),
                }
            )
            print(f"  end to end round {i + 1}: {job_rate:,.0f}/s vs raw {raw_rate:,.0f}/s = "
                  f"{job_rate / raw_rate:.2f}x", flush=True)  # fmt: skip
    return _median_round(results, "ratio")


def bench_backfill(work: Path, impressions: int, config: JobConfig, rounds: int) -> dict:
    log = simulated_log(work / "backfill.parquet", impressions, days=7)
    results = []
    for i in range(rounds):
        started = time.perf_counter()
        rows = pq.read_table(log).num_rows
        read_rate = rows / (time.perf_counter() - started)
        report = run_file(Settings(home=work / f"home-backfill-{i}"), log, config=config)
        rate = report.consumed / report.seconds
        results.append({"events": report.consumed, "rate": rate, "read_rate": read_rate,
                        "seconds": report.seconds, "rows": report.rows})  # fmt: skip
        print(f"  backfill round {i + 1}: {rate:,.0f} events/s", flush=True)
    return _median_round(results, "rate")


def _machine() -> str:
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    return f"{machine()} (load average at the end: {load})"


def results_markdown(args: argparse.Namespace, e2e: dict, bf: dict) -> str:
    command = (
        f".venv/bin/python -m benchmarks.bench_features --events {args.events} "
        f"--backfill-events {args.backfill_events} --workers {args.workers} --shards {args.shards} "
        f"--piece-records {args.piece_records} --rounds {args.rounds}"
        + (" --no-online" if args.no_online else "")
    )
    push = "" if args.no_online else " + online push"
    rows = [
        f"| Kafka -> Beam -> Parquet{push} | {e2e['events']:,} | {e2e['job_rate']:,.0f} "
        f"| raw kafka-python consume {e2e['raw_rate']:,.0f}/s | {e2e['ratio']:.2f}x | >= {E2E_GOAL}x |",
        f"| Backfill from a Parquet log | {bf['events']:,} | {bf['rate']:,.0f} "
        f"| pyarrow read of the file {bf['read_rate']:,.0f}/s "
        f"| {bf['rate'] / BACKFILL_TARGET:.2f}x of 500k/s | >= {BACKFILL_TARGET:,}/s |",
    ]
    return "\n".join(
        [
            "# Feature job benchmark",
            "",
            f"- Command: `{command}`",
            f"- Machine: {_machine()}",
            f"- Date: {datetime.now(UTC).strftime('%Y-%m-%d %H:%M UTC')}",
            "",
            "| measure | events | rate (events/s) | reference in the same run | ratio | goal |",
            "|---|---:|---:|---|---:|---|",
            *rows,
            "",
            f"End to end: {e2e['batches']} micro-batch(es) in {e2e['job_seconds']:.1f} s (Beam run "
            f"{e2e['pipeline_s']:.1f} s, online push {e2e['online_s']:.1f} s), "
            f"{e2e['online_rows']:,} rows pushed online (Feast registry applied before timing).",
            f"Backfill: {bf['seconds']:.1f} s; rows written: {bf['rows']}.",
            "",
            f"Median of {args.rounds} rounds (each round measures its own reference). All rounds: end-to-end "
            f"ratio {', '.join(f'{x:.2f}x' for x in e2e['all'])}; backfill "
            f"{', '.join(f'{x:,.0f}/s' for x in bf['all'])}.",
            "",
        ]
    )


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--events", type=int, default=300_000, help="Impressions in the end-to-end log.")
    parser.add_argument("--backfill-events", type=int, default=1_000_000, help="Impressions, backfill log.")
    defaults = JobConfig()
    parser.add_argument("--workers", type=int, default=defaults.num_workers, help="Beam workers (threads).")
    parser.add_argument("--shards", type=int, default=defaults.num_shards, help="Entity shards.")
    parser.add_argument(
        "--piece-records", type=int, default=defaults.piece_size, help="Records per parallel read."
    )
    parser.add_argument("--rounds", type=int, default=3, help="Rounds of each; the median is reported.")
    parser.add_argument("--no-online", action="store_true", help="Skip the Feast online push.")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="ctrflow-bench-features-"))
    try:
        config = JobConfig(num_workers=args.workers, num_shards=args.shards, piece_size=args.piece_records)
        e2e = bench_end_to_end(work, args.events, config, not args.no_online, args.rounds)
        print(
            f"end to end: {e2e['events']} events, job {e2e['job_rate']:,.0f}/s vs raw kafka-python "
            f"{e2e['raw_rate']:,.0f}/s = {e2e['ratio']:.2f}x (goal >= {E2E_GOAL}x)",
            flush=True,
        )
        bf = bench_backfill(work, args.backfill_events, config, args.rounds)
        print(
            f"backfill: {bf['events']} events in {bf['seconds']:.2f}s = {bf['rate']:,.0f}/s "
            f"({bf['rate'] / BACKFILL_TARGET:.2f}x the {BACKFILL_TARGET:,}/s target; "
            f"pyarrow read of the same file {bf['read_rate']:,.0f}/s)",
            flush=True,
        )
    finally:
        shutil.rmtree(work, ignore_errors=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(results_markdown(args, e2e, bf))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
