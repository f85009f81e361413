"""Converting a click log into a canonical, event-time-ordered log: the use case behind `ctrflow convert`.

``convert_log`` reads a public format through its adapter (or a canonical log, to re-sort it or change
JSONL <-> Parquet), sorts the events by event time in bounded memory and writes OUT. Malformed lines go to
``OUT.deadletter.jsonl`` with their line numbers and reasons. Both files are written next to OUT under
temporary names and renamed on success, so a failed run leaves no truncated log behind and an existing OUT
intact.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

from pipelines.adapters import adapt_file
from pipelines.events import DeadLetter
from pipelines.logfile import LogWriter, iter_events, log_format, sort_by_event_time
from pipelines.replay import FORMATS

WRITE_BATCH = 50_000  # records per write (and per progress report)


@dataclass(frozen=True)
class ConvertReport:
    """What a conversion wrote."""

    out: Path
    events: int
    dead_lettered: int  # malformed lines, kept in ``dead_letter_path``
    skipped: int  # lines that are deliberately not events (e.g. a format's header or non-click actions)
    extra_fields_dropped: int  # records whose fields beyond the canonical columns a Parquet OUT lost
    dead_letter_path: Path | None  # None when no line was malformed (no file is left then)

    def counts(self) -> dict[str, int]:
        """The three counts scripts read (``ctrflow convert --json``)."""
        return {"events": self.events, "dead_lettered": self.dead_lettered, "skipped": self.skipped}


def dead_letter_path(out: Path) -> Path:
    """Where the malformed lines of a conversion to ``out`` are kept."""
    return out.with_name(out.name + ".deadletter.jsonl")


def convert_log(
    fmt: str,
    source: Path,
    out: Path,
    *,
    options: Mapping[str, object] | None = None,
    on_progress: Callable[[int], None] | None = None,
) -> ConvertReport:
    """Convert ``source`` (in ``fmt``, one of ``FORMATS``) into the canonical log ``out`` (.jsonl/.parquet).

    ``options`` go to the format's adapter (Taobao's ``negatives``/``seed``, side files); ``on_progress``
    gets the number of records written after each write. Raises ValueError, before anything is written,
    for a bad format, an OUT that would overwrite the input or is a directory, or an input whose format
    cannot be read; a failure while converting (a malformed file, a full disk) is a ValueError saying that
    OUT was not written, with the original error as its cause.
    """
    if fmt not in FORMATS:
        raise ValueError(f"unknown format {fmt!r}: expected one of {list(FORMATS)}")
    dead_path = dead_letter_path(out)
    if source.resolve() in (out.resolve(), dead_path.resolve()):
        raise ValueError(f"{out} would overwrite the input {source}: write the converted log to another path")
    if out.is_dir():
        raise ValueError(f"{out} is a directory: give the path of the log file to write")
    log_format(out)
    stream = _source_stream(fmt, source, dict(options or {}))

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp_out, tmp_dead = _temp_path(out, out.suffix), _temp_path(out, ".deadletter.jsonl")
    counts = {"dead_lettered": 0, "skipped": 0}
    try:
        with LogWriter(tmp_out) as writer, open(tmp_dead, "wb") as dead:
            events = _events_only(stream, dead, counts)
            for batch in _batches(sort_by_event_time(events)):
                writer.write_records(batch)
                if on_progress:
                    on_progress(len(batch))
        os.replace(tmp_out, out)
        if counts["dead_lettered"]:
            os.replace(tmp_dead, dead_path)
        else:
            dead_path.unlink(missing_ok=True)  # a previous run's dead letters do not describe this OUT
    except (ValueError, OSError) as exc:
        raise ValueError(f"converting {source} failed, {out} not written: {exc}") from exc
    finally:
        tmp_out.unlink(missing_ok=True)  # no-ops after the renames
        tmp_dead.unlink(missing_ok=True)
    return ConvertReport(
        out=out, events=writer.rows, dead_lettered=counts["dead_lettered"], skipped=counts["skipped"],
        extra_fields_dropped=writer.extra_fields_dropped,
        dead_letter_path=dead_path if counts["dead_lettered"] else None,
    )


def _source_stream(fmt: str, source: Path, options: dict[str, object]) -> Iterable[Any]:
    """The source's events, dead letters and skip markers. Lazy, but the input's format (and its side
    files) are checked here, before anything is written."""
    if fmt == "canonical":
        log_format(source)
        return iter_events(source)
    return adapt_file(fmt, source, **options)


def _events_only(stream: Iterable[Any], dead: BinaryIO, counts: dict[str, int]) -> Iterator[dict[str, Any]]:
    """The event dicts of ``stream``; dead letters are written to ``dead`` and counted, skips counted."""
    for item in stream:
        if isinstance(item, dict):
            yield item
        elif isinstance(item, DeadLetter):
            dead.write(item.to_json() + b"\n")
            counts["dead_lettered"] += 1
        else:
            counts["skipped"] += 1


def _batches(records: Iterable[dict[str, Any]]) -> Iterator[list[dict[str, Any]]]:
    batch: list[dict[str, Any]] = []
    for record in records:
        batch.append(record)
        if len(batch) >= WRITE_BATCH:
            yield batch
            batch = []
    yield batch  # possibly empty: an empty log still gets its file (and schema)


def _temp_path(out: Path, suffix: str) -> Path:
    """A hidden file next to ``out`` (same file system, so the final rename is atomic), this process's own."""
    return out.with_name(f".{out.name}.{os.getpid()}.partial{suffix}")
