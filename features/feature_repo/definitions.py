"""Feast objects for ctrflow, built from the one settings object.

``build_definitions(settings)`` returns fresh objects whose FileSources point at absolute warehouse paths
(Feast resolves relative paths against the current directory, not the repository), so the same
definitions work from any directory and for any ``CTRFLOW_HOME``. ``repo.py`` in this folder exposes
them at module level for the ``feast`` CLI.

Feature names, sources and types follow ``pipelines.tables`` exactly (the Beam job writes those tables);
the statistics views' features follow the home's horizons (``Settings.horizons``), so every function
naming features takes them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import timedelta
from functools import cache

from feast import Entity, FeatureService, FeatureView, Field, FileSource, PushSource, ValueType
from feast.data_format import ParquetFormat
from feast.types import Array, FeastType, Float64, Int32, Int64, String

from features.services import DEFAULT_SERVICE, SERVICE_VIEWS
from pipelines import tables
from pipelines.settings import Settings

__all__ = ["DEFAULT_SERVICE", "SERVICE_VIEWS", "build_definitions"]

PROJECT = "ctrflow"


def stats_ttl(horizons: tables.StatHorizons) -> timedelta:
    """Stats rows are recomputed at every event of the entity; the longest sliding window bounds how
    stale a row may be before its numbers stop meaning anything."""
    return timedelta(seconds=horizons.longest_sliding_s)


# The behaviour sequence stays meaningful longer than the stats: a user's clicks from last month still
# describe their interests.
SEQUENCE_TTL = timedelta(days=30)
# An item's category rarely changes; a year bounds how long a catalogue entry of a vanished item counts.
ITEM_ATTRIBUTES_TTL = timedelta(days=365)

# Feature view name -> warehouse table it reads (the view of user_sequences is called user_sequence).
VIEW_TABLES: dict[str, str] = {
    "user_stats": "user_stats",
    "item_stats": "item_stats",
    "user_sequence": "user_sequences",
    "item_attributes": "item_attributes",
}
# Views serving reads beyond a training service's: the candidate's side fields, which training sets take
# from each labelled impression itself (no training service joins them).
CANDIDATE_VIEWS: tuple[str, ...] = ("item_attributes",)


_ARROW_TO_FEAST: dict[str, FeastType] = {
    "int32": Int32, "int64": Int64, "double": Float64, "list<item: int64>": Array(Int64), "string": String,
}  # fmt: skip


def _feature_fields(table: str, horizons: tables.StatHorizons) -> list[Field]:
    """A warehouse table's feature columns as Feast fields: everything but the entity and the times."""
    schema = tables.table_schemas(horizons)[table]
    skip = {tables.ENTITY_KEYS[table], "event_time", "created"}
    return [Field(name=f.name, dtype=_ARROW_TO_FEAST[str(f.type)]) for f in schema if f.name not in skip]


@cache
def _view_feature_names(view: str, horizons: tables.StatHorizons) -> tuple[str, ...]:
    return tuple(f.name for f in _feature_fields(VIEW_TABLES[view], horizons))


def view_features(view: str, horizons: tables.StatHorizons) -> list[str]:
    """Feature names of one view, in schema order."""
    return list(_view_feature_names(view, horizons))


@dataclass
class Definitions:
    """Every Feast object of the repository, ready for ``FeatureStore.apply``."""

    entities: dict[str, Entity]
    push_sources: dict[str, PushSource]
    views: dict[str, FeatureView]
    services: dict[str, FeatureService] = field(default_factory=dict)

    def all(self) -> list[object]:
        return [*self.entities.values(), *self.push_sources.values(), *self.views.values(),
                *self.services.values()]


def push_source_name(table: str) -> str:
    """Name of the PushSource the streaming job pushes a warehouse table's rows to."""
    return f"{table}_push"


def _file_source(settings: Settings, table: str) -> FileSource:
    return FileSource(
        name=f"{table}_parquet",
        # A directory of date=YYYY-MM-DD partitions; absolute so the cwd does not matter.
        path=str(settings.warehouse_dir / table),
        file_format=ParquetFormat(),
        timestamp_field="event_time",
        created_timestamp_column="created",
        description=f"Warehouse table {table} written by the Beam feature job.",
    )


def build_definitions(settings: Settings) -> Definitions:
    """Entities, sources, feature views and services over ``settings.warehouse_dir``."""
    horizons = settings.horizons
    ttl = stats_ttl(horizons)
    user = Entity(name="user", join_keys=["user_id"], value_type=ValueType.STRING,
                  description="A user (canonical string id).")
    item = Entity(name="item", join_keys=["item_id"], value_type=ValueType.STRING,
                  description="An item (canonical string id).")
    push_sources = {
        table: PushSource(name=push_source_name(table), batch_source=_file_source(settings, table))
        for table in VIEW_TABLES.values()
    }
    views = {
        "user_stats": FeatureView(
            name="user_stats", entities=[user], ttl=ttl, schema=_feature_fields("user_stats", horizons),
            source=push_sources["user_stats"], online=True,
            description="User impressions, clicks and smoothed CTR over sliding windows, as of each event.",
        ),
        "item_stats": FeatureView(
            name="item_stats", entities=[item], ttl=ttl, schema=_feature_fields("item_stats", horizons),
            source=push_sources["item_stats"], online=True,
            description="Item impressions, clicks and smoothed CTR over sliding windows, as of each event.",
        ),
        "user_sequence": FeatureView(
            name="user_sequence", entities=[user], ttl=SEQUENCE_TTL,
            schema=_feature_fields("user_sequences", horizons),
            source=push_sources["user_sequences"], online=True,
            description="The user's last N clicked items (ids, categories, times in ms), oldest first.",
        ),
        "item_attributes": FeatureView(
            name="item_attributes", entities=[item], ttl=ITEM_ATTRIBUTES_TTL,
            schema=_feature_fields("item_attributes", horizons), source=push_sources["item_attributes"],
            online=True,
            description="The item's side fields (category) as of its impressions: the candidate inputs "
            "serving needs that training reads from each impression.",
        ),
    }
    services = {
        name: FeatureService(name=name, features=[views[v] for v in view_names])
        for name, view_names in SERVICE_VIEWS.items()
    }
    services |= {
        serving_service_name(name): FeatureService(
            name=serving_service_name(name), features=[views[v] for v in serving_views(name)],
            description=f"What serving reads for a model trained on {name}: its views and the candidate's.",
        )
        for name in SERVICE_VIEWS
    }
    return Definitions(entities={"user": user, "item": item}, push_sources=push_sources, views=views,
                       services=services)


# Value for a feature whose entity has no row in the view's TTL (never seen, or stale). Feast returns
# nulls (and Int64 as float64 when any is null); ctrflow fills them so the offline and online paths give
# identical types and values: counts 0 (int64), CTR the smoothing prior (float64), sequences empty lists
# and length 0 (int32), side fields (category) null: the value a training impression without one has,
# which the input layer maps to its reserved "missing" bucket.
CTR_PRIOR = tables.CTR_PRIOR_CLICKS / tables.CTR_PRIOR_IMPRESSIONS


def feature_default(feature: str) -> object:
    """Fill value for a missing feature (bare name, e.g. ``ctr_24h`` or ``seq_item_ids``)."""
    if feature == "category":
        return None
    if feature.startswith("ctr_"):
        return CTR_PRIOR
    if feature.startswith("seq_") and feature != "seq_length":
        return []
    return 0


def full_feature_names(service: str, horizons: tables.StatHorizons) -> list[str]:
    """``<view>__<feature>`` column names a service produces, in order."""
    return _names_of(SERVICE_VIEWS[service], horizons)


def serving_service_name(service: str) -> str:
    """The Feast service online lookups of a training service use: its views plus ``CANDIDATE_VIEWS``."""
    return f"{service}__serving"


def serving_views(service: str) -> tuple[str, ...]:
    return (*SERVICE_VIEWS[service], *CANDIDATE_VIEWS)


def serving_feature_names(service: str, horizons: tables.StatHorizons) -> list[str]:
    """``full_feature_names`` plus the candidate views' features (``item_attributes__category``)."""
    return _names_of(serving_views(service), horizons)


def _names_of(views: tuple[str, ...], horizons: tables.StatHorizons) -> list[str]:
    return [f"{view}__{feature}" for view in views for feature in view_features(view, horizons)]


def feature_arrow_type(full_name: str, horizons: tables.StatHorizons) -> object:
    """Arrow type of a feature column in training sets and online lookups."""
    view, feature = full_name.split("__", 1)
    return tables.table_schemas(horizons)[VIEW_TABLES[view]].field(feature).type
