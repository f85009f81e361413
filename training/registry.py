"""Model registry: which version serves, and how that changes.

The champion pointer is a small JSON file replaced by atomic rename. The serving stub polls it and never
opens the registry's DuckDB file, so CLI writers are never locked out by a running server.
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

from pipelines.settings import Settings

POINTER_FILE = "champion.json"
POINTER_FORMAT_VERSION = 1


@dataclass(frozen=True)
class ChampionPointer:
    """What serving reads: the version to serve, its served model's name and when it was promoted."""

    version: str
    model: str
    promoted_at: str
    feature_service: str | None = None
    format: int = POINTER_FORMAT_VERSION

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> ChampionPointer:
        data = json.loads(text)
        if data.get("format") != POINTER_FORMAT_VERSION:
            raise ValueError(f"champion pointer format {data.get('format')!r} != {POINTER_FORMAT_VERSION}")
        return cls(**data)


def pointer_path(settings: Settings) -> Path:
    return settings.registry_dir / POINTER_FILE


def read_champion_pointer(settings: Settings) -> ChampionPointer | None:
    """The current champion, or None when nothing was ever promoted."""
    path = pointer_path(settings)
    if not path.is_file():
        return None
    return ChampionPointer.from_json(path.read_text())


def write_champion_pointer(settings: Settings, pointer: ChampionPointer | None) -> None:
    """Replace the pointer atomically (temp file + rename); None removes it (no champion)."""
    path = pointer_path(settings)
    path.parent.mkdir(parents=True, exist_ok=True)
    if pointer is None:
        path.unlink(missing_ok=True)
        return
    fd, tmp = tempfile.mkstemp(prefix=".champion-", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(pointer.to_json() + "\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
