"""Warehouse table contracts: the offline Parquet tables the feature jobs write, defined once.

Feast feature views (``features``) and the training-set builder read these names; the Beam jobs
(``pipelines``) write them. Every table carries ``event_time`` (the time the row is valid as of) and a
strictly increasing ``created`` timestamp (Feast breaks ties on event_time arbitrarily otherwise).

Point-in-time rule: every feature in a row at ``event_time = t`` is computed from events strictly
before ``t`` only (clicks count from their own click time).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import cache

import pyarrow as pa

from pipelines.events import EVENT_SCHEMA, SIDE_FIELDS

TS = pa.timestamp("ms", tz="UTC")

# The statistics horizons, one name suffix each: ``impressions_<s>``, ``clicks_<s>``, ``ctr_<s>``.
# Sliding windows are exact counts from the recent events the job keeps per entity (as many days as the
# longest sliding window); decayed horizons are running counters, so the job's state stays one row per
# entity however long the log: impressions and clicks are weighted by exp(-age / constant), and under a
# steady rate a counter holds what a window of that length would. ``all`` counts every event so far.
ALL_TIME = "all"
HORIZONS_FORMAT_VERSION = 1
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86_400, "w": 7 * 86_400}
_DURATION = re.compile(r"(\d{1,6})([smhdw])")
# Bounds that keep the job's state and the tables' width sane: every sliding window's events are held in
# state, so the longest bounds its size; decayed counters cost one float per entity whatever the constant.
# A decayed constant of at least a day keeps the job's running sums in float64's range for up to 700
# days of one entity's events in a batch (shorter horizons are what exact sliding windows are for).
MAX_SLIDING_S = 90 * 86_400
MIN_DECAYED_S = 86_400
MAX_DECAYED_S = 10 * 365 * 86_400
MAX_HORIZONS = 8


def parse_horizons(
    spec: str, *, what: str, max_seconds: int, min_seconds: int = 1
) -> tuple[tuple[str, int], ...]:
    """``"1h,24h,7d"`` -> ``(("1h", 3600), ("24h", 86400), ("7d", 604800))``; a ValueError names the
    bad part. Each part is ``<count><unit>`` with unit s, m, h, d or w; the part is the column suffix."""
    parts = [p.strip() for p in spec.split(",") if p.strip()]
    if len(parts) > MAX_HORIZONS:
        raise ValueError(f"{what}: at most {MAX_HORIZONS} horizons, got {len(parts)}")
    out = []
    for part in parts:
        match = _DURATION.fullmatch(part)
        if match is None:
            raise ValueError(f"{what}: {part!r} is not <count><unit>, unit s, m, h, d or w (e.g. 24h, 30d)")
        seconds = int(match[1]) * _UNITS[match[2]]
        if not min_seconds <= seconds <= max_seconds:
            lowest = f"{min_seconds // 86_400} day" if min_seconds >= 86_400 else f"{min_seconds} s"
            raise ValueError(f"{what}: {part!r} must be from {lowest} to {max_seconds // 86_400} days")
        out.append((part, seconds))
    return tuple(sorted(out, key=lambda named: named[1]))


@dataclass(frozen=True)
class StatHorizons:
    """Which statistics the user and item tables carry, in column order: the sliding windows, the
    decayed horizons, then all time. Fixed per home: the job's state and the tables' schemas follow it,
    so changing it means rebuilding the warehouse (the checkpoint records it and refuses a change)."""

    sliding: tuple[tuple[str, int], ...] = (("1h", 3600), ("24h", 86_400), ("7d", 7 * 86_400))
    decayed: tuple[tuple[str, int], ...] = (("30d", 30 * 86_400),)
    version: int = HORIZONS_FORMAT_VERSION

    def __post_init__(self) -> None:
        if not self.sliding:
            raise ValueError("statistics horizons: at least one sliding window is needed")
        names = [n for n, _ in (*self.sliding, *self.decayed)]
        clash = sorted({n for n in names if names.count(n) > 1 or n == ALL_TIME})
        if clash:
            raise ValueError(f"statistics horizons: {', '.join(clash)} named twice (or 'all': reserved)")
        for kind, horizons in (("sliding windows", self.sliding), ("decayed horizons", self.decayed)):
            seconds = [s for _, s in horizons]
            if len(set(seconds)) < len(seconds):
                raise ValueError(f"statistics horizons: two {kind} of the same length")

    @staticmethod
    @cache  # Settings.horizons is read on every served request
    def parse(sliding: str, decayed: str) -> StatHorizons:
        """From the settings' spellings, e.g. ``("1h,24h,7d", "30d")``; ``decayed`` may be empty."""
        return StatHorizons(
            sliding=parse_horizons(sliding, what="sliding windows", max_seconds=MAX_SLIDING_S),
            decayed=parse_horizons(decayed, what="decayed horizons", max_seconds=MAX_DECAYED_S,
                                   min_seconds=MIN_DECAYED_S),
        )

    @property
    def suffixes(self) -> tuple[str, ...]:
        """Every statistics suffix, in column order."""
        return (*(n for n, _ in self.sliding), *(n for n, _ in self.decayed), ALL_TIME)

    @property
    def longest_sliding_s(self) -> int:
        """How long the job keeps an entity's events: the longest sliding window."""
        return max(s for _, s in self.sliding)

    def spec(self) -> dict[str, object]:
        """A JSON-able record of the horizons (checkpoint, docs)."""
        return {"version": self.version, "sliding": dict(self.sliding), "decayed": dict(self.decayed)}

    def stat_fields(self) -> list[pa.Field]:
        decayed = {n for n, _ in self.decayed}
        fields = []
        for w in self.suffixes:
            count = pa.float64() if w in decayed else pa.int64()  # decayed counts are fractional
            fields += [
                pa.field(f"impressions_{w}", count),
                pa.field(f"clicks_{w}", count),
                pa.field(f"ctr_{w}", pa.float64()),
            ]
        return fields


DEFAULT_HORIZONS = StatHorizons()
# CTR smoothing: (clicks + PRIOR_CLICKS) / (impressions + PRIOR_IMPRESSIONS)
CTR_PRIOR_CLICKS = 1.0
CTR_PRIOR_IMPRESSIONS = 20.0


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

def stats_schema(entity: str, horizons: StatHorizons) -> pa.Schema:
    """``user_stats`` (entity ``user_id``) or ``item_stats`` (``item_id``) under ``horizons``."""
    return pa.schema(
        [pa.field(entity, pa.string(), nullable=False), pa.field("event_time", TS, nullable=False)]
        + horizons.stat_fields()
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

STAT_TABLES: tuple[str, ...] = ("user_stats", "item_stats")
# The tables Feast's views read (their schemas: ``table_schemas``).
FEATURE_TABLES: tuple[str, ...] = (
    "labelled_samples", "user_stats", "item_stats", "user_sequences", "item_attributes",
)  # fmt: skip


@cache  # feature types are looked up per column of every served request
def table_schemas(horizons: StatHorizons) -> dict[str, pa.Schema]:
    """Every feature table's schema; the statistics tables' columns follow ``horizons``. Shared: do not
    modify the returned dict."""
    return {
        "labelled_samples": LABELLED_SAMPLES,
        "user_stats": stats_schema("user_id", horizons),
        "item_stats": stats_schema("item_id", horizons),
        "user_sequences": USER_SEQUENCES,
        "item_attributes": ITEM_ATTRIBUTES,
    }
