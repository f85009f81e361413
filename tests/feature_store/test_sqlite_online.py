"""The batched SQLite online store: same rows as Feast's own, served back exactly (real Feast, SQLite)."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pytest
from feast import RepoConfig
from feast.infra.online_stores.sqlite import SqliteOnlineStore

from features.feature_repo.definitions import VIEW_TABLES, view_features
from features.online import latest_per_entity, materialize_range, online_features, push_latest
from features.sqlite_online import BatchedSqliteOnlineStore
from features.store import REPO_DIR, feature_store, online_path, render_feature_store_yaml, repo_config_dict
from pipelines.settings import Settings
from pipelines.tables import ENTITY_KEYS

from .synthetic_warehouse import T0_MS, write_synthetic_warehouse

N_USERS, N_ITEMS = 6, 8


def _warehouse(settings: Settings, rows: int, seed: int = 7) -> dict[str, pa.Table]:
    return write_synthetic_warehouse(settings, n_samples=10, n_users=N_USERS, n_items=N_ITEMS,
                                     feature_rows=rows, seed=seed)


def _served_by_entity(settings: Settings) -> dict[str, dict]:
    """Every user's and item's online features, keyed by entity id (``<view>__<feature>`` columns)."""
    users = [f"u{k}" for k in range(N_USERS)]
    items = [f"i{k}" for k in range(N_ITEMS)]
    served: dict[str, dict] = {}
    for user in users:
        rows = online_features(settings, user, items).to_pylist()
        served[user] = rows[0]
        for row in rows:
            served[row["item_id"]] = row
    return served


def _assert_serves_newest(settings: Settings, tables: dict[str, pa.Table]) -> None:
    served = _served_by_entity(settings)
    for view, table in VIEW_TABLES.items():
        latest = latest_per_entity(table, tables[table], settings.horizons)
        key = ENTITY_KEYS[table]
        assert latest.num_rows > 0
        for row in latest.to_pylist():
            for feature in view_features(view, settings.horizons):
                assert served[row[key]][f"{view}__{feature}"] == pytest.approx(row[feature]), (view, feature)


def test_store_config_selects_the_batched_store(tmp_path: Path) -> None:
    store = feature_store(Settings(home=tmp_path / "home"))
    assert type(store.provider.online_store) is BatchedSqliteOnlineStore


def test_push_serves_every_feature_of_every_view_and_newer_pushes_replace(tmp_path: Path) -> None:
    settings = Settings(home=tmp_path / "home")
    first = _warehouse(settings, 40)
    for table in VIEW_TABLES.values():
        assert push_latest(settings, table, first[table]) > 0
    _assert_serves_newest(settings, first)

    # Newer rows (a day later, different values) for the same entities replace the served ones.
    second = _warehouse(Settings(home=tmp_path / "other"), 40, seed=99)
    later = {}
    for table in VIEW_TABLES.values():
        frame = second[table]
        shifted = pc.add(frame.column("event_time"), pa.scalar(timedelta(days=10)))
        later[table] = frame.set_column(frame.schema.get_field_index("event_time"), "event_time", shifted)
        push_latest(settings, table, later[table])
    _assert_serves_newest(settings, later)


def _stored_rows(path: Path, table: str) -> list[tuple]:
    with sqlite3.connect(path) as conn:
        return conn.execute(
            f'SELECT entity_key, feature_name, value, value_text, event_ts, created_ts FROM "{table}" '
            "ORDER BY entity_key, feature_name"
        ).fetchall()


def test_batched_write_stores_exactly_what_feasts_sqlite_store_stores(tmp_path: Path) -> None:
    settings = Settings(home=tmp_path / "home")
    tables = _warehouse(settings, 30)
    for table in VIEW_TABLES.values():
        push_latest(settings, table, tables[table])
    store = feature_store(settings)
    stock_path = tmp_path / "stock.db"
    stock_config = RepoConfig(**{**repo_config_dict(settings), "online_store": {"type": "sqlite",
                                                                                "path": str(stock_path)}})
    stock = SqliteOnlineStore()
    views = store.list_feature_views()
    stock.update(stock_config, [], views, [], [], partial=False)
    for view in views:
        frame = latest_per_entity(VIEW_TABLES[view.name], tables[VIEW_TABLES[view.name]], settings.horizons)
        rows = store.provider._prep_rows_to_write_for_ingestion(view, frame.to_pandas())
        stock.online_write_batch(stock_config, view, rows, None)
        name = f"{store.project}_{view.name}"
        assert _stored_rows(online_path(settings), name) == _stored_rows(stock_path, name)
        assert len(_stored_rows(stock_path, name)) == frame.num_rows * len(view.features)


def test_materialize_range_writes_through_the_batched_store(tmp_path: Path) -> None:
    settings = Settings(home=tmp_path / "home")
    tables = _warehouse(settings, 40)
    start = datetime.fromtimestamp(T0_MS / 1000, UTC) - timedelta(days=2)
    materialize_range(settings, start, start + timedelta(days=10))
    _assert_serves_newest(settings, tables)


def test_rendered_feature_store_yaml_loads_in_the_feast_cli(tmp_path: Path) -> None:
    settings = Settings(home=tmp_path / "home")
    feature_store(settings)
    rendered = render_feature_store_yaml(settings)
    assert "features.sqlite_online.BatchedSqliteOnlineStore" in rendered.read_text()
    feast = Path(sys.executable).with_name("feast")
    env = {**os.environ, "CTRFLOW_HOME": str(settings.home_dir)}
    plan = subprocess.run([str(feast), "-c", str(REPO_DIR), "-f", str(rendered), "plan"], cwd=tmp_path,
                          env=env, capture_output=True, text=True, timeout=120)
    assert plan.returncode == 0, plan.stderr
    assert "No changes to registry" in plan.stdout
