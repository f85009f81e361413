"""Taobao UserBehavior CSV (``user_id,item_id,category_id,behavior_type,timestamp``, unix seconds).

UserBehavior has no impressions, so they are synthesised (documented negative sampling):

- Each ``pv`` (an item detail view, which Tianchi equates with a click) becomes one request of
  ``1 + negatives`` impressions at the pv's second: the viewed item plus ``negatives`` (default 4)
  distinct other items drawn uniformly from the items of the last ``pool_lines`` (default 2,000) lines,
  i.e. items seen in the same time window of the time-ordered stream (frequency-weighted, so popular
  items are drawn more often, as they are shown more often). The viewed item takes a random position.
  While the pool is still filling (the first lines of a file), a request can have fewer negatives.
- The pv itself is the click on the viewed item, ``CLICK_DELAY_MS`` after the impression.
- ``cart``, ``fav`` and ``buy`` are not impressions: they are ``Skipped`` (counted, not produced), but
  their items still enter the negative pool.
- Ids: request id = the 1-based line number; impression id = ``<line><slot:02d>`` (decimal strings).
  ``category`` = the category id; ``hour`` = the UTC hour of the pv (Taobao's timestamps are UTC, the
  log's days are China time: 16:00 UTC is midnight there); ``request_size`` = the impressions of the
  request. Sampling is seeded, so a file always converts to the same events.
"""

from __future__ import annotations

import random
from collections import deque
from collections.abc import Iterable

from pipelines.adapters.common import (
    CLICK_DELAY_MS,
    AdapterStream,
    BadLine,
    Skipped,
    click_for,
    dead_letter,
    decode_line,
    hour_of,
    parse_int,
    require_id,
    split_fields,
)
from pipelines.events import MAX_EVENT_TIME_MS, MIN_EVENT_TIME_MS, MalformedEvent

BEHAVIORS = ("pv", "cart", "fav", "buy")


def adapt(
    lines: Iterable[tuple[int, bytes]],
    source: str,
    negatives: int = 4,
    pool_lines: int = 2_000,
    seed: int = 0,
) -> AdapterStream:
    if not 0 <= negatives <= 99:
        raise ValueError("negatives must be in 0..99 (impression ids keep two digits for the slot)")
    if pool_lines < 1:
        raise ValueError("pool_lines must be >= 1")
    rng = random.Random(seed)
    pool: deque[tuple[str, str]] = deque(maxlen=pool_lines)
    for line_no, raw in lines:
        try:
            user, item, category, behavior, seconds = _parse(raw)
        except (BadLine, MalformedEvent) as exc:
            yield dead_letter(source, line_no, str(exc), raw)
            continue
        if behavior != "pv":
            pool.append((item, category))
            yield Skipped(line_no, f"behavior {behavior!r} is not an impression")
            continue
        shown = [(item, category), *_sample_negatives(rng, pool, item, negatives)]
        pool.append((item, category))
        clicked_slot = rng.randrange(len(shown))
        shown[0], shown[clicked_slot] = shown[clicked_slot], shown[0]
        time_ms = seconds * 1000
        for slot, (shown_item, shown_category) in enumerate(shown):
            impression = {
                "type": "impression",
                "impression_id": f"{line_no}{slot:02d}",
                "request_id": str(line_no),
                "user_id": user,
                "item_id": shown_item,
                "position": slot,
                "category": shown_category,
                "event_time": time_ms,
                "hour": hour_of(time_ms),
                "request_size": len(shown),
            }
            yield impression
            if slot == clicked_slot:
                clicked = impression
        yield click_for(clicked, CLICK_DELAY_MS)


def _parse(raw: bytes) -> tuple[str, str, str, str, int]:
    user, item, category, behavior, ts = split_fields(decode_line(raw), ",", 5)
    if behavior not in BEHAVIORS:
        raise BadLine(f"unknown behavior_type {behavior!r:.20}: expected one of {list(BEHAVIORS)}")
    seconds = parse_int(ts, "timestamp", MIN_EVENT_TIME_MS // 1000, MAX_EVENT_TIME_MS // 1000 - 1)
    user, item, category = require_id(user, "user_id"), require_id(item, "item_id"), require_id(
        category, "category_id"
    )
    # Ids within the contract's length and a bounded timestamp: the derived events are valid as built.
    return user, item, category, behavior, seconds


def _sample_negatives(
    rng: random.Random, pool: deque[tuple[str, str]], clicked: str, k: int
) -> list[tuple[str, str]]:
    """Up to ``k`` distinct items from the pool, never the clicked one (bounded number of tries)."""
    chosen: dict[str, str] = {}
    if not pool:
        return []
    for _ in range(4 * k + 8):
        if len(chosen) == k:
            break
        item, category = pool[rng.randrange(len(pool))]
        if item != clicked:
            chosen.setdefault(item, category)
    return list(chosen.items())
