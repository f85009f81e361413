"""Retention: keep the newest N model versions, training sets and run folders, and never what serves.

``gc(settings, dry_run)`` is the one entry point (``ctrflow gc`` and the end of every continual-training
flow run call it). What is always kept, whatever the limits:

- the champion (``training.registry.read_champion_pointer``) and its whole parent chain (each version's
  ``parent``), so a rollback or a lineage audit always finds its versions;
- every version that was champion before (``ctrflow models rollback`` steps back to them), and theirs;
- the training sets and holdouts of every kept version (``evaluate`` and the gate re-read them) and the
  one ``LATEST`` points to (the next training run reads it);
- the run folders named after a kept version (its training report).

An unreadable champion pointer stops the whole collection before anything is removed: without it there is
no telling what serves. Folders whose name starts with "." are writes in progress and are never touched.
"""

from __future__ import annotations

import shutil
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from pipelines.settings import Settings
from training import registry
from training.artifacts import VersionConfig, list_versions
from training.registry import read_champion_pointer

GC_REPORT_FORMAT_VERSION = 1


class RetentionError(RuntimeError):
    """Retention cannot decide safely what to keep (e.g. a damaged champion pointer)."""


@dataclass(frozen=True)
class GcReport:
    """What a collection removed (or, with ``dry_run``, would remove) and what it had to keep."""

    dry_run: bool
    champion: str | None
    protected_versions: tuple[str, ...]
    protected_datasets: tuple[str, ...]
    removed_versions: tuple[str, ...]
    removed_datasets: tuple[str, ...]
    removed_runs: tuple[str, ...]
    freed_bytes: int
    format: int = GC_REPORT_FORMAT_VERSION

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _lineage(champions: list[str], configs: dict[str, VersionConfig]) -> list[str]:
    """Each champion, its parent, that one's parent ... as far as the versions still exist."""
    chain: list[str] = []
    for champion in champions:
        current: str | None = champion
        while current is not None and current in configs and current not in chain:
            chain.append(current)
            current = configs[current].parent
    return chain


def _newest(names: list[str], keep: int) -> set[str]:
    return set(names[-keep:])


def _size(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def _run_folders(settings: Settings) -> list[str]:
    root = settings.runs_dir
    if not root.is_dir():
        return []
    folders = [p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")]
    return [p.name for p in sorted(folders, key=lambda p: (p.stat().st_mtime, p.name))]


def gc(settings: Settings, dry_run: bool = False) -> GcReport:
    """Apply ``keep_versions`` / ``keep_datasets`` / ``keep_runs``; see the module docstring."""
    # Imported here: features.datasets pulls in Feast, which nothing else in retention needs.
    from features.datasets import latest_name_or_none, list_datasets

    try:
        pointer = read_champion_pointer(settings)
    except (ValueError, TypeError, KeyError, AttributeError) as exc:
        raise RetentionError(f"champion pointer is unreadable ({exc}); nothing was removed") from None
    champion = pointer.version if pointer else None
    configs = {c.version: c for c in list_versions(settings)}
    # Every version that was ever champion too: `ctrflow models rollback` steps back to them.
    champions = [champion] if champion else []
    if registry.db_path(settings).exists():
        champions += [e.version for e in reversed(registry.history(settings)) if e.version not in champions]
    lineage = _lineage(champions, configs)
    kept_versions = _newest(list(configs), settings.keep_versions) | set(lineage)

    # A kept version's training set and holdout stay with it (`evaluate` and the gate re-read them).
    protected_datasets = {part.dataset for v in kept_versions
                          for part in (configs[v].train, configs[v].holdout) if part is not None}
    protected_datasets.add(latest_name_or_none(settings))
    protected_datasets.discard(None)
    datasets = list_datasets(settings)
    kept_datasets = _newest(datasets, settings.keep_datasets) | protected_datasets

    runs = _run_folders(settings)
    kept_runs = _newest(runs, settings.keep_runs) | kept_versions

    doomed = ([settings.registry_dir / v for v in configs if v not in kept_versions]
              + [settings.datasets_dir / d for d in datasets if d not in kept_datasets]
              + [settings.runs_dir / r for r in runs if r not in kept_runs])
    freed = sum(_size(p) for p in doomed)
    if not dry_run:
        for path in doomed:
            shutil.rmtree(path)
        registry.mark_pruned(settings, [v for v in configs if v not in kept_versions])
    return GcReport(
        dry_run=dry_run,
        champion=champion,
        protected_versions=tuple(lineage),
        protected_datasets=tuple(sorted(protected_datasets)),
        removed_versions=tuple(v for v in configs if v not in kept_versions),
        removed_datasets=tuple(d for d in datasets if d not in kept_datasets),
        removed_runs=tuple(r for r in runs if r not in kept_runs),
        freed_bytes=freed,
    )
