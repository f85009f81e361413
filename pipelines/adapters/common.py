"""What every format adapter shares: the record kinds it yields and small parsing helpers.

An adapter is a pure generator from ``(line_number, raw_bytes)`` pairs (see ``logfile.iter_lines``) to
canonical event dicts, ``DeadLetter`` records for malformed lines and ``Skipped`` markers for valid lines
that deliberately produce no event (a header, a Taobao ``cart``): nothing vanishes without a count.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipelines.events import MAX_ID_LENGTH, DeadLetter, MalformedEvent

# Formats without click times get the click this long after its impression.
CLICK_DELAY_MS = 1_000
HOUR_MS = 3_600_000


@dataclass(frozen=True)
class Skipped:
    """A well-formed source line that maps to no event, and why."""

    line: int
    reason: str


AdapterOutput = dict[str, Any] | DeadLetter | Skipped
AdapterStream = Iterator[AdapterOutput]


class BadLine(ValueError):
    """Raised inside an adapter's line parser; becomes a DeadLetter with this message."""


class SkipLine(Exception):
    """Raised inside an adapter's line parser for a well-formed line that maps to no event."""


def dead_letter(source: str, line_no: int, error: str, raw: bytes) -> DeadLetter:
    return DeadLetter(source=source, partition=-1, offset=line_no, error=error, raw=raw)


def decode_line(raw: bytes) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise BadLine(f"not UTF-8: {exc.reason} at byte {exc.start}") from None


def split_fields(text: str, sep: str, expected: int) -> list[str]:
    fields = text.split(sep)
    if len(fields) != expected:
        raise BadLine(f"expected {expected} fields separated by {sep!r}, got {len(fields)}")
    return fields


def parse_int(value: str, name: str, low: int | None = None, high: int | None = None) -> int:
    try:
        number = int(value)
    except ValueError:
        raise BadLine(f"field '{name}' is not an integer: {value!r:.40}") from None
    if (low is not None and number < low) or (high is not None and number > high):
        raise BadLine(f"field '{name}' = {number} is outside [{low}, {high}]")
    return number


def hour_of(event_time_ms: int) -> int:
    """The UTC hour of day (0..23) of a time in ms: every adapter's ``hour`` field."""
    return (event_time_ms // HOUR_MS) % 24


def read_side_table(path: Path | str, parse: Callable[[str], tuple[str, Any]]) -> dict[str, Any]:
    """A side file (MIND news.tsv, MovieLens u.item ...) as {key: value}; ``parse`` maps one decoded line
    to (key, value) or raises BadLine. Side files are small and their lines are all needed, so a bad line
    is an error naming the file and line (a ``ValueError``), not a dead letter. Lines that are not UTF-8
    are read as Latin-1: the MovieLens item files are Latin-1 encoded (accented titles)."""
    table: dict[str, Any] = {}
    with open(path, "rb") as handle:
        for number, raw in enumerate(handle, 1):
            raw = raw.rstrip(b"\r\n")
            if not raw.strip():
                continue
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError:
                text = raw.decode("latin-1")
            try:
                key, value = parse(text)
            except BadLine as exc:
                raise ValueError(f"{path}:{number}: {exc}") from None
            table[key] = value
    return table


def require_id(value: str, name: str) -> str:
    if not value or len(value) > MAX_ID_LENGTH:
        raise BadLine(f"field '{name}' must be 1..{MAX_ID_LENGTH} characters")
    return value


# A line parser of the one-impression-per-line formats: (line number, raw bytes) -> (impression, clicked).
LineParser = Callable[[int, bytes], tuple[dict[str, Any], bool]]


def impressions_with_clicks(
    lines: Iterable[tuple[int, bytes]], source: str, parse: LineParser
) -> AdapterStream:
    """The loop of formats where each line is one impression with a click flag (Criteo, Avazu, MovieLens):
    a malformed line becomes a dead letter with its reason, a clicked impression is followed by its click."""
    for line_no, raw in lines:
        try:
            impression, clicked = parse(line_no, raw)
        except SkipLine as skip:
            yield Skipped(line_no, str(skip))
            continue
        except (BadLine, MalformedEvent) as exc:
            yield dead_letter(source, line_no, str(exc), raw)
            continue
        yield impression
        if clicked:
            yield click_for(impression)


def click_for(impression: dict[str, Any], delay_ms: int = CLICK_DELAY_MS) -> dict[str, Any]:
    """The click event of an impression, ``delay_ms`` later."""
    return {
        "type": "click",
        "impression_id": impression["impression_id"],
        "user_id": impression["user_id"],
        "item_id": impression["item_id"],
        "event_time": impression["event_time"] + delay_ms,
    }
