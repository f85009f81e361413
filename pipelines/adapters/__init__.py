"""Adapters from public click-log formats to canonical events, one module per format.

``adapt_file(fmt, path)`` streams a file through its adapter: canonical event dicts (already validated),
``DeadLetter`` records for malformed lines and ``Skipped`` markers for lines that are deliberately not
events. Adapter output is not necessarily in event-time order (Avazu spreads rows inside their hour,
MovieLens files are not sorted); ``logfile.sort_by_event_time`` orders it in bounded memory.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from pipelines.adapters import avazu, criteo, mind, movielens, taobao
from pipelines.adapters.common import AdapterStream, Skipped
from pipelines.logfile import iter_lines

ADAPTERS: dict[str, Callable[..., AdapterStream]] = {
    "taobao": taobao.adapt,
    "criteo": criteo.adapt,
    "avazu": avazu.adapt,
    "mind": mind.adapt,
    "movielens": movielens.adapt,
}


def adapt_file(fmt: str, path: Path | str, **options: object) -> AdapterStream:
    if fmt not in ADAPTERS:
        raise ValueError(f"unknown format {fmt!r}: expected one of {list(ADAPTERS)}")
    return ADAPTERS[fmt](iter_lines(path), str(path), **options)


__all__ = ["ADAPTERS", "Skipped", "adapt_file"]
