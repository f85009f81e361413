"""The Feast online store: pushes from the streaming job, explicit-range materialization, and lookups.

Pushes go ONLINE only: Feast's offline push rewrites the whole Parquet file and fails for directory
sources, and the Beam job owns the offline Parquet anyway.
"""

from __future__ import annotations

from datetime import datetime

import pyarrow as pa
import pyarrow.compute as pc
from feast.data_source import PushMode

from features.feature_repo.definitions import (
    DEFAULT_SERVICE,
    SERVICE_VIEWS,
    VIEW_TABLES,
    feature_arrow_type,
    push_source_name,
    serving_feature_names,
    serving_service_name,
)
from features.normalize import normalize_features
from features.store import FeatureStoreNotReady, feature_service, feature_store
from pipelines import tables
from pipelines.settings import Settings
from pipelines.tables import ENTITY_KEYS

MAX_LOOKUP_ITEMS = 10_000


def latest_per_entity(table: str, frame: pa.Table, horizons: tables.StatHorizons) -> pa.Table:
    """The newest row (by event_time, then created) of each entity in a warehouse table frame."""
    if table not in ENTITY_KEYS:
        raise ValueError(
            f"table {table!r} is not pushed online; expected one of {sorted(ENTITY_KEYS)}"
            + (" (labelled_samples are training data, not features)" if table == "labelled_samples" else "")
        )
    schema = tables.table_schemas(horizons)[table]
    missing = [name for name in schema.names if name not in frame.column_names]
    if missing:
        raise ValueError(f"{table} frame lacks columns {missing}; it must follow pipelines.tables.{table}")
    frame = frame.select(schema.names).cast(schema)
    key = ENTITY_KEYS[table]
    if frame.column(key).null_count:
        raise ValueError(f"{table} frame has null {key} values")
    order = pc.sort_indices(
        frame, sort_keys=[(key, "ascending"), ("event_time", "ascending"), ("created", "ascending")]
    )
    ordered = frame.take(order)
    keys = ordered.column(key).combine_chunks()
    # The last row of each run of equal keys is that entity's newest.
    is_last = pc.not_equal(keys[:-1], keys[1:]) if len(keys) > 1 else pa.array([], pa.bool_())
    mask = pa.concat_arrays([is_last, pa.array([True])]) if len(keys) else pa.array([], pa.bool_())
    return ordered.filter(mask)


def push_latest(settings: Settings, table: str, frame: pa.Table) -> int:
    """Push the newest row per entity of a warehouse table frame to the online store; returns rows pushed.

    ``table`` is ``user_stats``, ``item_stats`` or ``user_sequences``; ``frame`` follows
    ``pipelines.tables.table_schemas(settings.horizons)[table]``.
    """
    latest = latest_per_entity(table, frame, settings.horizons)
    if latest.num_rows == 0:
        return 0
    store = feature_store(settings)
    store.push(push_source_name(table), latest.to_pandas(), to=PushMode.ONLINE)
    return latest.num_rows


def materialize_range(
    settings: Settings, start: datetime, end: datetime, views: list[str] | None = None
) -> None:
    """Load the newest feature rows in ``[start, end]`` from the warehouse into the online store.

    Explicit ranges on purpose: ``materialize-incremental`` on a first run starts at now - TTL and would
    skip replayed history.
    """
    if end <= start:
        raise ValueError(f"materialize window is empty: end {end} <= start {start}")
    names = views or list(VIEW_TABLES)
    empty = [v for v in names if not any((settings.warehouse_dir / VIEW_TABLES[v]).rglob("*.parquet"))]
    if empty:
        raise FeatureStoreNotReady(
            f"no warehouse Parquet for views {empty} under {settings.warehouse_dir}: "
            "run the feature job first"
        )
    feature_store(settings).materialize(start_date=start, end_date=end, feature_views=names)


def online_features(
    settings: Settings, user_id: str, item_ids: list[str], service: str = DEFAULT_SERVICE
) -> pa.Table:
    """What serving sees for one user and candidate items: one row per item, features filled like training.

    Columns: ``user_id``, ``item_id``, the service's ``<view>__<feature>`` columns and the candidate
    views' (``item_attributes__category``). This is Feast's own lookup, the reference the serving stub's
    direct reads are tested against.
    """
    if service not in SERVICE_VIEWS:
        raise ValueError(f"unknown feature service {service!r}; expected one of {sorted(SERVICE_VIEWS)}")
    if not user_id:
        raise ValueError("user_id must be non-empty")
    if not item_ids or len(item_ids) > MAX_LOOKUP_ITEMS:
        raise ValueError(f"need 1..{MAX_LOOKUP_ITEMS} item ids, got {len(item_ids)}")
    rows = [{"user_id": user_id, "item_id": item} for item in item_ids]
    result = feature_store(settings).get_online_features(
        features=feature_service(settings, serving_service_name(service)), entity_rows=rows,
        full_feature_names=True,
    ).to_dict()
    horizons = settings.horizons
    columns = serving_feature_names(service, horizons)
    table = pa.table({
        name: pa.array(result[name], feature_arrow_type(name, horizons) if "__" in name else pa.string())
        for name in ["user_id", "item_id", *columns]
    })
    return normalize_features(table, columns, horizons)
