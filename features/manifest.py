"""The training-set manifest record and the column layout it declares (what the input layer reads).

Feast-free on purpose: the dataset builder writes it, and the trainer's tests and the model benchmarks
describe their own tables with the same function, so they cannot drift from what the builder writes.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from pipelines.events import SIDE_FIELDS

# Every labelled-sample context column the models read; the side fields are null where a log has none
# (the simulator's), which hashes to the reserved missing bucket.
CATEGORICAL = ("user_id", "item_id", "category", "position", "hour", "device", "page", *SIDE_FIELDS)
SEQUENCE_VIEW = "user_sequence"
SEQUENCE_COLUMNS = {
    "item_ids": f"{SEQUENCE_VIEW}__seq_item_ids",
    "category_ids": f"{SEQUENCE_VIEW}__seq_category_ids",
    "event_times": f"{SEQUENCE_VIEW}__seq_event_times",
}


def manifest_columns(features: Sequence[str]) -> dict[str, Any]:
    """The manifest's ``columns`` for a training set with these ``<view>__<feature>`` columns.

    Stats features are dense inputs; the sequence view's columns (its length included, which the mask
    already carries) form the behaviour sequence, present when the features include that view.
    """
    in_sequence = [f.startswith(f"{SEQUENCE_VIEW}__") for f in features]
    return {
        "label": "label",
        "time": "event_time",
        "user": "user_id",
        "item": "item_id",
        "categorical": list(CATEGORICAL),
        "dense": [f for f, seq in zip(features, in_sequence, strict=True) if not seq],
        "sequence": dict(SEQUENCE_COLUMNS) if any(in_sequence) else None,
    }


MANIFEST_FORMAT_VERSION = 1


class ManifestError(ValueError):
    """A manifest that cannot be read: unknown format, missing or mistyped fields."""


@dataclass(frozen=True)
class ManifestColumns:
    """Which column plays which role in a training set (the ``columns`` block)."""

    label: str
    time: str
    user: str
    item: str
    categorical: tuple[str, ...]
    dense: tuple[str, ...]
    sequence: dict[str, str] | None
    category: str = "category"

    @classmethod
    def for_features(cls, features: Sequence[str]) -> ManifestColumns:
        return cls.from_dict(manifest_columns(features))

    def to_dict(self) -> dict[str, Any]:
        return {
            "label": self.label, "time": self.time, "user": self.user, "item": self.item,
            "category": self.category, "categorical": list(self.categorical), "dense": list(self.dense),
            "sequence": None if self.sequence is None else dict(self.sequence),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ManifestColumns:
        return cls(
            label=data["label"], time=data["time"], user=data["user"], item=data["item"],
            category=data.get("category", "category"), categorical=tuple(data["categorical"]),
            dense=tuple(data.get("dense", ())),
            sequence=None if data.get("sequence") is None else dict(data["sequence"]),
        )


@dataclass(frozen=True)
class DatasetManifest:
    """What a built training set is: its window, size, content hash, feature service and column roles.

    The dataset builder writes it as ``manifest.json``; training, the registry and the CLI read it
    through this record only. The window is ``start <= event_time < end`` (ISO times, None = unbounded).
    """

    name: str
    feature_service: str
    window_start: str | None
    window_end: str | None
    rows: int
    label_rate: float
    content_hash: str
    columns: ManifestColumns
    has_p_click: bool = False
    created_at: str | None = None
    engine: str | None = None
    format: int = MANIFEST_FORMAT_VERSION

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": self.format, "name": self.name, "feature_service": self.feature_service,
            "window": {"start": self.window_start, "end": self.window_end}, "rows": self.rows,
            "label_rate": self.label_rate, "content_hash": self.content_hash, "created_at": self.created_at,
            "engine": self.engine, "columns": self.columns.to_dict(), "has_p_click": self.has_p_click,
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> DatasetManifest:
        # Manifests written before the record existed carry no "format" but the same fields: format 1.
        fmt = data.get("format", MANIFEST_FORMAT_VERSION)
        if fmt != MANIFEST_FORMAT_VERSION:
            raise ManifestError(
                f"training-set manifest {data.get('name')!r} has format {fmt!r}; this ctrflow reads "
                f"format {MANIFEST_FORMAT_VERSION} (rebuild it with `ctrflow dataset build`)"
            )
        try:
            window = data.get("window") or {}
            return cls(
                name=str(data["name"]), feature_service=str(data["feature_service"]),
                window_start=window.get("start"), window_end=window.get("end"), rows=int(data["rows"]),
                label_rate=float(data["label_rate"]), content_hash=str(data["content_hash"]),
                columns=ManifestColumns.from_dict(data["columns"]),
                has_p_click=bool(data.get("has_p_click", False)), created_at=data.get("created_at"),
                engine=data.get("engine"),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise ManifestError(
                f"training-set manifest {data.get('name')!r} is incomplete: missing or bad {exc}"
            ) from exc

    @classmethod
    def from_json(cls, text: str) -> DatasetManifest:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ManifestError(f"training-set manifest is not JSON: {exc}") from exc
        if not isinstance(data, dict):
            raise ManifestError("training-set manifest must be a JSON object")
        return cls.from_dict(data)
