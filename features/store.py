"""Building the Feast FeatureStore from the one settings object (profile local or compose).

The configuration is the same as ``features/feature_repo/feature_store*.yaml`` with every path made
absolute from ``settings``; ``render_feature_store_yaml`` writes it to ``settings.feast_dir`` so the
``feast`` CLI can be pointed at exactly what ctrflow uses:
``feast -c features/feature_repo -f $CTRFLOW_HOME/feast/feature_store.yaml apply``.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import yaml
from feast import FeatureService, FeatureStore, RepoConfig

from features.feature_repo.definitions import PROJECT, build_definitions
from features.sqlite_online import STORE_TYPE as BATCHED_SQLITE
from pipelines.settings import Settings

REPO_DIR = Path(__file__).resolve().parent / "feature_repo"

_lock = threading.Lock()
_stores: dict[tuple[str, str, str], FeatureStore] = {}
_services: dict[tuple[int, str], FeatureService] = {}


class FeatureStoreNotReady(RuntimeError):
    """The warehouse has no data for a table the feature store needs."""


def registry_path(settings: Settings) -> Path:
    return settings.feast_dir / "registry.db"


def online_path(settings: Settings) -> Path:
    return settings.feast_dir / "online.db"


def repo_config_dict(settings: Settings) -> dict[str, Any]:
    """The feature_store.yaml content for the settings' profile, with absolute paths."""
    if settings.feast_profile == "compose":
        online: dict[str, Any] = {"type": "redis", "connection_string": settings.redis_connection}
    else:
        # Feast's SQLite layout, written in one executemany per push (features/sqlite_online.py).
        online = {"type": BATCHED_SQLITE, "path": str(online_path(settings))}
    return {
        "project": PROJECT,
        "provider": "local",
        "registry": {"registry_type": "file", "path": str(registry_path(settings)), "cache_ttl_seconds": 60},
        "online_store": online,
        "offline_store": {"type": "duckdb"},
        "entity_key_serialization_version": 3,
    }


def render_feature_store_yaml(settings: Settings) -> Path:
    """Write the effective feature_store.yaml to ``settings.feast_dir`` and return its path."""
    settings.feast_dir.mkdir(parents=True, exist_ok=True)
    path = settings.feast_dir / "feature_store.yaml"
    path.write_text(yaml.safe_dump(repo_config_dict(settings), sort_keys=False))
    return path


def apply_repo(store: FeatureStore, settings: Settings) -> None:
    """Register every entity, source, view and service (idempotent, like ``feast apply``)."""
    store.apply(build_definitions(settings).all())


def feature_store(settings: Settings, *, apply: bool = True) -> FeatureStore:
    """The FeatureStore for these settings, applied on first use; one instance per home and profile."""
    key = (str(settings.home_dir), settings.feast_profile, settings.redis_connection)
    with _lock:
        store = _stores.get(key)
        if store is None:
            render_feature_store_yaml(settings)
            config = RepoConfig(**repo_config_dict(settings))
            config.repo_path = REPO_DIR
            store = FeatureStore(config=config)
            _stores[key] = store
        if apply and not registry_path(settings).exists():
            apply_repo(store, settings)
    return store


def feature_service(settings: Settings, name: str) -> FeatureService:
    """The named FeatureService, fetched once per store.

    Feast caches the resolution of a request per service object; a fresh object from the registry on
    every lookup defeats that cache and costs ~40 ms of proto parsing per call.
    """
    store = feature_store(settings)
    key = (id(store), name)
    with _lock:
        service = _services.get(key)
        if service is None:
            service = _services[key] = store.get_feature_service(name)
    return service
