"""MovieLens ratings (``u.data``: ``user_id<TAB>item_id<TAB>rating<TAB>timestamp``, unix seconds).

Each rating is an impression of the movie to the user (a request of one slot, position 0) at the
rating time; a rating >= ``click_threshold`` (default 4) is a click, ``CLICK_DELAY_MS`` later. The
rating is kept as an extra integer field. Ids: impression id = request id = the 1-based line number.
The MovieLens 1M/10M ``::``-separated ``ratings.dat`` layout is accepted too.
"""

from __future__ import annotations

from collections.abc import Iterable

from pipelines.adapters.common import (
    AdapterStream,
    BadLine,
    decode_line,
    impressions_with_clicks,
    parse_int,
    require_id,
)
from pipelines.events import MAX_EVENT_TIME_MS, MIN_EVENT_TIME_MS, validate_event


def adapt(lines: Iterable[tuple[int, bytes]], source: str, click_threshold: int = 4) -> AdapterStream:
    def parse(line_no: int, raw: bytes) -> tuple[dict, bool]:
        impression, rating = _parse(raw, line_no)
        return impression, rating >= click_threshold

    return impressions_with_clicks(lines, source, parse)


def _parse(raw: bytes, line_no: int) -> tuple[dict, int]:
    text = decode_line(raw)
    fields = text.split("::") if "::" in text else text.split("\t")
    if len(fields) != 4:
        raise BadLine(f"expected 4 fields (user, item, rating, timestamp), got {len(fields)}")
    user, item, rating, ts = fields
    rating_value = parse_int(rating, "rating", 0, 10)
    seconds = parse_int(ts, "timestamp", MIN_EVENT_TIME_MS // 1000, MAX_EVENT_TIME_MS // 1000 - 1)
    impression = {
        "type": "impression",
        "impression_id": str(line_no),
        "request_id": str(line_no),
        "user_id": require_id(user, "user_id"),
        "item_id": require_id(item, "item_id"),
        "position": 0,
        "event_time": seconds * 1000,
        "rating": rating_value,
    }
    return validate_event(impression), rating_value
