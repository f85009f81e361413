"""Point-in-time-correct training sets: labelled samples joined with a feature service.

Contract (the training side reads exactly this)
-----------------------------------------------
``build_dataset`` writes ``settings.datasets_dir/<name>/data.parquet`` and ``manifest.json`` and points
``settings.datasets_dir/LATEST`` (a text file) at the newest ``<name>``, which is
``ds-<UTC YYYYmmddTHHMMSSZ>-<first 8 hex of the content hash>``.

``data.parquet`` columns: every ``labelled_samples`` column (impression_id, request_id, user_id, item_id,
category, position, hour, device, page, the side fields of ``pipelines.events.SIDE_FIELDS``, event_time,
label, click_time, p_click, created) with the types
of ``pipelines.tables.LABELLED_SAMPLES``, then the service's features named ``<view>__<feature>``
(``user_stats__ctr_24h``, ``item_stats__impressions_7d``, ``user_sequence__seq_item_ids`` ...). Rows are
sorted by (event_time, impression_id).

Missing features (entity never seen, or its newest row older than the view's TTL) are filled, identically
on both join paths and online: counts 0 (int64), CTRs the smoothing prior
``CTR_PRIOR_CLICKS / CTR_PRIOR_IMPRESSIONS`` (float64), sequences empty lists (list<int64>), seq_length 0
(int32).

``manifest.json``::

    {"format": 1, "name", "feature_service", "window": {"start": iso|null, "end": iso|null}, "rows",
     "label_rate", "content_hash", "created_at", "engine",
     "columns": {"label": "label", "time": "event_time", "user": "user_id", "item": "item_id",
                 "categorical": ["user_id", "item_id", "category", "position", "hour", "device", "page",
                                 "subcategory", "genres", "request_size", "user_age", "user_gender",
                                 "user_occupation"],
                 "dense": [...stats features...],
                 "sequence": {"item_ids": ..., "category_ids": ..., "event_times": ...} | null},
     "has_p_click": bool}

``features.manifest.DatasetManifest`` is this record, typed; every reader goes through it.

The window is ``start <= event_time < end``; no bound = everything in the warehouse. Two join engines
give identical rows: ``asof`` (DuckDB ASOF JOIN, the default: fast) and ``feast``
(``FeatureStore.get_historical_features``, the reference).
"""

from __future__ import annotations

import hashlib
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

import duckdb
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from features.asof import ROW_ID, asof_features, parquet_glob
from features.feature_repo.definitions import DEFAULT_SERVICE, SERVICE_VIEWS, full_feature_names
from features.manifest import DatasetManifest, ManifestColumns
from features.normalize import normalize_features
from features.store import feature_store
from pipelines import tables
from pipelines.beam.sinks import check_warehouse_horizons
from pipelines.settings import Settings
from pipelines.tables import StatHorizons

Engine = Literal["asof", "feast"]
ENGINES: tuple[str, ...] = ("asof", "feast")
LATEST_FILE = "LATEST"


class DatasetError(RuntimeError):
    """A training set cannot be built or loaded (no samples in the window, unknown name, ...)."""


@dataclass(frozen=True)
class BuiltDataset:
    name: str
    path: Path
    manifest: DatasetManifest


def _iso(ts: datetime | None) -> str | None:
    return None if ts is None else ts.astimezone(UTC).isoformat()


def _utc(ts: datetime | None) -> datetime | None:
    if ts is None:
        return None
    return ts.replace(tzinfo=UTC) if ts.tzinfo is None else ts.astimezone(UTC)


def read_samples(settings: Settings, start: datetime | None = None, end: datetime | None = None) -> pa.Table:
    """Labelled samples with ``start <= event_time < end``, sorted by (event_time, impression_id)."""
    start, end = _utc(start), _utc(end)
    if start and end and end <= start:
        raise DatasetError(f"window is empty: end {_iso(end)} <= start {_iso(start)}")
    directory = settings.warehouse_dir / "labelled_samples"
    if not any(directory.rglob("*.parquet")):
        raise DatasetError(f"no labelled samples under {directory}: run the feature job first")
    where, params = [], []
    if start:
        where.append("event_time >= ?")
        params.append(start)
    if end:
        where.append("event_time < ?")
        params.append(end)
    columns = ", ".join(tables.LABELLED_SAMPLES.names)
    sql = (
        f"SELECT {columns} FROM read_parquet('{parquet_glob(directory)}', hive_partitioning = false)"
        + (f" WHERE {' AND '.join(where)}" if where else "")
        + " ORDER BY event_time, impression_id"
    )
    with duckdb.connect() as con:
        samples = con.sql(sql, params=params).to_arrow_table()
    return samples.cast(tables.LABELLED_SAMPLES)


def _entities(samples: pa.Table) -> pa.Table:
    return pa.table({
        ROW_ID: pa.array(range(samples.num_rows), pa.int64()),
        "user_id": samples.column("user_id"),
        "item_id": samples.column("item_id"),
        "event_time": samples.column("event_time"),
    })


def feast_features(settings: Settings, entities: pa.Table, service: str) -> pa.Table:
    """Feature columns through Feast ``get_historical_features``, ordered by ``_row``."""
    store = feature_store(settings)
    # Feast takes a pandas entity frame only, and wants exactly one timestamp column.
    entity_df = entities.rename_columns([ROW_ID, "user_id", "item_id", "event_timestamp"]).to_pandas()
    job = store.get_historical_features(
        entity_df=entity_df, features=store.get_feature_service(service), full_feature_names=True
    )
    result = job.to_arrow()
    result = result.take(pc.sort_indices(result, sort_keys=[(ROW_ID, "ascending")]))
    return result.select([ROW_ID, *full_feature_names(service, settings.horizons)])


def join_features(settings: Settings, samples: pa.Table, service: str = DEFAULT_SERVICE,
                  engine: Engine = "asof") -> pa.Table:
    """``samples`` plus the service's features, point-in-time correct, missing values filled."""
    if service not in SERVICE_VIEWS:
        raise DatasetError(f"unknown feature service {service!r}; expected one of {sorted(SERVICE_VIEWS)}")
    if engine not in ENGINES:
        raise DatasetError(f"unknown engine {engine!r}; expected one of {list(ENGINES)}")
    check_warehouse_horizons(settings.warehouse_dir, settings.horizons)  # else a binder error, or nulls
    entities = _entities(samples)
    features = (asof_features if engine == "asof" else feast_features)(settings, entities, service)
    # Every sample exactly once, in order: a join that lost or duplicated rows must not pass silently.
    in_order = features.num_rows == samples.num_rows and pc.all(
        pc.equal(features.column(ROW_ID), pa.array(range(samples.num_rows), pa.int64()))
    ).as_py() in (True, None)
    if not in_order:
        raise DatasetError(f"{engine} join returned {features.num_rows} rows for {samples.num_rows} samples")
    columns = full_feature_names(service, settings.horizons)
    joined = samples
    for name in columns:
        joined = joined.append_column(name, features.column(name))
    return normalize_features(joined, columns, settings.horizons)


HASH_BATCH_ROWS = 1 << 20


class _HashingSink:
    """A write-only file object that feeds every written chunk to a digest and keeps nothing."""

    def __init__(self, digest: Any) -> None:
        self.digest = digest
        self.closed = False

    def write(self, data: bytes) -> int:
        self.digest.update(data)
        return len(data)

    def writable(self) -> bool:
        return True

    def flush(self) -> None:
        pass

    def close(self) -> None:
        self.closed = True


def content_hash(table: pa.Table) -> str:
    """SHA-256 of the table's Arrow IPC stream: equal content and types give the same hash.

    The stream goes straight into the digest instead of into a buffer as big as the table.
    """
    digest = hashlib.sha256()
    with pa.PythonFile(_HashingSink(digest), mode="w") as sink, pa.ipc.new_stream(sink, table.schema) as w:
        for batch in table.combine_chunks().to_batches(max_chunksize=HASH_BATCH_ROWS):
            w.write_batch(batch)
    return digest.hexdigest()


def make_manifest(name: str, table: pa.Table, service: str, start: datetime | None, end: datetime | None,
                  digest: str, engine: str, horizons: StatHorizons) -> DatasetManifest:
    rows = table.num_rows
    labels = pc.sum(table.column("label").cast(pa.int64())).as_py() or 0
    return DatasetManifest(
        name=name,
        feature_service=service,
        window_start=_iso(_utc(start)),
        window_end=_iso(_utc(end)),
        rows=rows,
        label_rate=labels / rows if rows else 0.0,
        content_hash=digest,
        created_at=datetime.now(UTC).isoformat(),
        engine=engine,
        columns=ManifestColumns.for_features(full_feature_names(service, horizons)),
        has_p_click=table.column("p_click").null_count < rows if rows else False,
    )


def write_dataset(settings: Settings, table: pa.Table, manifest: DatasetManifest) -> Path:
    """Write data.parquet + manifest.json atomically (temp folder + rename), then move LATEST."""
    settings.datasets_dir.mkdir(parents=True, exist_ok=True)
    final = settings.datasets_dir / manifest.name
    staging = settings.datasets_dir / f".{manifest.name}.tmp"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir()
    pq.write_table(table, staging / "data.parquet")
    (staging / "manifest.json").write_text(manifest.to_json() + "\n")
    if final.exists():
        shutil.rmtree(final)
    staging.rename(final)
    latest_tmp = settings.datasets_dir / f".{LATEST_FILE}.tmp"
    latest_tmp.write_text(manifest.name + "\n")
    os.replace(latest_tmp, settings.datasets_dir / LATEST_FILE)
    return final


def build_dataset(settings: Settings, start: datetime | None = None, end: datetime | None = None,
                  service: str = DEFAULT_SERVICE, engine: Engine = "asof",
                  on_step: Callable[[str], None] | None = None) -> BuiltDataset:
    """Build, hash and write a training set for the window; see the module docstring for the contract.

    ``on_step`` is told what the build is doing (for progress displays).
    """
    step = on_step or (lambda _: None)
    step("reading labelled samples")
    samples = read_samples(settings, start, end)
    if samples.num_rows == 0:
        raise DatasetError(
            f"no labelled samples in window [{_iso(_utc(start)) or '-inf'}, {_iso(_utc(end)) or '+inf'})"
        )
    step(f"joining {samples.num_rows:,} samples with {service} ({engine})")
    table = join_features(settings, samples, service, engine)
    step("hashing and writing")
    digest = content_hash(table)
    name = f"ds-{datetime.now(UTC):%Y%m%dT%H%M%SZ}-{digest[:8]}"
    manifest = make_manifest(name, table, service, start, end, digest, engine, settings.horizons)
    return BuiltDataset(name=name, path=write_dataset(settings, table, manifest), manifest=manifest)


def latest_event_time(settings: Settings) -> datetime:
    """The newest labelled sample's event time (UTC): "now" for a cycle over replayed history."""
    directory = settings.warehouse_dir / "labelled_samples"
    if not any(directory.rglob("*.parquet")):
        raise DatasetError(f"no labelled samples under {directory}: run the feature job first")
    sql = f"SELECT max(event_time) FROM read_parquet('{parquet_glob(directory)}', hive_partitioning = false)"
    with duckdb.connect() as con:
        newest = con.execute(sql).fetchone()[0]
    if newest is None:
        raise DatasetError(f"the labelled samples under {directory} are empty")
    return _utc(newest)


def latest_name(settings: Settings) -> str:
    path = settings.datasets_dir / LATEST_FILE
    if not path.exists():
        raise DatasetError(f"no dataset built yet under {settings.datasets_dir} (no {LATEST_FILE} file)")
    return path.read_text().strip()


def load_dataset(settings: Settings, name: str | None = None) -> tuple[pa.Table, DatasetManifest]:
    """A built training set and its manifest; ``name=None`` = the one LATEST points to."""
    name = name or latest_name(settings)
    if "/" in name or name.startswith("."):
        raise DatasetError(f"invalid dataset name {name!r}")
    folder = settings.datasets_dir / name
    if not (folder / "manifest.json").exists():
        raise DatasetError(f"dataset {name!r} not found under {settings.datasets_dir}")
    try:
        manifest = DatasetManifest.from_json((folder / "manifest.json").read_text())
    except ValueError as exc:
        raise DatasetError(str(exc)) from exc
    return pq.read_table(folder / "data.parquet"), manifest


def list_datasets(settings: Settings) -> list[str]:
    """Every complete training set's name, oldest first (by manifest build time, then name); staging
    folders (a build in progress) are not listed."""
    root = settings.datasets_dir
    if not root.is_dir():
        return []
    found = []
    for folder in root.iterdir():
        manifest = folder / "manifest.json"
        if folder.name.startswith(".") or not manifest.is_file():
            continue
        try:
            created = DatasetManifest.from_json(manifest.read_text()).created_at or ""
        except ValueError:  # an unreadable manifest sorts first: the oldest, the first to go
            created = ""
        found.append((created, folder.name))
    return [name for _, name in sorted(found)]


def latest_name_or_none(settings: Settings) -> str | None:
    """What LATEST points to, or None before the first build."""
    path = settings.datasets_dir / LATEST_FILE
    return (path.read_text().strip() or None) if path.is_file() else None
