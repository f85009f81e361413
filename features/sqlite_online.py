"""Feast's SQLite online store with a batched write: one ``executemany`` per pushed batch.

Feast 0.67's ``SqliteOnlineStore.online_write_batch`` runs one ``INSERT ... ON CONFLICT`` statement per
feature per entity (22 statements for one user_stats row), so the statement overhead, not SQLite, bounds
the streaming job's online push. This store builds the same rows and hands them to SQLite in one
``executemany`` inside one transaction. Table layout, upsert semantics (the newest write wins, like
Feast's), reads, ``update``, ``plan``, ``teardown`` and ``materialize`` are Feast's own, inherited.

Use it in ``feature_store.yaml`` as
``online_store: {type: features.sqlite_online.BatchedSqliteOnlineStore, path: ...}``: Feast imports the
class path and looks for ``<class name>Config`` in the same module.
"""

from __future__ import annotations

import logging
import sqlite3
from collections.abc import Callable, Sequence
from datetime import datetime
from typing import Any, Literal

from feast.feature_view import FeatureView
from feast.infra.key_encoding_utils import serialize_entity_key
from feast.infra.online_stores.helpers import extract_text_and_num
from feast.infra.online_stores.sqlite import (
    SqliteOnlineStore,
    SqliteOnlineStoreConfig,
    _quote_id,
    _table_id,
)
from feast.protos.feast.types.EntityKey_pb2 import EntityKey as EntityKeyProto
from feast.protos.feast.types.Value_pb2 import Value as ValueProto
from feast.repo_config import RepoConfig
from feast.utils import to_naive_utc

STORE_TYPE = "features.sqlite_online.BatchedSqliteOnlineStore"

_log = logging.getLogger(__name__)

FeatureRow = tuple[EntityKeyProto, dict[str, ValueProto], datetime, datetime | None]


class BatchedSqliteOnlineStoreConfig(SqliteOnlineStoreConfig):
    """Feast's SQLite online store options, selected by this module's class path."""

    type: Literal["features.sqlite_online.BatchedSqliteOnlineStore"] = STORE_TYPE  # type: ignore[assignment]


def _adapt_timestamp(value: datetime | None) -> Any:
    # Feast stores timestamps through the sqlite3 adapter its module registers for datetime; applying that
    # same adapter once per entity (instead of once per feature inside execute) keeps the stored values
    # identical to the stock store's.
    if value is None:
        return None
    adapt = sqlite3.adapters.get((datetime, sqlite3.PrepareProtocol))
    naive = to_naive_utc(value)
    return adapt(naive) if adapt else naive


def upsert_statement(table_name: str, with_value_num: bool) -> str:
    """Feast's SQLite upsert for one (entity, feature) row, same columns and conflict rule."""
    columns = ["entity_key", "feature_name", "value", "value_text"]
    if with_value_num:
        columns.append("value_num")
    columns += ["event_ts", "created_ts"]
    updates = ", ".join(f"{c} = excluded.{c}" for c in columns if c not in ("entity_key", "feature_name"))
    return (
        f"INSERT INTO {_quote_id(table_name)} ({', '.join(columns)}) "
        f"VALUES ({', '.join('?' * len(columns))}) "
        f"ON CONFLICT(entity_key, feature_name) DO UPDATE SET {updates};"
    )


def upsert_rows(data: Sequence[FeatureRow], key_version: int, with_value_num: bool) -> list[tuple]:
    """One parameter tuple per (entity, feature), in the column order of ``upsert_statement``."""
    rows: list[tuple] = []
    for entity_key, values, event_ts, created_ts in data:
        key = serialize_entity_key(entity_key, entity_key_serialization_version=key_version)
        event = _adapt_timestamp(event_ts)
        created = _adapt_timestamp(created_ts)
        for feature_name, value in values.items():
            text, number = extract_text_and_num(value, with_value_num)
            if with_value_num:
                rows.append((key, feature_name, value.SerializeToString(), text, number, event, created))
            else:
                rows.append((key, feature_name, value.SerializeToString(), text, event, created))
    return rows


class BatchedSqliteOnlineStore(SqliteOnlineStore):
    """``SqliteOnlineStore`` whose ``online_write_batch`` writes a whole batch with one ``executemany``."""

    def online_write_batch(
        self,
        config: RepoConfig,
        table: FeatureView,
        data: list[FeatureRow],
        progress: Callable[[int], Any] | None,
    ) -> None:
        if config.online_store.vector_enabled:
            # Vector columns need Feast's per-feature serialization; ctrflow's views have none.
            super().online_write_batch(config, table, data, progress)
            return
        conn = self._get_conn(config)
        table_name = _table_id(config.project, table, config.registry.enable_online_feature_view_versioning)
        with_value_num = False
        if getattr(config.online_store, "enable_openai_compatible_store", False):
            with_value_num = self._check_table_has_value_num(conn, table_name)
            if not with_value_num:
                _log.warning("enable_openai_compatible_store is set but table %r has no value_num column; "
                             "run `feast apply` to add it. Writing without value_num.", table_name)
        rows = upsert_rows(data, config.entity_key_serialization_version, with_value_num)
        with conn:
            conn.executemany(upsert_statement(table_name, with_value_num), rows)
        if progress:
            progress(len(data))
