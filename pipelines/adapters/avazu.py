"""Avazu mobile-ads CSV (Kaggle 2014 train format: ``id,click,hour,C1,banner_pos,site_id,...,C21``).

One row is one impression (request = the row); ``click = 1`` adds its click ``CLICK_DELAY_MS`` later.
The header line (train.csv has one; the dev/test slices do not) is ``Skipped``. Synthetic fields:

- ``user_id``: Avazu has no user; the usual stand-in ``device_ip + device_model`` hashed by
  ``events.stable_int_id`` (prefixed ``u``).
- ``event_time``: Avazu has only the hour (``YYMMDDHH``, UTC); the row is placed inside its hour at
  ``stable_int_id(id) mod 3,600,000`` ms, a deterministic spread that needs no look-ahead.
- ``item_id``: the app id for in-app traffic (``site_id == 85f751fd``, Avazu's "no site" value), else
  the site id; ``category`` = the matching app/site category; ``page`` = ``app`` or ``site``.
- ``position`` = ``banner_pos``; ``device`` = ``type<device_type>``; ``impression_id`` = Avazu ``id``
  (a 64-bit unsigned decimal, kept as a string); ``hour`` = the hour of day of Avazu's hour. Every other
  column is kept as an extra string field.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import UTC, datetime

from pipelines.adapters.common import (
    HOUR_MS,
    AdapterStream,
    BadLine,
    SkipLine,
    decode_line,
    hour_of,
    impressions_with_clicks,
    parse_int,
    require_id,
    split_fields,
)
from pipelines.events import stable_int_id, validate_event

COLUMNS = (
    "id", "click", "hour", "C1", "banner_pos", "site_id", "site_domain", "site_category", "app_id",
    "app_domain", "app_category", "device_id", "device_ip", "device_model", "device_type",
    "device_conn_type", "C14", "C15", "C16", "C17", "C18", "C19", "C20", "C21",
)
NO_SITE = "85f751fd"
_CONSUMED = {"id", "click", "hour", "banner_pos", "device_type"}


def adapt(lines: Iterable[tuple[int, bytes]], source: str) -> AdapterStream:
    return impressions_with_clicks(lines, source, _parse)


def hour_start_ms(yymmddhh: str) -> int:
    """Start of an Avazu ``YYMMDDHH`` hour in ms UTC."""
    if len(yymmddhh) != 8 or not yymmddhh.isdigit():
        raise BadLine(f"field 'hour' must be YYMMDDHH, got {yymmddhh!r:.20}")
    try:
        start = datetime.strptime(yymmddhh, "%y%m%d%H").replace(tzinfo=UTC)
    except ValueError:
        raise BadLine(f"field 'hour' is not a valid YYMMDDHH: {yymmddhh!r}") from None
    return int(start.timestamp() * 1000)


def _parse(line_no: int, raw: bytes) -> tuple[dict, bool]:
    if raw.startswith(b"id,click,"):
        raise SkipLine("header line")
    row = dict(zip(COLUMNS, split_fields(decode_line(raw), ",", len(COLUMNS)), strict=True))
    label = parse_int(row["click"], "click", 0, 1)
    impression_id = require_id(row["id"], "id")
    in_app = row["site_id"] == NO_SITE
    impression = {
        "type": "impression",
        "impression_id": impression_id,
        "request_id": impression_id,
        "user_id": f"u{stable_int_id(row['device_ip'] + '|' + row['device_model'])}",
        "item_id": row["app_id"] if in_app else row["site_id"],
        "position": parse_int(row["banner_pos"], "banner_pos", 0),
        "category": row["app_category"] if in_app else row["site_category"],
        "device": f"type{parse_int(row['device_type'], 'device_type', 0)}",
        "page": "app" if in_app else "site",
        "event_time": hour_start_ms(row["hour"]) + stable_int_id(impression_id) % HOUR_MS,
        **{k: v for k, v in row.items() if k not in _CONSUMED},
    }
    impression["hour"] = hour_of(impression["event_time"])
    impression["request_size"] = 1
    return validate_event(impression), label == 1
