"""Criteo display-ads TSV (``label, I1..I13, C1..C26``, tab-separated, no header, no ids, no time).

One row is one impression (a request of one slot, position 0); ``label = 1`` adds its click
``CLICK_DELAY_MS`` later. Criteo carries no user, item or time, so they are synthesised (documented):

- ``event_time``: ``start`` (default 2014-09-01 UTC) + (line - 1) × ``interval_ms`` (default 100 ms),
  i.e. the file order is taken as time order, as in the original (chronological) Criteo file.
- ``user_id``: ``u`` + the pair (C1, C2) hashed by ``events.stable_int_id`` (a coarse stand-in for an
  advertiser-side user bucket; Criteo has no real user field).
- ``item_id``: the C3 value (a high-cardinality hashed categorical, used as the ad id); ``category``: C4.
  Missing values become ``"none"``.
- Every original column is kept as an extra field: ``I1..I13`` as integers (absent when empty) and
  ``C1..C26`` as strings, so no information is lost for models that want them.
- Ids: impression id = request id = the 1-based line number. ``hour`` = the synthesised time's UTC hour
  (so it carries no information beyond the file order).
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import UTC, datetime

from pipelines.adapters.common import (
    AdapterStream,
    decode_line,
    hour_of,
    impressions_with_clicks,
    parse_int,
    split_fields,
)
from pipelines.events import stable_int_id, validate_event

INT_COLUMNS = tuple(f"I{i}" for i in range(1, 14))
CAT_COLUMNS = tuple(f"C{i}" for i in range(1, 27))
DEFAULT_START_MS = int(datetime(2014, 9, 1, tzinfo=UTC).timestamp() * 1000)


def adapt(
    lines: Iterable[tuple[int, bytes]],
    source: str,
    start_ms: int = DEFAULT_START_MS,
    interval_ms: int = 100,
) -> AdapterStream:
    return impressions_with_clicks(
        lines, source, lambda line_no, raw: _parse(raw, line_no, start_ms + (line_no - 1) * interval_ms)
    )


def _parse(raw: bytes, line_no: int, event_time: int) -> tuple[dict, bool]:
    fields = split_fields(decode_line(raw), "\t", 1 + len(INT_COLUMNS) + len(CAT_COLUMNS))
    label = parse_int(fields[0], "label", 0, 1)
    ints = {
        name: parse_int(value, name) for name, value in zip(INT_COLUMNS, fields[1:14], strict=True) if value
    }
    cats = dict(zip(CAT_COLUMNS, (v or "none" for v in fields[14:]), strict=True))
    impression = {
        "type": "impression",
        "impression_id": str(line_no),
        "request_id": str(line_no),
        "user_id": f"u{stable_int_id(cats['C1'] + '|' + cats['C2'])}",
        "item_id": cats["C3"],
        "position": 0,
        "category": cats["C4"],
        "event_time": event_time,
        "hour": hour_of(event_time),
        "request_size": 1,
        **ints,
        **cats,
    }
    return validate_event(impression), label == 1
