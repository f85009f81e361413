"""Online push throughput: Feast's stock SQLite online store vs ctrflow's batched one, same rows, same run.

Each round pushes the newest row per entity of user_stats, item_stats and user_sequences exactly as the
streaming job does (``latest_per_entity`` then ``FeatureStore.push(..., to=ONLINE)``) into a fresh store
of each kind, alternating the kinds. Reported: the median push time of all three tables, and how much of
it is the online store's ``online_write_batch`` (the rest is Feast's DataFrame -> Arrow -> proto
conversion, the same for both stores).

    python -m benchmarks.bench_online_push [--entities 10000] [--rounds 3] [--out FILE]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import pyarrow as pa
from feast import FeatureStore, RepoConfig
from feast.data_source import PushMode
from rich.console import Console
from rich.progress import track

from benchmarks.machine import machine
from features.feature_repo.definitions import VIEW_TABLES, push_source_name
from features.online import latest_per_entity
from features.sqlite_online import STORE_TYPE
from features.store import REPO_DIR, apply_repo, repo_config_dict
from pipelines.settings import Settings
from tests.feature_store.synthetic_warehouse import write_synthetic_warehouse

console = Console(soft_wrap=True)
STORES = {"Feast SqliteOnlineStore (reference)": "sqlite",
          "ctrflow BatchedSqliteOnlineStore": STORE_TYPE}


def fresh_store(home: Path, online_type: str) -> FeatureStore:
    settings = Settings(home=home)
    settings.feast_dir.mkdir(parents=True, exist_ok=True)
    config_dict = repo_config_dict(settings)
    config_dict["online_store"] = {"type": online_type, "path": str(settings.feast_dir / "online.db")}
    config = RepoConfig(**config_dict)
    config.repo_path = REPO_DIR
    store = FeatureStore(config=config)
    apply_repo(store, settings)
    return store


def timed_push(store: FeatureStore, frames: dict[str, pa.Table]) -> tuple[float, float]:
    """Seconds to push every frame, and the part of it spent in the online store's write."""
    online_store = store.provider.online_store
    write_s = 0.0
    inner = online_store.online_write_batch

    def write(*args: object, **kwargs: object) -> None:
        nonlocal write_s
        started = time.perf_counter()
        inner(*args, **kwargs)
        write_s += time.perf_counter() - started

    online_store.online_write_batch = write
    started = time.perf_counter()
    for table, frame in frames.items():
        store.push(push_source_name(table), frame.to_pandas(), to=PushMode.ONLINE)
    return time.perf_counter() - started, write_s


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--entities", type=int, default=10_000, help="Users and items (each).")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--out", type=Path, default=None, help="Append a Markdown result section here.")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="ctrflow-bench-") as tmp:
        settings = Settings(home=Path(tmp) / "data")
        tables = write_synthetic_warehouse(settings, n_samples=10, n_users=args.entities,
                                           n_items=args.entities, feature_rows=args.entities * 3)
        frames = {t: latest_per_entity(t, tables[t], settings.horizons) for t in VIEW_TABLES.values()}
        rows = {t: f.num_rows for t, f in frames.items()}
        results: dict[str, list[tuple[float, float]]] = {name: [] for name in STORES}
        for round_ in track(range(args.rounds), description="push rounds", console=console):
            for name, online_type in STORES.items():
                store = fresh_store(Path(tmp) / f"{online_type}-{round_}", online_type)
                results[name].append(timed_push(store, frames))
    medians = {name: (statistics.median(r[0] for r in runs), statistics.median(r[1] for r in runs))
               for name, runs in results.items()}
    (ref_name, ref), (ours_name, ours) = medians.items()
    total_rows = sum(rows.values())
    for name, (total, write) in medians.items():
        console.print(f"{name:<38} push {total:6.3f} s ({total_rows / total:8,.0f} rows/s), "
                      f"online_write_batch {write:6.3f} s")
    console.print(f"speed-up of the whole push {ref[0] / ours[0]:.2f}x, "
                  f"of the store write {ref[1] / ours[1]:.2f}x")
    if args.out:
        lines = [
            f"## {datetime.now(UTC):%Y-%m-%d %H:%M} UTC",
            "",
            f"Command: `python -m benchmarks.bench_online_push --entities {args.entities} "
            f"--rounds {args.rounds}`  ",
            f"Machine: {machine()}  ",
            f"Rows pushed per round: {rows} ({total_rows:,} entities; 9 + 9 + 4 features per row); "
            f"median of {args.rounds} rounds, fresh store each round, kinds alternating.",
            "",
            "| online store | push of 3 tables (s) | rows/s | of which online_write_batch (s) |",
            "|---|---|---|---|",
        ]
        for name, (total, write) in medians.items():
            lines.append(f"| {name} | {total:.3f} | {total_rows / total:,.0f} | {write:.3f} |")
        lines += ["", f"Ratio {ours_name} vs {ref_name}: whole push {ref[0] / ours[0]:.2f}x faster, "
                  f"store write {ref[1] / ours[1]:.2f}x faster.", ""]
        with args.out.open("a") as handle:
            handle.write("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
