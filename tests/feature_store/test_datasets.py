"""Training sets: Feast path == DuckDB ASOF fast path == a brute-force point-in-time reference."""

from __future__ import annotations

import json
from collections import defaultdict
from datetime import UTC, datetime, timedelta

import pyarrow as pa
import pytest

from features.datasets import (
    DatasetError,
    build_dataset,
    join_features,
    load_dataset,
    read_samples,
)
from features.feature_repo.definitions import (
    CTR_PRIOR,
    SERVICE_VIEWS,
    VIEW_TABLES,
    build_definitions,
    feature_default,
    view_features,
)
from features.manifest import DatasetManifest
from pipelines import tables
from pipelines.settings import Settings
from pipelines.tables import ENTITY_KEYS

from .synthetic_warehouse import DAY_MS, IDENTITY_ORIGIN_MS, T0_MS, write_synthetic_warehouse, write_table

T0 = datetime.fromtimestamp(T0_MS / 1000, UTC)


def _ts(ms: int) -> datetime:
    return datetime.fromtimestamp(ms / 1000, UTC)


def _stale_user_rows() -> dict[str, pa.Table]:
    """User 'u-stale': stats 8 days before its sample (beyond the 7 d TTL), sequence 8 days (within 30 d)."""
    user_stats = tables.stats_schema("user_id", tables.DEFAULT_HORIZONS)
    stats = {name: [0] for name in user_stats.names}
    stats.update(user_id=["u-stale"], event_time=[_ts(T0_MS - 8 * DAY_MS)], created=[_ts(T0_MS)])
    stats.update(impressions_7d=[42], clicks_7d=[4], ctr_7d=[0.2])
    sample = {name: [None] for name in tables.LABELLED_SAMPLES.names}
    sample.update(impression_id=["imp-stale"], user_id=["u-stale"], item_id=["i0"], label=[1],
                  event_time=[_ts(T0_MS + 3600_000)], created=[_ts(T0_MS + 10**9)])
    seq = dict(user_id=["u-stale"], event_time=[_ts(T0_MS - 8 * DAY_MS)], seq_item_ids=[[5, 6]],
               seq_category_ids=[[1, 2]], seq_event_times=[[T0_MS - 9 * DAY_MS, T0_MS - 8 * DAY_MS - 1]],
               seq_length=[2], created=[_ts(T0_MS)])
    return {
        "user_stats": pa.table(stats).cast(user_stats),
        "labelled_samples": pa.table(sample).cast(tables.LABELLED_SAMPLES),
        "user_sequences": pa.table(seq, schema=tables.USER_SEQUENCES),
    }


@pytest.fixture(scope="module")
def warehouse(tmp_path_factory: pytest.TempPathFactory) -> tuple[Settings, dict[str, pa.Table]]:
    settings = Settings(home=tmp_path_factory.mktemp("datasets") / "home")
    written = write_synthetic_warehouse(settings, n_samples=300, n_users=12, n_items=15, feature_rows=300)
    for name, extra in _stale_user_rows().items():
        write_table(settings, name, extra, part="part-stale")
        written[name] = pa.concat_tables([written[name], extra])
    return settings, written


def _reference(written: dict[str, pa.Table], samples: pa.Table, service: str) -> dict[str, list]:
    """Brute force over the raw rows: newest (event_time, created) row with t - ttl <= event_time <= t."""
    views = build_definitions(Settings()).views
    expected: dict[str, list] = defaultdict(list)
    for view in SERVICE_VIEWS[service]:
        key = ENTITY_KEYS[VIEW_TABLES[view]]
        by_entity: dict[str, list[dict]] = defaultdict(list)
        for row in written[VIEW_TABLES[view]].to_pylist():
            by_entity[row[key]].append(row)
        ttl = views[view].ttl
        for sample in samples.select([key, "event_time"]).to_pylist():
            t = sample["event_time"]
            candidates = [r for r in by_entity[sample[key]] if t - ttl <= r["event_time"] <= t]
            best = max(candidates, key=lambda r: (r["event_time"], r["created"]), default=None)
            for feature in view_features(view, tables.DEFAULT_HORIZONS):
                value = feature_default(feature) if best is None else best[feature]
                expected[f"{view}__{feature}"].append(value)
    return expected


@pytest.mark.parametrize("engine", ["asof", "feast"])
def test_join_matches_brute_force_point_in_time_reference(warehouse, engine: str) -> None:
    settings, written = warehouse
    samples = read_samples(settings)
    joined = join_features(settings, samples, "sequence_ctr", engine)
    expected = _reference(written, samples, "sequence_ctr")
    assert joined.num_rows == samples.num_rows == written["labelled_samples"].num_rows
    assert joined.select(samples.column_names).equals(samples)
    for name, values in expected.items():
        got = joined.column(name).to_pylist()
        if name.split("__")[1].startswith("ctr_"):
            assert got == pytest.approx(values), name
        else:
            assert got == values, name


def test_feast_and_fast_path_give_identical_rows_types_and_values(warehouse) -> None:
    settings, _ = warehouse
    samples = read_samples(settings)
    for service in SERVICE_VIEWS:
        fast = join_features(settings, samples, service, "asof")
        feast = join_features(settings, samples, service, "feast")
        assert fast.schema.equals(feast.schema), service
        assert fast.equals(feast), service


def test_no_feature_comes_from_the_future_and_ttl_is_honoured(warehouse) -> None:
    settings, _ = warehouse
    joined = join_features(settings, read_samples(settings), "sequence_ctr", "asof").to_pylist()
    for row in joined:
        # Synthetic stats encode their row's validity time (s since IDENTITY_ORIGIN_MS) in impressions_1h,
        # and sequence times end before their row's time: nothing may lie after the sample.
        t_s = row["event_time"].timestamp() - IDENTITY_ORIGIN_MS / 1000
        if row["user_stats__ctr_24h"] != CTR_PRIOR or row["user_stats__impressions_1h"]:
            assert row["user_stats__impressions_1h"] <= t_s
            assert row["user_stats__impressions_1h"] >= t_s - 7 * 86_400
        sample_ms = row["event_time"].timestamp() * 1000
        assert all(ms < sample_ms for ms in row["user_sequence__seq_event_times"])
    stale = next(r for r in joined if r["impression_id"] == "imp-stale")
    # Stats 8 days old are past the 7-day TTL: defaults. The 8-day-old sequence is within its 30 days.
    assert stale["user_stats__impressions_7d"] == 0 and stale["user_stats__ctr_7d"] == CTR_PRIOR
    assert stale["user_sequence__seq_item_ids"] == [5, 6]


def test_build_writes_parquet_manifest_and_latest(warehouse) -> None:
    settings, written = warehouse
    start, end = T0 + timedelta(days=1), T0 + timedelta(days=2)
    built = build_dataset(settings, start=start, end=end)
    data, manifest = load_dataset(settings)
    assert manifest == built.manifest == DatasetManifest.from_json((built.path / "manifest.json").read_text())
    assert json.loads((built.path / "manifest.json").read_text())["format"] == 1
    assert (settings.datasets_dir / "LATEST").read_text().strip() == built.name == manifest.name
    times = written["labelled_samples"].column("event_time").to_pylist()
    assert data.num_rows == manifest.rows == sum(start <= t < end for t in times) > 0
    assert all(start <= t < end for t in data.column("event_time").to_pylist())
    assert (manifest.window_start, manifest.window_end) == (start.isoformat(), end.isoformat())
    assert manifest.label_rate == pytest.approx(sum(data.column("label").to_pylist()) / data.num_rows)
    assert data.schema.names[: len(tables.LABELLED_SAMPLES)] == tables.LABELLED_SAMPLES.names
    assert manifest.columns.sequence["item_ids"] in data.schema.names
    assert set(manifest.columns.dense) < set(data.schema.names)
    assert manifest.has_p_click is True
    # The Feast path writes the same content: the same hash.
    again = build_dataset(settings, start=start, end=end, engine="feast")
    assert again.manifest.content_hash == manifest.content_hash
    assert load_dataset(settings, built.name)[1].name == built.name


def test_empty_window_and_unknown_inputs_are_clear_errors(warehouse) -> None:
    settings, _ = warehouse
    with pytest.raises(DatasetError, match="no labelled samples in window"):
        build_dataset(settings, start=T0 - timedelta(days=30), end=T0 - timedelta(days=29))
    with pytest.raises(DatasetError, match="window is empty"):
        read_samples(settings, start=T0, end=T0)
    with pytest.raises(DatasetError, match="unknown feature service"):
        join_features(settings, read_samples(settings), "nope")
    with pytest.raises(DatasetError, match="not found"):
        load_dataset(settings, "ds-missing")
