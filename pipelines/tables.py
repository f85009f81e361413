"""Warehouse table contracts: the offline Parquet tables the feature jobs write, defined once.

Feast feature views (``features``) and the training-set builder read these names; the Beam jobs
(``pipelines``) write them. Every table carries ``event_time`` (the time the row is valid as of) and a
strictly increasing ``created`` timestamp (Feast breaks ties on event_time arbitrarily otherwise).

Point-in-time rule: every feature in a row at ``event_time = t`` is computed from events strictly
before ``t`` only (clicks count from their own click time).
"""

from __future__ import annotations

import pyarrow as pa

from pipelines.events import EVENT_SCHEMA, SIDE_FIELDS

TS = pa.timestamp("ms", tz="UTC")

# Sliding windows for user/item statistics: name suffix -> length in seconds. Exact counts, from the
# last 7 days of events the job keeps per entity.
STAT_WINDOWS: dict[str, int] = {"1h": 3600, "24h": 86_400, "7d": 7 * 86_400}
# Long horizons, kept as running counters so that the job's state stays one row per entity however long
# the log: name suffix -> decay time constant in seconds. Impressions and clicks are weighted by
# exp(-age / constant), so under a steady rate a counter holds what a window of that length would.
DECAYED_WINDOWS: dict[str, int] = {"30d": 30 * 86_400}
# Every event of the entity so far (exact counts).
ALL_TIME = "all"
# Every statistics suffix, in column order: ``impressions_<s>``, ``clicks_<s>``, ``ctr_<s>``.
STAT_SUFFIXES: tuple[str, ...] = (*STAT_WINDOWS, *DECAYED_WINDOWS, ALL_TIME)
# CTR smoothing: (clicks + PRIOR_CLICKS) / (impressions + PRIOR_IMPRESSIONS)
CTR_PRIOR_CLICKS = 1.0
CTR_PRIOR_IMPRESSIONS = 20.0


def _stat_fields() -> list[pa.Field]:
    fields = []
    for w in STAT_SUFFIXES:
        count = pa.float64() if w in DECAYED_WINDOWS else pa.int64()  # decayed counts are fractional
        fields += [
            pa.field(f"impressions_{w}", count),
            pa.field(f"clicks_{w}", count),
            pa.field(f"ctr_{w}", pa.float64()),
        ]
    return fields


# An impression's fields as the event contract types them, then its label and when the job wrote it.
LABELLED_SAMPLES = pa.schema(
    [
        EVENT_SCHEMA.field(name)
        for name in ("impression_id", "request_id", "user_id", "item_id", "category", "position", "hour",
                     "device", "page", *SIDE_FIELDS)
    ]  # fmt: skip
    + [
        pa.field("event_time", TS, nullable=False),
        pa.field("label", pa.int8(), nullable=False),
        pa.field("click_time", TS),
        EVENT_SCHEMA.field("p_click"),
        pa.field("created", TS, nullable=False),
    ]
)

USER_STATS = pa.schema(
    [pa.field("user_id", pa.string(), nullable=False), pa.field("event_time", TS, nullable=False)]
    + _stat_fields()
    + [pa.field("created", TS, nullable=False)]
)

ITEM_STATS = pa.schema(
    [pa.field("item_id", pa.string(), nullable=False), pa.field("event_time", TS, nullable=False)]
    + _stat_fields()
    + [pa.field("created", TS, nullable=False)]
)

# The user's last N clicked items as of event_time, oldest -> newest (ids via events.stable_int_id).
USER_SEQUENCES = pa.schema(
    [
        pa.field("user_id", pa.string(), nullable=False),
        pa.field("event_time", TS, nullable=False),
        pa.field("seq_item_ids", pa.list_(pa.int64())),
        pa.field("seq_category_ids", pa.list_(pa.int64())),
        pa.field("seq_event_times", pa.list_(pa.int64())),  # ms UTC
        pa.field("seq_length", pa.int32()),
        pa.field("created", TS, nullable=False),
    ]
)

# An item's side fields (the canonical event contract has one: ``category``), one row each time an item
# is first seen in a micro-batch or shows a different value than its previous impression in it. Serving
# reads the candidate's category from here; training reads each impression's own.
ITEM_ATTRIBUTES = pa.schema(
    [
        pa.field("item_id", pa.string(), nullable=False),
        pa.field("event_time", TS, nullable=False),
        EVENT_SCHEMA.field("category"),
        pa.field("created", TS, nullable=False),
    ]
)

# The serving stub's prediction log: one row per scored candidate, joinable with labelled_samples (and
# through them clicks) on (request_id, user_id, item_id).
SERVED = pa.schema(
    [
        pa.field("request_id", pa.string(), nullable=False),
        pa.field("user_id", pa.string(), nullable=False),
        pa.field("item_id", pa.string(), nullable=False),
        pa.field("rank_in_request", pa.int32(), nullable=False),  # index of the item in the request
        EVENT_SCHEMA.field("position"),
        EVENT_SCHEMA.field("hour"),
        EVENT_SCHEMA.field("device"),
        EVENT_SCHEMA.field("page"),
        pa.field("event_time", TS, nullable=False),  # the request's as-of time
        pa.field("served_at", TS, nullable=False),
        pa.field("model_version", pa.string(), nullable=False),
        pa.field("score", pa.float64(), nullable=False),
        pa.field("created", TS, nullable=False),
    ]
)

# The entity each feature table is keyed by (the Feast entity's join key).
ENTITY_KEYS: dict[str, str] = {
    "user_stats": "user_id", "item_stats": "item_id", "user_sequences": "user_id",
    "item_attributes": "item_id",
}  # fmt: skip

TABLES: dict[str, pa.Schema] = {
    "labelled_samples": LABELLED_SAMPLES,
    "user_stats": USER_STATS,
    "item_stats": ITEM_STATS,
    "user_sequences": USER_SEQUENCES,
    "item_attributes": ITEM_ATTRIBUTES,
}
