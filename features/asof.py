"""The fast path for point-in-time joins: one DuckDB ASOF JOIN per feature view over the warehouse Parquet.

It reproduces Feast's ``get_historical_features`` semantics exactly (a test proves both give the same rows
and values): for each sample at time ``t`` take the entity's feature row with the greatest
``event_time <= t`` (ties broken by the greatest ``created``), and only if ``event_time >= t - ttl``.
Missing values get ``feature_default`` inside the query, the same rule every other path applies.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import duckdb
import pyarrow as pa

from features.feature_repo.definitions import (
    SERVICE_VIEWS,
    VIEW_TABLES,
    build_definitions,
    feature_default,
    view_features,
)
from pipelines.settings import Settings
from pipelines.tables import ENTITY_KEYS

ROW_ID = "_row"


def _quote(identifier: str) -> str:
    return '"' + identifier.replace('"', '""') + '"'


def parquet_glob(directory: Path) -> str:
    """DuckDB glob over every Parquet file of a date-partitioned warehouse table."""
    return str(directory / "**" / "*.parquet").replace("'", "''")


def _view_relation_sql(settings: Settings, view: str) -> str:
    """The view's rows, deduplicated to one per (entity, event_time): the one created last."""
    key = ENTITY_KEYS[VIEW_TABLES[view]]
    columns = ", ".join(_quote(c) for c in [key, "event_time", *view_features(view, settings.horizons)])
    source = parquet_glob(settings.warehouse_dir / VIEW_TABLES[view])
    return (
        f"SELECT {columns} FROM read_parquet('{source}', hive_partitioning = false) "
        f"QUALIFY row_number() OVER (PARTITION BY {key}, event_time ORDER BY created DESC) = 1"
    )


def _sql_default(feature: str) -> str:
    # features.normalize's fill rule (feature_default), applied inside the query where it is cheapest;
    # join_features' normalize pass then finds no nulls and no type to cast, and returns at once.
    default = feature_default(feature)
    if default is None:
        return "NULL"
    if isinstance(default, list):
        return "[]::BIGINT[]"
    return repr(float(default)) if isinstance(default, float) else str(int(default))


def asof_join_sql(settings: Settings, service: str, samples_name: str) -> str:
    """SQL selecting ``_row`` and every ``<view>__<feature>`` of ``service`` for the registered samples."""
    return asof_views_sql(settings, SERVICE_VIEWS[service], samples_name)


def asof_views_sql(settings: Settings, view_names: Sequence[str], samples_name: str) -> str:
    """SQL selecting ``_row`` and every ``<view>__<feature>`` of the views for the registered samples."""
    views = build_definitions(settings).views
    selects, joins = [f"s.{ROW_ID}"], []
    for n, view in enumerate(view_names):
        alias = f"v{n}"
        key = ENTITY_KEYS[VIEW_TABLES[view]]
        ttl_s = int(views[view].ttl.total_seconds())
        fresh = f"{alias}.event_time >= s.event_time - INTERVAL '{ttl_s} seconds'"
        for feature in view_features(view, settings.horizons):
            value = f"CASE WHEN {fresh} THEN {alias}.{_quote(feature)} END"
            selects.append(f"COALESCE({value}, {_sql_default(feature)}) AS {_quote(f'{view}__{feature}')}")
        joins.append(
            f"ASOF LEFT JOIN ({_view_relation_sql(settings, view)}) {alias} "
            f"ON s.{key} = {alias}.{key} AND s.event_time >= {alias}.event_time"
        )
    return f"SELECT {', '.join(selects)} FROM {samples_name} s {' '.join(joins)} ORDER BY s.{ROW_ID}"


def asof_features(settings: Settings, entities: pa.Table, service: str) -> pa.Table:
    """Feature columns for ``entities`` (``_row``, ``user_id``, ``item_id``, ``event_time``), by ``_row``."""
    return asof_view_features(settings, entities, SERVICE_VIEWS[service])


def asof_view_features(settings: Settings, entities: pa.Table, view_names: Sequence[str]) -> pa.Table:
    """``asof_features`` for any views (e.g. a service's plus the candidate views serving reads)."""
    with duckdb.connect() as con:
        con.register("samples", entities)
        return con.sql(asof_views_sql(settings, view_names, "samples")).to_arrow_table()
