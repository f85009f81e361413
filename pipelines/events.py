"""Event contracts: the canonical impression, click and dead-letter records, defined once.

The canonical log (what the simulator writes, the adapters emit and replay reads) is JSON Lines, or
Parquet with the same columns: one record per line with ``"type": "impression"`` or ``"click"``, ids as
strings, ``event_time`` as integer milliseconds UTC, optional ``p_click`` (the simulator's true click
probability) and extra context fields. Anything else is malformed and gets a precise reason.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import pyarrow as pa

IMPRESSION = "impression"
CLICK = "click"
EVENT_TYPES = (IMPRESSION, CLICK)

# Timestamps outside [1990-01-01, 2100-01-01) are "absurd": almost always seconds-vs-ms mistakes
# (seconds read as ms land in 1970). 1990, not 2000: MovieLens 100K ratings date from 1997-98.
MIN_EVENT_TIME_MS = 631_152_000_000
MAX_EVENT_TIME_MS = 4_102_444_800_000
MAX_ID_LENGTH = 256
MAX_POSITION = 10_000
HOUR_RANGE = (0, 23)  # hour of day; the columnar form stores it as int8
# One record's size limit, for every reader (replay, the feature job, convert): a larger record is
# malformed and its dead letter keeps only a prefix of it, so a dead letter always fits in a Kafka message
# (a broker's default limit is 1 MB) and a runaway line cannot stop a replay half way.
MAX_RECORD_BYTES = 64 * 1024
DEADLETTER_RAW_PREFIX_BYTES = 1024

# Required fields and their JSON types, per event type.
IMPRESSION_REQUIRED: dict[str, type] = {
    "impression_id": str,
    "request_id": str,
    "user_id": str,
    "item_id": str,
    "position": int,
    "event_time": int,
}
CLICK_REQUIRED: dict[str, type] = {
    "impression_id": str,
    "user_id": str,
    "item_id": str,
    "event_time": int,
}
# Optional well-known context/side fields and their types; other extra fields pass through untouched (in
# JSON Lines logs; the columnar form and the feature jobs keep only EVENT_SCHEMA's columns). The side fields
# after "page" are what the public formats' side files add (see pipelines.adapters):
# - subcategory: the item's finer category (MIND news subcategory);
# - genres: every genre of the item, "|"-joined (MovieLens; the first one is also its category);
# - request_size: how many impressions the request showed (MIND impression lists);
# - user_age, user_gender, user_occupation: user demographics (MovieLens u.user / users.dat).
OPTIONAL_FIELDS: dict[str, type] = {
    "category": str,
    "hour": int,
    "device": str,
    "page": str,
    "subcategory": str,
    "genres": str,
    "request_size": int,
    "user_age": int,
    "user_gender": str,
    "user_occupation": str,
    "p_click": float,
}
# The side fields, in order: carried into labelled samples and read by the models as categorical inputs.
SIDE_FIELDS = ("subcategory", "genres", "request_size", "user_age", "user_gender", "user_occupation")

# Columnar form of the canonical log (Parquet logs use exactly these columns).
EVENT_SCHEMA = pa.schema(
    [
        pa.field("type", pa.string(), nullable=False),
        pa.field("impression_id", pa.string(), nullable=False),
        pa.field("request_id", pa.string()),
        pa.field("user_id", pa.string(), nullable=False),
        pa.field("item_id", pa.string(), nullable=False),
        pa.field("position", pa.int32()),
        pa.field("category", pa.string()),
        pa.field("hour", pa.int8()),
        pa.field("device", pa.string()),
        pa.field("page", pa.string()),
        pa.field("subcategory", pa.string()),
        pa.field("genres", pa.string()),
        pa.field("request_size", pa.int32()),
        pa.field("user_age", pa.int32()),
        pa.field("user_gender", pa.string()),
        pa.field("user_occupation", pa.string()),
        pa.field("event_time", pa.int64(), nullable=False),
        pa.field("p_click", pa.float64()),
    ]
)
EVENT_COLUMNS = tuple(EVENT_SCHEMA.names)
# Integer side fields have no domain bound beyond their column type; a value that does not fit it is
# malformed (as the vectorised readers, which parse into these types, find too).
_SIDE_INT_LIMITS = {
    name: 2 ** (EVENT_SCHEMA.field(name).type.bit_width - 1)
    for name in SIDE_FIELDS if pa.types.is_integer(EVENT_SCHEMA.field(name).type)
}

DEADLETTER_SCHEMA = pa.schema(
    [
        pa.field("source", pa.string()),  # topic name or file path
        pa.field("partition", pa.int32()),  # -1 for files
        pa.field("offset", pa.int64()),  # Kafka offset, or 1-based line number for files
        pa.field("error", pa.string()),
        pa.field("raw", pa.binary()),
    ]
)


class MalformedEvent(ValueError):
    """A record that is not a valid canonical event; ``str(exc)`` is the precise reason."""


def _check_type(record: Mapping[str, Any], name: str, expected: type, required: bool) -> None:
    if name not in record or record[name] is None:
        if required:
            raise MalformedEvent(f"missing required field '{name}'")
        return
    value = record[name]
    # bool is an int subclass in Python but never a valid id, time or position.
    if isinstance(value, bool) or not isinstance(value, expected):
        if expected is float and isinstance(value, int) and not isinstance(value, bool):
            return
        raise MalformedEvent(
            f"field '{name}' must be {expected.__name__}, got {type(value).__name__} {value!r:.40}"
        )


def validate_event(record: Any) -> dict[str, Any]:
    """Return the record if it is a valid canonical event, else raise MalformedEvent with the reason."""
    if not isinstance(record, dict):
        raise MalformedEvent(f"record must be a JSON object, got {type(record).__name__}")
    kind = record.get("type")
    if kind not in EVENT_TYPES:
        raise MalformedEvent(f"unknown type {kind!r}: expected one of {list(EVENT_TYPES)}")
    required = IMPRESSION_REQUIRED if kind == IMPRESSION else CLICK_REQUIRED
    for name, expected in required.items():
        _check_type(record, name, expected, required=True)
    for name, expected in OPTIONAL_FIELDS.items():
        _check_type(record, name, expected, required=False)
    for name, expected in required.items():
        if expected is str:
            value = record[name]
            if not value or len(value) > MAX_ID_LENGTH:
                raise MalformedEvent(f"field '{name}' must be 1..{MAX_ID_LENGTH} characters")
    ts = record["event_time"]
    if not MIN_EVENT_TIME_MS <= ts < MAX_EVENT_TIME_MS:
        raise MalformedEvent(
            f"event_time {ts} is outside [{MIN_EVENT_TIME_MS}, {MAX_EVENT_TIME_MS}) ms UTC "
            "(negative, in seconds instead of milliseconds, or absurd)"
        )
    if kind == IMPRESSION and not 0 <= record["position"] <= MAX_POSITION:
        raise MalformedEvent(f"position {record['position']} is outside [0, {MAX_POSITION}]")
    hour = record.get("hour")
    if hour is not None and not HOUR_RANGE[0] <= hour <= HOUR_RANGE[1]:
        raise MalformedEvent(f"hour {hour} is outside [{HOUR_RANGE[0]}, {HOUR_RANGE[1]}]")
    for name, limit in _SIDE_INT_LIMITS.items():
        value = record.get(name)
        if value is not None and not -limit <= value < limit:
            raise MalformedEvent(f"field '{name}' = {value} does not fit {EVENT_SCHEMA.field(name).type}")
    p = record.get("p_click")
    if p is not None and not (math.isfinite(p) and 0.0 <= p <= 1.0):
        raise MalformedEvent(f"p_click {p!r} is not a probability")
    return record


def check_record_size(raw: bytes | str) -> None:
    """Raise MalformedEvent when a record is over ``MAX_RECORD_BYTES`` (str: counted as UTF-8)."""
    size = len(raw) if isinstance(raw, bytes) else len(raw.encode("utf-8", errors="surrogateescape"))
    if size > MAX_RECORD_BYTES:
        raise MalformedEvent(f"record of {size} bytes exceeds {MAX_RECORD_BYTES}")


def decode_event(raw: bytes | str) -> dict[str, Any]:
    """Parse and validate one JSON line; raises MalformedEvent with the reason."""
    check_record_size(raw)
    if isinstance(raw, bytes):
        try:
            raw = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise MalformedEvent(f"not UTF-8: {exc.reason} at byte {exc.start}") from None
    try:
        record = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise MalformedEvent(f"invalid JSON: {exc.msg} at column {exc.colno}") from None
    return validate_event(record)


def is_utf8(data: bytes) -> bool:
    """Whether ``data`` is valid UTF-8, as ``decode_event`` requires of every line.

    The Arrow JSON reader (the vectorised paths) does not check the bytes inside string values, so
    those paths ask this of a whole block first; pure ASCII, the common case, is checked without a copy."""
    if data.isascii():
        return True
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def encode_event(record: Mapping[str, Any]) -> bytes:
    """Compact JSON bytes for Kafka values and JSONL lines (None-valued fields are dropped)."""
    return json.dumps(
        {k: v for k, v in record.items() if v is not None}, separators=(",", ":")
    ).encode()


@dataclass(frozen=True)
class DeadLetter:
    """A record that failed to parse or validate, with where it came from and why.

    ``raw`` is the record's bytes, or only their first ``DEADLETTER_RAW_PREFIX_BYTES`` when the record is
    over ``MAX_RECORD_BYTES`` (the error then says how big it was)."""

    source: str
    partition: int
    offset: int
    error: str
    raw: bytes

    def __post_init__(self) -> None:
        if len(self.raw) > MAX_RECORD_BYTES:
            object.__setattr__(self, "raw", bytes(self.raw[:DEADLETTER_RAW_PREFIX_BYTES]))

    def to_json(self) -> bytes:
        # surrogateescape maps each undecodable byte to its own lone surrogate, which json writes as a
        # \udcXX escape: from_json gets exactly the same bytes back (backslashreplace could not).
        return json.dumps(
            {
                "source": self.source,
                "partition": self.partition,
                "offset": self.offset,
                "error": self.error,
                "raw": self.raw.decode("utf-8", errors="surrogateescape"),
            },
            separators=(",", ":"),
        ).encode()

    @classmethod
    def from_json(cls, data: bytes) -> DeadLetter:
        d = json.loads(data)
        raw = d["raw"].encode("utf-8", errors="surrogateescape")
        return cls(d["source"], d["partition"], d["offset"], d["error"], raw)


_INT63 = (1 << 63) - 1


def stable_int_id(value: str) -> int:
    """Map a string id to a stable non-negative int64 (Feast Array(Int64) features need ints).

    Decimal ids that fit keep their value (readable in queries); anything else is hashed.
    """
    if value.isdigit() and len(value) <= 18:
        return int(value)
    return int.from_bytes(hashlib.blake2b(value.encode(), digest_size=8).digest(), "little") & _INT63
