"""MIND news-recommendation ``behaviors.tsv``
(``impression_id<TAB>user_id<TAB>time<TAB>history<TAB>impressions``, time like ``11/15/2019 8:55:22 AM``).

- Each row is one request (request id = MIND impression id); each ``N…-1`` / ``N…-0`` token is an
  impression at its position, with a click ``CLICK_DELAY_MS`` later when the suffix is 1. Impression ids
  are ``<request>-<position>``. Tokens without a ``-0/1`` label (the MIND test split) are impressions
  without click information and are rejected as malformed: a CTR log needs the label.
- ``history`` (news the user clicked before the log starts) becomes earlier clicks: the first time a user
  appears, one click per history item, 1 s apart and ending 1 s before that row's time, with impression
  id ``h<user>-<j>`` (there is no real impression behind them, so they feed behaviour sequences, not
  labels). Later rows of the same user repeat the same history and add nothing.
- MIND times carry no zone; they are read as UTC.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import UTC, datetime

from pipelines.adapters.common import (
    AdapterStream,
    BadLine,
    click_for,
    dead_letter,
    decode_line,
    require_id,
    split_fields,
)
from pipelines.events import MalformedEvent, validate_event

TIME_FORMAT = "%m/%d/%Y %I:%M:%S %p"


def adapt(lines: Iterable[tuple[int, bytes]], source: str) -> AdapterStream:
    users_seen: set[str] = set()
    for line_no, raw in lines:
        try:
            events = _parse(raw, users_seen)
        except (BadLine, MalformedEvent) as exc:
            yield dead_letter(source, line_no, str(exc), raw)
            continue
        yield from events


def parse_time(value: str) -> int:
    try:
        when = datetime.strptime(value, TIME_FORMAT).replace(tzinfo=UTC)
    except ValueError:
        raise BadLine(f"time {value!r:.40} is not like '11/15/2019 8:55:22 AM'") from None
    return int(when.timestamp() * 1000)


def _parse(raw: bytes, users_seen: set[str]) -> list[dict]:
    request_id, user, when, history, tokens = split_fields(decode_line(raw), "\t", 5)
    request_id, user = require_id(request_id, "impression_id"), require_id(user, "user_id")
    event_time = parse_time(when)
    if not tokens.strip():
        raise BadLine("no impressions in the row")
    events: list[dict] = []
    impressions: list[tuple[dict, bool]] = []
    for position, token in enumerate(tokens.split()):
        item, sep, label = token.rpartition("-")
        if not sep or label not in ("0", "1"):
            raise BadLine(f"impression token {token!r:.40} is not <news id>-<0|1>")
        impression = {
            "type": "impression",
            "impression_id": f"{request_id}-{position}",
            "request_id": request_id,
            "user_id": user,
            "item_id": require_id(item, "news id"),
            "position": position,
            "event_time": event_time,
        }
        impressions.append((validate_event(impression), label == "1"))
    if user not in users_seen:
        clicked_before = history.split()
        for j, item in enumerate(clicked_before):
            events.append(
                validate_event(
                    {
                        "type": "click",
                        "impression_id": f"h{user}-{j}",
                        "user_id": user,
                        "item_id": item,
                        "event_time": event_time - (len(clicked_before) - j) * 1000,
                    }
                )
            )
    for impression, clicked in impressions:
        events.append(impression)
        if clicked:
            events.append(click_for(impression))
    users_seen.add(user)
    return events
