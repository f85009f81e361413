"""Daily training sets for the training benchmarks, built by the real pipeline.

``pipelines.simulator`` (drifting interests, true p_click per impression) writes a canonical log; the Beam
feature job backfills it (labelled samples, windowed stats, behaviour sequences); ``features.datasets``
builds one point-in-time training set per day. The benchmarks train on early days and test on later ones.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import pyarrow as pa

from features.manifest import DatasetManifest
from pipelines.settings import Settings


@dataclass
class DaySplit:
    days: list[pa.Table]  # one training-set table per day, oldest first
    manifest: DatasetManifest
    source: str

    @property
    def train(self) -> pa.Table:
        return pa.concat_tables(self.days[:-1])

    @property
    def test(self) -> pa.Table:
        return self.days[-1]

    @property
    def pretrain(self) -> pa.Table:
        return pa.concat_tables(self.days[:-2])

    @property
    def finetune(self) -> pa.Table:
        return self.days[-2]

    @property
    def train_days(self) -> str:
        return f"0–{len(self.days) - 2}"

    @property
    def test_day(self) -> int:
        return len(self.days) - 1


def simulated_days(settings: Settings, days: int, impressions: int, seed: int,
                   users: int = 20_000, items: int = 10_000) -> DaySplit:
    """Simulate `impressions` over `days`, run the Beam backfill and build one training set per day."""
    from features.datasets import build_dataset, load_dataset
    from pipelines.beam.job import run_file
    from pipelines.simulator import SimulatorConfig, simulate

    started = time.perf_counter()
    config = SimulatorConfig(days=days, users=users, items=items, impressions=impressions, seed=seed)
    log = settings.home_dir / "simulated.parquet"
    log.parent.mkdir(parents=True, exist_ok=True)
    simulate(config, log)
    run_file(settings, log)
    first = datetime.fromisoformat(config.start).replace(tzinfo=UTC)
    tables: list[pa.Table] = []
    manifest: DatasetManifest | None = None
    for day in range(days):
        built = build_dataset(settings, first + timedelta(days=day), first + timedelta(days=day + 1))
        table, manifest = load_dataset(settings, built.name)
        tables.append(table)
    source = (
        f"pipelines.simulator ({days} days, {users} users, {items} items, {impressions} impressions, "
        f"daily interest drift {config.daily_drift}, seed {seed}) → Beam backfill "
        "(pipelines.beam.job.run_file)"
        f" → features.datasets.build_dataset per day; built in {time.perf_counter() - started:.0f}s"
    )
    return DaySplit(tables, manifest, source)
