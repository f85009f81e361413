"""Model versions on disk: safetensors weights + one JSON config per version, never a pickle.

A version is one trained cohort (teacher, students, baselines) under ``settings.registry_dir/<version>/``:
``model.safetensors`` holds every model's tensors keyed ``<model name>.<parameter>``; ``config.json``
(``VersionConfig``) holds what it takes to rebuild and judge them: each model's family + config + metrics,
the input schema, the feature service, the rows trained on and held out, the training config and the
parent version (lineage).
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
from typing import Any, Literal

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from pipelines.settings import Settings

WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "config.json"
FORMAT_VERSION = 2
# Format 1 (before the typed record) kept the data window as one untyped block and did not say which
# rows the holdout was; such versions still load, but have no recorded holdout to gate or evaluate on.
LEGACY_FORMAT = 1
DataPart = Literal["all", "head", "tail"]


class ArtifactError(RuntimeError):
    """A version that does not exist, or whose files are incomplete or inconsistent."""


def model_role(family: str) -> str:
    """A model's part in the cohort: the distilling ``teacher``, a served ``student`` or a ``baseline``."""
    return family if family in ("teacher", "student") else "baseline"


# Model config fields added after versions were first saved, with the value that rebuilds such a version
# as it was trained. A saved config holds every field of its release, so a missing one means an older
# release, and a warm start from that version sees a config change (and cold-starts) instead of weights
# that do not fit.
ADDED_CONFIG_FIELDS: dict[str, dict[str, Any]] = {
    "teacher": {"target_match": False},
    "student": {"target_match": False},
}


@dataclass(frozen=True)
class ModelRecord:
    """What a version stores about one model of the cohort (besides its weights)."""

    family: str
    config: dict[str, Any]
    metrics: dict[str, float] = field(default_factory=dict)

    @property
    def role(self) -> str:
        return model_role(self.family)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelRecord:
        family, config = data["family"], dict(data["config"])
        if config:  # an empty config asks for the family's defaults
            config = ADDED_CONFIG_FIELDS.get(family, {}) | config
        return cls(family, config, dict(data.get("metrics") or {}))


@dataclass(frozen=True)
class DataSlice:
    """Rows of one training set: all of them, or the first/last ``rows`` by event time (a time split).

    ``start``/``end`` are the first and last event times in the rows (ISO), ``content_hash`` the training
    set's, so a rebuilt set under the same name is noticed.
    """

    dataset: str | None
    rows: int
    start: str | None = None
    end: str | None = None
    part: DataPart = "all"
    content_hash: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> DataSlice:
        if data.get("part", "all") not in ("all", "head", "tail"):
            raise ArtifactError(f"data slice part {data.get('part')!r} is not all, head or tail")
        return cls(**data)


@dataclass(frozen=True)
class VersionConfig:
    """``config.json`` of a version: how to rebuild its models and what they were trained and judged on."""

    version: str
    created: str
    parent: str | None
    feature_service: str | None
    input_schema: dict[str, Any]
    train_config: dict[str, Any]
    serve: str | None
    models: dict[str, ModelRecord]
    train: DataSlice
    holdout: DataSlice | None
    # Why the cohort (or single models) did not warm-start from ``parent``: schema or config changes.
    cold_start_reason: str | None = None
    cold_start: dict[str, str] = field(default_factory=dict)
    sizes: dict[str, Any] = field(default_factory=dict)  # how `auto` sizes were resolved, and why
    format: int = FORMAT_VERSION

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": self.format, "version": self.version, "created": self.created, "parent": self.parent,
            "feature_service": self.feature_service, "input_schema": self.input_schema,
            "train_config": self.train_config, "serve": self.serve,
            "models": {n: asdict(r) for n, r in self.models.items()},
            "train": self.train.to_dict(),
            "holdout": None if self.holdout is None else self.holdout.to_dict(),
            "cold_start_reason": self.cold_start_reason, "cold_start": dict(self.cold_start),
            "sizes": dict(self.sizes),
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True, default=str)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> VersionConfig:
        fmt = data.get("format")
        name = data.get("version")
        if fmt not in (FORMAT_VERSION, LEGACY_FORMAT):
            raise ArtifactError(
                f"version {name!r} has config format {fmt!r}; this ctrflow reads formats "
                f"{LEGACY_FORMAT} and {FORMAT_VERSION} (it was written by another ctrflow release)"
            )
        try:
            if fmt == LEGACY_FORMAT:
                window = data.get("window") or {}
                train_rows = window.get("train") or {}
                train = DataSlice(
                    dataset=window.get("dataset"), rows=int(train_rows.get("rows", 0)),
                    start=train_rows.get("start"), end=train_rows.get("end"), part="head",
                    content_hash=window.get("content_hash"),
                )
                holdout = None
            else:
                train = DataSlice.from_dict(data["train"])
                holdout = None if data.get("holdout") is None else DataSlice.from_dict(data["holdout"])
            return cls(
                version=str(data["version"]), created=str(data["created"]), parent=data.get("parent"),
                feature_service=data.get("feature_service"), input_schema=dict(data["input_schema"]),
                train_config=dict(data.get("train_config") or {}), serve=data.get("serve"),
                models={n: ModelRecord.from_dict(r) for n, r in data["models"].items()},
                train=train, holdout=holdout, cold_start_reason=data.get("cold_start_reason"),
                cold_start=dict(data.get("cold_start") or {}), sizes=dict(data.get("sizes") or {}),
                format=FORMAT_VERSION,
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise ArtifactError(
                f"version {name!r} has an incomplete config.json: missing or bad {exc}"
            ) from exc

    @classmethod
    def from_json(cls, text: str) -> VersionConfig:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ArtifactError(f"config.json is not JSON: {exc}") from exc
        if not isinstance(data, dict):
            raise ArtifactError("config.json must hold a JSON object")
        return cls.from_dict(data)

    @property
    def served(self) -> ModelRecord | None:
        return None if self.serve is None else self.models.get(self.serve)


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
    train: DataSlice,
    holdout: DataSlice | None,
    train_config: dict[str, Any],
    parent: str | None = None,
    serve: str | None = None,
    cold_start_reason: str | None = None,
    cold_start: Mapping[str, str] | None = None,
    sizes: Mapping[str, Any] | None = None,
) -> VersionConfig:
    """Write a new version atomically (temp dir + rename) and return its config."""
    if set(models) != set(records):
        raise ValueError(f"weights for {sorted(models)} but records for {sorted(records)}")
    if serve is not None and serve not in models:
        raise ValueError(f"serve={serve!r} is not one of the saved models {sorted(models)}")
    registry = settings.registry_dir
    registry.mkdir(parents=True, exist_ok=True)
    version = new_version_id()
    config = VersionConfig(
        version=version, created=datetime.now(UTC).isoformat(), parent=parent,
        feature_service=feature_service, input_schema=schema, train_config=train_config, serve=serve,
        models=dict(records), train=train, holdout=holdout, cold_start_reason=cold_start_reason,
        cold_start=dict(cold_start or {}), sizes=dict(sizes or {}),
    )
    tmp = Path(tempfile.mkdtemp(prefix=".tmp-", dir=registry))
    try:
        save_file(_state_tensors(models), str(tmp / WEIGHTS_FILE), metadata={"version": version})
        (tmp / CONFIG_FILE).write_text(config.to_json())
        os.replace(tmp, registry / version)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return config


def version_dir(settings: Settings, version: str) -> Path:
    # Version ids come from users (CLI flags): keep them to one plain path component.
    if not version or "/" in version or "\\" in version or version.startswith("."):
        raise ArtifactError(f"invalid version id {version!r}")
    path = settings.registry_dir / version
    if not (path / CONFIG_FILE).is_file() or not (path / WEIGHTS_FILE).is_file():
        raise ArtifactError(f"no complete model version {version!r} under {settings.registry_dir}")
    return path


def read_config(settings: Settings, version: str) -> VersionConfig:
    """A version's typed config; an unknown format or a damaged file is an ``ArtifactError`` saying so."""
    path = version_dir(settings, version) / CONFIG_FILE
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as exc:
        raise ArtifactError(f"version {version!r}: {path} is unreadable ({exc})") from None
    config = VersionConfig.from_json(text)
    if config.version != version:
        raise ArtifactError(f"folder {version!r} holds the config of version {config.version!r}")
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
        raise ArtifactError(f"version {version!r} has unreadable weights: {path} ({exc})") from None
    if not state:
        raise ArtifactError(f"version {version!r} has no weights for model {name!r}")
    return state


def list_versions(settings: Settings) -> list[VersionConfig]:
    """Every complete version's config, oldest first (half-written temp dirs are ignored)."""
    registry = settings.registry_dir
    if not registry.is_dir():
        return []
    out = []
    for path in sorted(registry.iterdir()):
        if path.name.startswith(".") or not (path / CONFIG_FILE).is_file():
            continue
        out.append(read_config(settings, path.name))
    return sorted(out, key=lambda c: (c.created, c.version))


def latest_version(settings: Settings) -> str | None:
    versions = list_versions(settings)
    return versions[-1].version if versions else None


def load_model(
    settings: Settings, version: str, name: str | None = None
) -> tuple[torch.nn.Module, VersionConfig]:
    """Rebuild one model of a version with its weights (default: the model marked to serve).

    Returns the model in eval mode and the version's typed config (schema, metrics, lineage).
    """
    from training.inputs import InputSchema
    from training.models import build_model

    config = read_config(settings, version)
    name = name or config.serve
    if name is None or name not in config.models:
        raise ArtifactError(f"version {version!r} has no model {name!r}; it has {sorted(config.models)}")
    entry = config.models[name]
    schema = InputSchema.from_dict(config.input_schema)
    model = build_model(entry.family, entry.config, schema)
    try:
        model.load_state_dict(read_weights(settings, version, name))
    except RuntimeError as exc:
        if isinstance(exc, ArtifactError):
            raise
        raise ArtifactError(f"version {version!r}: weights of {name!r} do not fit its config: {exc}") from exc
    model.eval()
    return model, config
