"""The canonical event contract: every kind of malformed record gets a precise reason."""

from __future__ import annotations

import pytest

from pipelines.events import (
    MAX_RECORD_BYTES,
    DeadLetter,
    MalformedEvent,
    decode_event,
    encode_event,
    stable_int_id,
    validate_event,
)

GOOD_IMPRESSION = {
    "type": "impression", "impression_id": "1", "request_id": "1", "user_id": "7", "item_id": "9",
    "position": 0, "category": "3", "hour": 12, "device": "mobile", "page": "home",
    "event_time": 1_767_571_214_359, "p_click": 0.25,
}
GOOD_CLICK = {
    "type": "click", "impression_id": "1", "user_id": "7", "item_id": "9", "event_time": 1_767_571_215_000
}


def _without(record: dict, field: str) -> dict:
    return {k: v for k, v in record.items() if k != field}


def test_good_events_pass_unchanged() -> None:
    assert validate_event(dict(GOOD_IMPRESSION)) == GOOD_IMPRESSION
    assert decode_event(encode_event(GOOD_CLICK)) == GOOD_CLICK
    # Extra context fields pass through untouched.
    assert validate_event({**GOOD_CLICK, "campaign": "x"})["campaign"] == "x"


@pytest.mark.parametrize(
    ("record", "reason"),
    [
        ({**GOOD_IMPRESSION, "type": "view"}, "unknown type 'view'"),
        (_without(GOOD_IMPRESSION, "type"), "unknown type None"),
        (_without(GOOD_IMPRESSION, "request_id"), "missing required field 'request_id'"),
        (_without(GOOD_CLICK, "impression_id"), "missing required field 'impression_id'"),
        ({**GOOD_IMPRESSION, "user_id": None}, "missing required field 'user_id'"),
        ({**GOOD_IMPRESSION, "position": "3"}, "field 'position' must be int, got str"),
        ({**GOOD_IMPRESSION, "event_time": 1.7e12}, "field 'event_time' must be int, got float"),
        ({**GOOD_IMPRESSION, "user_id": 7}, "field 'user_id' must be str, got int"),
        ({**GOOD_IMPRESSION, "position": True}, "field 'position' must be int, got bool"),
        ({**GOOD_IMPRESSION, "hour": "12"}, "field 'hour' must be int, got str"),
        ({**GOOD_IMPRESSION, "item_id": ""}, "field 'item_id' must be 1..256 characters"),
        ({**GOOD_IMPRESSION, "item_id": "x" * 257}, "field 'item_id' must be 1..256 characters"),
        ({**GOOD_IMPRESSION, "event_time": -5}, "event_time -5 is outside"),
        ({**GOOD_IMPRESSION, "event_time": 1_767_571_214}, "in seconds instead of milliseconds"),
        ({**GOOD_IMPRESSION, "event_time": 10**17}, "is outside"),
        ({**GOOD_IMPRESSION, "position": -1}, "position -1 is outside"),
        ({**GOOD_IMPRESSION, "hour": 24}, "hour 24 is outside"),
        ({**GOOD_IMPRESSION, "p_click": 1.5}, "p_click 1.5 is not a probability"),
        ({**GOOD_IMPRESSION, "p_click": float("nan")}, "p_click nan is not a probability"),
        (["impression"], "record must be a JSON object, got list"),
    ],
)
def test_malformed_records_name_their_reason(record: object, reason: str) -> None:
    with pytest.raises(MalformedEvent, match=reason.replace("(", r"\(").replace(")", r"\)")):
        validate_event(record)


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        (b"\xff\xfe{}", "not UTF-8"),
        (b'{"type": "impression", "impression_id": "1"', "invalid JSON"),
        (b"", "invalid JSON"),
        (b"x" * (MAX_RECORD_BYTES + 1), "exceeds"),
    ],
)
def test_undecodable_lines_name_their_reason(raw: bytes, reason: str) -> None:
    with pytest.raises(MalformedEvent, match=reason):
        decode_event(raw)


@pytest.mark.parametrize(
    "raw",
    [b'{"broken', b'{"a":"\xff\xfe"}', b"\\xff", b"\xed\xb2\x80", "\u00e9\u20ac".encode(), bytes(range(256))],
)
def test_dead_letter_round_trips_raw_bytes_and_reason(raw: bytes) -> None:
    letter = DeadLetter("log.jsonl", -1, 42, "invalid JSON", raw)
    encoded = letter.to_json()
    encoded.decode("ascii")  # plain JSON text, whatever the raw bytes
    assert DeadLetter.from_json(encoded) == letter


def test_stable_int_id_keeps_decimal_ids_readable_and_hashes_others() -> None:
    assert stable_int_id("12345") == 12345
    hashed = stable_int_id("N55689")
    assert hashed == stable_int_id("N55689") and 0 <= hashed < 2**63 and hashed != stable_int_id("N55690")
