"""Online feature lookup latency (p50/p99) for 1 and 100 entities, SQLite and (when reachable) Redis.

The store is filled through ``push_latest`` exactly as the streaming job does. Two figures per case:
Feast's own ``get_online_features`` (the reference) and ctrflow's ``online_features`` (the same call plus
filling missing values and Arrow typing, what serving uses); the ratio is the wrapper's overhead.

    python -m benchmarks.bench_online [--lookups 300] [--redis localhost:6379]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
from rich.console import Console

from benchmarks.machine import machine
from features.online import online_features, push_latest
from features.store import feature_store
from pipelines.settings import Settings
from tests.feature_store.synthetic_warehouse import write_synthetic_warehouse

console = Console(soft_wrap=True)


def percentiles(fn: Callable[[], object], lookups: int) -> tuple[float, float]:
    for _ in range(min(20, lookups)):  # warm caches (registry, connections)
        fn()
    times = []
    for _ in range(lookups):
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1000)
    return float(np.percentile(times, 50)), float(np.percentile(times, 99))


def redis_reachable(connection: str) -> bool:
    import redis

    host, _, rest = connection.partition(":")
    port = int(rest.split(",")[0] or 6379)
    try:
        return bool(redis.Redis(host=host, port=port, socket_connect_timeout=0.5).ping())
    except redis.exceptions.ConnectionError:
        return False


def run_profile(settings: Settings, users: int, items: int, lookups: int, rng: np.random.Generator) -> list:
    tables = write_synthetic_warehouse(settings, n_samples=10, n_users=users, n_items=items,
                                       feature_rows=max(users, items) * 2)
    for name in ("user_stats", "item_stats", "user_sequences"):
        push_latest(settings, name, tables[name])
    store = feature_store(settings)
    service = store.get_feature_service("sequence_ctr")
    rows = []
    for n in (1, 100):
        user = f"u{rng.integers(0, users)}"
        candidates = [f"i{k}" for k in rng.integers(0, items, n)]
        entity_rows = [{"user_id": user, "item_id": i} for i in candidates]

        def feast_call(rows_: list = entity_rows) -> object:
            return store.get_online_features(features=service, entity_rows=rows_,
                                             full_feature_names=True).to_dict()

        def ctrflow_call(user_: str = user, items_: list = candidates) -> object:
            return online_features(settings, user_, items_)

        ref = percentiles(feast_call, lookups)
        ours = percentiles(ctrflow_call, lookups)
        rows.append((settings.feast_profile, n, ref, ours))
        console.print(
            f"{settings.feast_profile:<8} {n:>3} entities  Feast p50 {ref[0]:6.2f} ms p99 {ref[1]:6.2f} ms"
            f" | ctrflow p50 {ours[0]:6.2f} ms p99 {ours[1]:6.2f} ms | p50 ratio {ours[0] / ref[0]:.2f}x"
        )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--users", type=int, default=10_000)
    parser.add_argument("--items", type=int, default=10_000)
    parser.add_argument("--lookups", type=int, default=300)
    parser.add_argument("--redis", default="localhost:6379", help="Redis host:port for the compose profile.")
    parser.add_argument("--out", type=Path, default=None, help="Append a Markdown result section here.")
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    results = []
    with tempfile.TemporaryDirectory(prefix="ctrflow-bench-") as tmp:
        results += run_profile(Settings(home=Path(tmp) / "sqlite"), args.users, args.items, args.lookups, rng)
        if redis_reachable(args.redis):
            compose = Settings(home=Path(tmp) / "redis", feast_profile="compose", redis_connection=args.redis)
            results += run_profile(compose, args.users, args.items, args.lookups, rng)
        else:
            console.print(f"Redis not reachable at {args.redis}: Redis profile skipped")
    if args.out:
        lines = [
            f"## {datetime.now(UTC):%Y-%m-%d %H:%M} UTC",
            "",
            f"Command: `python -m benchmarks.bench_online --lookups {args.lookups}`  ",
            f"Machine: {machine()}  ",
            f"Store: {args.users:,} users and {args.items:,} items pushed with `push_latest`; service "
            "`sequence_ctr` (18 stats + 3 sequences of up to 20 ids + length); 1 user x N candidate items.",
            "",
            "| online store | entities | Feast p50 / p99 (ms, reference) | ctrflow p50 / p99 (ms) "
            "| p50 ratio |",
            "|---|---|---|---|---|",
        ]
        for profile, n, ref, ours in results:
            store_name = "SQLite" if profile == "local" else "Redis"
            lines.append(f"| {store_name} | {n} | {ref[0]:.2f} / {ref[1]:.2f} | "
                         f"{ours[0]:.2f} / {ours[1]:.2f} | {ours[0] / ref[0]:.2f}x |")
        lines.append("")
        with args.out.open("a") as handle:
            handle.write("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
