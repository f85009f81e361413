"""The micro-batch watermark: the event time before which every partition's events have arrived.

Each partition is read in event-time order (producers key by user and replay in time order), so a
partition's progress is the largest event time read from it. The watermark is the minimum progress over
partitions that still have unread records; partitions that are caught up (idle) do not hold it back.
When every partition is caught up it is the largest progress seen. It never goes backwards.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import apache_beam as beam


def merge_progress(previous: Mapping[str, int], batch: Mapping[str, int]) -> dict[str, int]:
    merged = dict(previous)
    for key, value in batch.items():
        merged[key] = max(value, merged.get(key, value))
    return merged


def next_watermark(
    progress: Mapping[str, int], lagging: Iterable[str], previous_ms: int | None
) -> int | None:
    """Watermark from per-partition progress; ``lagging`` are partitions with records left to read."""
    behind = [progress[k] for k in lagging if k in progress]
    if behind:
        candidate = min(behind)
    elif progress:
        candidate = max(progress.values())
    else:
        return previous_ms
    return candidate if previous_ms is None else max(candidate, previous_ms)


class WatermarkFn(beam.CombineFn):
    """Combines (partition key, max event time) pairs of one batch into the batch's watermark."""

    def __init__(self, previous: Mapping[str, int], lagging: list[str], previous_ms: int | None):
        self.previous = dict(previous)
        self.lagging = list(lagging)
        self.previous_ms = previous_ms

    def create_accumulator(self) -> dict[str, int]:
        return {}

    def add_input(self, acc: dict[str, int], element: tuple[str, int | None]) -> dict[str, int]:
        key, value = element
        if value is not None:
            acc[key] = max(value, acc.get(key, value))
        return acc

    def merge_accumulators(self, accumulators: Iterable[dict[str, int]]) -> dict[str, int]:
        out: dict[str, int] = {}
        for acc in accumulators:
            out = merge_progress(out, acc)
        return out

    def extract_output(self, acc: dict[str, int]) -> int | None:
        return next_watermark(merge_progress(self.previous, acc), self.lagging, self.previous_ms)
