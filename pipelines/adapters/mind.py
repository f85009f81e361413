"""MIND news-recommendation ``behaviors.tsv``
(``impression_id<TAB>user_id<TAB>time<TAB>history<TAB>impressions``, time like ``11/15/2019 8:55:22 AM``),
optionally joined with the same split's ``news.tsv``
(``NewsID<TAB>Category<TAB>SubCategory<TAB>Title<TAB>Abstract<TAB>URL<TAB>TitleEntities<TAB>AbstractEntities``).

- Each row is one request (request id = MIND impression id); each ``N…-1`` / ``N…-0`` token is an
  impression, with a click ``CLICK_DELAY_MS`` later when the suffix is 1. Impression ids are
  ``<request>-<position>``. Tokens without a ``-0/1`` label (the MIND test split) are impressions
  without click information and are rejected as malformed: a CTR log needs the label.
- ``position`` is the candidate's index in the row's impression list. MIND does not say the list is a
  screen order (it is the order of the log), so position is a weak, possibly meaningless signal; and
  the largest position of a request gives away how many candidates it had, which correlates with
  the label (one click among more candidates). The size is therefore emitted plainly as
  ``request_size``, so a model that wants it reads it as a feature, not through the position.
- With ``news`` (a news.tsv path), every impression and click carries its news item's ``category`` and
  ``subcategory``; news ids missing from the file keep neither (no invented values). Titles, abstracts
  and entities are not carried (text, not categorical context).
- ``history`` (news the user clicked before the log starts) becomes earlier clicks: the first time a user
  appears, one click per history item, 1 s apart and ending 1 s before that row's time, with impression
  id ``h<user>-<j>`` (there is no real impression behind them, so they feed behaviour sequences, not
  labels). Later rows of the same user repeat the same history and add nothing.
- MIND times carry no zone; they are read as UTC, and ``hour`` is that hour of day.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from pathlib import Path

from pipelines.adapters.common import (
    AdapterStream,
    BadLine,
    click_for,
    dead_letter,
    decode_line,
    hour_of,
    read_side_table,
    require_id,
    split_fields,
)
from pipelines.events import MalformedEvent, validate_event

TIME_FORMAT = "%m/%d/%Y %I:%M:%S %p"
NEWS_COLUMNS = ("NewsID", "Category", "SubCategory", "Title", "Abstract", "URL", "TitleEntities",
                "AbstractEntities")


def adapt(lines: Iterable[tuple[int, bytes]], source: str, news: Path | str | None = None) -> AdapterStream:
    """The events of a behaviors file; ``news`` is read before the first line (a bad news.tsv is a
    ``ValueError`` naming its line, before anything is produced)."""
    side = load_news(news) if news is not None else {}
    return _events(lines, source, side)


def load_news(path: Path | str) -> dict[str, dict[str, str]]:
    """news.tsv as {news id: {"category", "subcategory"}} (empty values left out)."""

    def parse(text: str) -> tuple[str, dict[str, str]]:
        fields = split_fields(text, "\t", len(NEWS_COLUMNS))
        news_id = require_id(fields[0], "NewsID")
        side = {"category": fields[1], "subcategory": fields[2]}
        return news_id, {k: v for k, v in side.items() if v}

    return read_side_table(path, parse)


def _events(
    lines: Iterable[tuple[int, bytes]], source: str, news: Mapping[str, dict[str, str]]
) -> AdapterStream:
    users_seen: set[str] = set()
    for line_no, raw in lines:
        try:
            events = _parse(raw, users_seen, news)
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


def _parse(raw: bytes, users_seen: set[str], news: Mapping[str, dict[str, str]]) -> list[dict]:
    request_id, user, when, history, tokens = split_fields(decode_line(raw), "\t", 5)
    request_id, user = require_id(request_id, "impression_id"), require_id(user, "user_id")
    event_time = parse_time(when)
    shown = tokens.split()
    if not shown:
        raise BadLine("no impressions in the row")
    events: list[dict] = []
    impressions: list[tuple[dict, bool]] = []
    for position, token in enumerate(shown):
        item, sep, label = token.rpartition("-")
        if not sep or label not in ("0", "1"):
            raise BadLine(f"impression token {token!r:.40} is not <news id>-<0|1>")
        item = require_id(item, "news id")
        impression = {
            "type": "impression",
            "impression_id": f"{request_id}-{position}",
            "request_id": request_id,
            "user_id": user,
            "item_id": item,
            "position": position,
            "request_size": len(shown),
            "event_time": event_time,
            "hour": hour_of(event_time),
            **news.get(item, {}),
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
                        **news.get(item, {}),
                    }
                )
            )
    for impression, clicked in impressions:
        events.append(impression)
        if clicked:
            events.append(click_for(impression))
    users_seen.add(user)
    return events
