"""Model versions on disk: safetensors weights + one JSON config per version, never a pickle.

A version is one trained cohort (teacher, students, baselines) under ``settings.registry_dir/<version>/``:
``model.safetensors`` holds every model's tensors keyed ``<model name>.<parameter>``; ``config.json``
holds what it takes to rebuild and judge them: each model's family + config + metrics, the input schema,
the feature service, the data window, the training config and the parent version (lineage).
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import uuid
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from pipelines.settings import Settings

WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "config.json"
FORMAT_VERSION = 1


class ArtifactError(RuntimeError):
    """A version that does not exist, or whose files are incomplete or inconsistent."""


@dataclass
class ModelRecord:
    """What a version stores about one model of the cohort (besides its weights)."""

    family: str
    config: dict[str, Any]
    metrics: dict[str, float] = field(default_factory=dict)


def new_version_id(now: datetime | None = None) -> str:
    """Sortable by creation time, unique across concurrent writers."""
    now = now or datetime.now(UTC)
    return f"v{now:%Y%m%dT%H%M%S}-{uuid.uuid4().hex[:6]}"


def _state_tensors(models: Mapping[str, torch.nn.Module]) -> dict[str, torch.Tensor]:
    tensors: dict[str, torch.Tensor] = {}
    for name, model in models.items():
        if "." in name:
            raise ValueError(f"model name {name!r} must not contain '.' (it prefixes tensor keys)")
        for key, value in model.state_dict().items():
            # Cloning breaks storage shared between models (a shared embedding table), which safetensors
            # refuses to write; each model then loads its own copy by name.
            tensors[f"{name}.{key}"] = value.detach().to("cpu").clone().contiguous()
    return tensors


def save_version(
    settings: Settings,
    models: Mapping[str, torch.nn.Module],
    records: Mapping[str, ModelRecord],
    schema: dict[str, Any],
    *,
    feature_service: str | None,
    window: dict[str, Any],
    train_config: dict[str, Any],
    parent: str | None = None,
    serve: str | None = None,
    extra: dict[str, Any] | None = None,
) -> str:
    """Write a new version atomically (temp dir + rename) and return its id."""
    if set(models) != set(records):
        raise ValueError(f"weights for {sorted(models)} but records for {sorted(records)}")
    if serve is not None and serve not in models:
        raise ValueError(f"serve={serve!r} is not one of the saved models {sorted(models)}")
    registry = settings.registry_dir
    registry.mkdir(parents=True, exist_ok=True)
    version = new_version_id()
    config = {
        "format": FORMAT_VERSION,
        "version": version,
        "created": datetime.now(UTC).isoformat(),
        "parent": parent,
        "feature_service": feature_service,
        "window": window,
        "input_schema": schema,
        "train_config": train_config,
        "serve": serve,
        "models": {n: asdict(r) for n, r in records.items()},
        **(extra or {}),
    }
    tmp = Path(tempfile.mkdtemp(prefix=".tmp-", dir=registry))
    try:
        save_file(_state_tensors(models), str(tmp / WEIGHTS_FILE), metadata={"version": version})
        (tmp / CONFIG_FILE).write_text(json.dumps(config, indent=2, sort_keys=True, default=str))
        os.replace(tmp, registry / version)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return version


def version_dir(settings: Settings, version: str) -> Path:
    # Version ids come from users (CLI flags): keep them to one plain path component.
    if not version or "/" in version or "\\" in version or version.startswith("."):
        raise ArtifactError(f"invalid version id {version!r}")
    path = settings.registry_dir / version
    if not (path / CONFIG_FILE).is_file() or not (path / WEIGHTS_FILE).is_file():
        raise ArtifactError(f"no complete model version {version!r} under {settings.registry_dir}")
    return path


def read_config(settings: Settings, version: str) -> dict[str, Any]:
    path = version_dir(settings, version) / CONFIG_FILE
    try:
        config = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ArtifactError(f"version {version!r}: {path} is unreadable ({exc})") from None
    if not isinstance(config, dict):
        raise ArtifactError(f"version {version!r}: {path} is not a JSON object")
    return config


def read_weights(settings: Settings, version: str, name: str) -> dict[str, torch.Tensor]:
    """One model's state dict from a version (keys without the model-name prefix)."""
    prefix = f"{name}."
    path = version_dir(settings, version) / WEIGHTS_FILE
    try:
        # Only this model's tensors: a version holds every model of its cohort in one file.
        with safe_open(str(path), framework="pt") as f:
            state = {k[len(prefix) :]: f.get_tensor(k) for k in f.keys() if k.startswith(prefix)}  # noqa: SIM118 (not a dict)
    except (SafetensorError, OSError) as exc:  # truncated, corrupt or unreadable
        raise ArtifactError(f"version {version!r}: {path} is unreadable ({exc})") from None
    if not state:
        raise ArtifactError(f"version {version!r} has no weights for model {name!r}")
    return state


def list_versions(settings: Settings) -> list[dict[str, Any]]:
    """Every complete version's config, oldest first (half-written temp dirs are ignored)."""
    registry = settings.registry_dir
    if not registry.is_dir():
        return []
    out = []
    for path in sorted(registry.iterdir()):
        if path.name.startswith(".") or not (path / CONFIG_FILE).is_file():
            continue
        out.append(json.loads((path / CONFIG_FILE).read_text()))
    return sorted(out, key=lambda c: (c["created"], c["version"]))


def latest_version(settings: Settings) -> str | None:
    versions = list_versions(settings)
    return versions[-1]["version"] if versions else None


def load_model(settings: Settings, version: str, name: str | None = None) -> tuple[torch.nn.Module, dict]:
    """Rebuild one model of a version with its weights (default: the model marked to serve).

    Returns the model in eval mode and the version config (schema, metrics, lineage).
    """
    from training.inputs import InputSchema
    from training.models import build_model

    config = read_config(settings, version)
    name = name or config.get("serve")
    if name is None or name not in config["models"]:
        raise ArtifactError(f"version {version!r} has no model {name!r}; it has {sorted(config['models'])}")
    entry = config["models"][name]
    schema = InputSchema.from_dict(config["input_schema"])
    model = build_model(entry["family"], entry["config"], schema)
    model.load_state_dict(read_weights(settings, version, name))
    model.eval()
    return model, config
