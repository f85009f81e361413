"""Synthetic warehouse tables that follow ``pipelines.tables`` exactly (tests and benchmarks).

Feature values encode when their row was valid (``impressions_1h`` = the row's event_time in seconds
relative to ``T0``), so a test can tell exactly which feature row a sample was joined with and whether it
came from the future. Feature rows are spread before and after the samples, some share an entity and
event_time with a different ``created`` (tie-break), and some entities never appear (missing features).
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from pipelines import tables
from pipelines.events import SIDE_FIELDS, stable_int_id
from pipelines.settings import Settings

CATEGORIES = ("news", "sport", "tech", "food")  # item categories; behaviours use the same
T0_MS = int(datetime(2026, 3, 1, tzinfo=UTC).timestamp() * 1000)
DAY_MS = 86_400_000
# Feature rows start a day before the samples; their identity counts seconds from there (a count is >= 0).
IDENTITY_ORIGIN_MS = T0_MS - DAY_MS


def write_table(settings: Settings, name: str, table: pa.Table, part: str = "part-0") -> list[Path]:
    """Write a warehouse table as ``<warehouse>/<name>/date=YYYY-MM-DD/<part>.parquet`` files."""
    schema = tables.table_schemas(settings.horizons)[name]
    table = table.select(schema.names).cast(schema)
    dates = pc.strftime(table.column("event_time"), format="%Y-%m-%d")
    paths = []
    for date in pc.unique(dates).to_pylist():
        chunk = table.filter(pc.equal(dates, date))
        path = settings.warehouse_dir / name / f"date={date}" / f"{part}.parquet"
        path.parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(chunk, path)
        paths.append(path)
    return paths


def _ts(ms: np.ndarray) -> pa.Array:
    return pa.array(ms.astype("int64"), pa.int64()).cast(tables.TS)


def labelled_samples(rng: np.random.Generator, n: int, n_users: int, n_items: int, days: float,
                     label_rate: float = 0.1, created_base: int = 0) -> pa.Table:
    event_ms = np.sort(T0_MS + rng.integers(0, int(days * DAY_MS), n))
    label = (rng.random(n) < label_rate).astype("int8")
    click_ms = event_ms + rng.integers(1000, 600_000, n)
    categories = np.array([*CATEGORIES, None], dtype=object)
    devices = np.array(["mobile", "desktop", "tablet"], dtype=object)
    return pa.table(
        {
            "impression_id": pa.array([f"imp{i}" for i in range(n)]),
            "request_id": pa.array([f"req{i // 4}" for i in range(n)]),
            "user_id": pa.array([f"u{k}" for k in rng.integers(0, n_users, n)]),
            "item_id": pa.array([f"i{k}" for k in rng.zipf(1.3, n) % n_items]),
            "category": pa.array(categories[rng.integers(0, len(categories), n)]),
            "position": pa.array(rng.integers(0, 20, n).astype("int32")),
            "hour": pa.array(((event_ms // 3_600_000) % 24).astype("int8")),
            "device": pa.array(devices[rng.integers(0, len(devices), n)]),
            "page": pa.array(np.where(rng.random(n) < 0.5, "home", "search").astype(object)),
            **{side: pa.nulls(n, tables.LABELLED_SAMPLES.field(side).type) for side in SIDE_FIELDS},
            "event_time": _ts(event_ms),
            "label": pa.array(label),
            "click_time": pa.array(click_ms, pa.int64(), mask=label == 0).cast(tables.TS),
            "p_click": pa.array(rng.random(n) * 0.2),
            "created": _ts(T0_MS + created_base + np.arange(n)),
        },
        schema=tables.LABELLED_SAMPLES,
    )


def _feature_times(rng: np.random.Generator, n_rows: int, n_entities: int, days: float,
                   tie_fraction: float) -> tuple[np.ndarray, np.ndarray]:
    # Rows start a day before the samples and end a day after them, so some lie in the future.
    entity = rng.integers(0, n_entities, n_rows)
    event_ms = T0_MS - DAY_MS + rng.integers(0, int((days + 2) * DAY_MS), n_rows)
    ties = rng.random(n_rows) < tie_fraction
    if n_rows > 1:
        # A tie duplicates the previous row's entity and event_time; created decides which one wins.
        idx = np.flatnonzero(ties[1:]) + 1
        entity[idx] = entity[idx - 1]
        event_ms[idx] = event_ms[idx - 1]
    return entity, event_ms


def stats_table(
    rng: np.random.Generator, key: str, prefix: str, n_rows: int, n_entities: int, days: float,
    tie_fraction: float = 0.05, horizons: tables.StatHorizons = tables.DEFAULT_HORIZONS,
) -> pa.Table:
    entity, event_ms = _feature_times(rng, n_rows, n_entities, days, tie_fraction)
    columns: dict[str, pa.Array] = {
        key: pa.array([f"{prefix}{k}" for k in entity]),
        "event_time": _ts(event_ms),
    }
    schema = tables.stats_schema(key, horizons)
    for window in horizons.suffixes:
        impressions = rng.integers(0, 500, n_rows)
        clicks = (impressions * rng.random(n_rows) * 0.3).astype("int64")
        count = schema.field(f"impressions_{window}").type
        columns[f"impressions_{window}"] = pa.array(impressions, pa.int64()).cast(count)
        columns[f"clicks_{window}"] = pa.array(clicks, pa.int64()).cast(count)
        columns[f"ctr_{window}"] = pa.array(
            (clicks + tables.CTR_PRIOR_CLICKS) / (impressions + tables.CTR_PRIOR_IMPRESSIONS)
        )
    # Row identity for leak tests: seconds since IDENTITY_ORIGIN_MS at which the row is valid, and its
    # creation order, in the shortest window's counts (impressions_1h, clicks_1h by default).
    shortest = horizons.sliding[0][0]
    columns[f"impressions_{shortest}"] = pa.array((event_ms - IDENTITY_ORIGIN_MS) // 1000, pa.int64())
    columns[f"clicks_{shortest}"] = pa.array(np.arange(n_rows), pa.int64())
    columns["created"] = _ts(T0_MS + rng.permutation(n_rows))
    return pa.table(columns, schema=schema)


def sequences_table(rng: np.random.Generator, n_rows: int, n_users: int, days: float, n_items: int,
                    max_len: int = 20, tie_fraction: float = 0.05) -> pa.Table:
    entity, event_ms = _feature_times(rng, n_rows, n_users, days, tie_fraction)
    lengths = rng.integers(0, max_len + 1, n_rows)
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype("int32")
    total = int(offsets[-1])
    # Behaviours are the warehouse's own items and categories, as the sequence job writes them
    # (events.stable_int_id of the id string), so a candidate can match its user's history.
    item_ids = np.array([stable_int_id(f"i{k}") for k in range(n_items)], np.int64)
    cat_ids = np.array([stable_int_id(c) for c in CATEGORIES], np.int64)
    items = pa.ListArray.from_arrays(
        pa.array(offsets), pa.array(item_ids[rng.integers(0, 2**62, total) % n_items], pa.int64()))
    cats = pa.ListArray.from_arrays(
        pa.array(offsets), pa.array(cat_ids[rng.integers(0, 1000, total) % len(CATEGORIES)], pa.int64()))
    # Sequence times end at the row's own event_time (a row's identity, like impressions_1h above).
    times = np.repeat(event_ms, lengths) - rng.integers(1, 3_600_000, total)
    times_arr = pa.ListArray.from_arrays(pa.array(offsets), pa.array(times, pa.int64()))
    return pa.table(
        {
            "user_id": pa.array([f"u{k}" for k in entity]),
            "event_time": _ts(event_ms),
            "seq_item_ids": items,
            "seq_category_ids": cats,
            "seq_event_times": times_arr,
            "seq_length": pa.array(lengths.astype("int32")),
            "created": _ts(T0_MS + rng.permutation(n_rows)),
        },
        schema=tables.USER_SEQUENCES,
    )


def attributes_table(rng: np.random.Generator, n_rows: int, n_items: int, days: float,
                     tie_fraction: float = 0.05) -> pa.Table:
    entity, event_ms = _feature_times(rng, n_rows, n_items, days, tie_fraction)
    categories = np.array(["news", "sport", "tech", "food", None], dtype=object)
    return pa.table(
        {
            "item_id": pa.array([f"i{k}" for k in entity]),
            "event_time": _ts(event_ms),
            "category": pa.array(categories[rng.integers(0, len(categories), n_rows)], pa.string()),
            "created": _ts(T0_MS + rng.permutation(n_rows)),
        },
        schema=tables.ITEM_ATTRIBUTES,
    )


def write_synthetic_warehouse(settings: Settings, n_samples: int = 200, n_users: int = 12, n_items: int = 15,
                              feature_rows: int | None = None, days: float = 3.0, seed: int = 7) -> dict:
    """Write every table; returns them by name. Users/items with the highest ids never get features."""
    rng = np.random.default_rng(seed)
    rows = feature_rows or n_samples
    written = {
        "labelled_samples": labelled_samples(rng, n_samples, n_users, n_items, days),
        # n_users - 1 / n_items - 1: the last user and item never have a feature row.
        "user_stats": stats_table(rng, "user_id", "u", rows, max(n_users - 1, 1), days,
                                  horizons=settings.horizons),
        "item_stats": stats_table(rng, "item_id", "i", rows, max(n_items - 1, 1), days,
                                  horizons=settings.horizons),
        "user_sequences": sequences_table(rng, rows, max(n_users - 1, 1), days, n_items),
    }
    # Drawn after the others so the tables above stay what they were for the same seed.
    written["item_attributes"] = attributes_table(rng, rows, max(n_items - 1, 1), days)
    for name, table in written.items():
        write_table(settings, name, table)
    return written
