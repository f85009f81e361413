"""One request -> model inputs -> scores, the path every served request and the servability check take.

The request encoder does not transform anything itself: it lays the request out as rows of a training
set (the ``labelled_samples`` columns plus the feature service's ``<view>__<feature>`` columns, missing
values filled by ``features.normalize``) and hands them to ``training.inputs.encode``, so hashing,
bucketing, dense transforms and whatever else the model's ``InputSchema`` carries apply exactly as in
training. Freshness follows the point-in-time join: a view's row older than the view's TTL at the
request's event time counts as missing and gets the cold-start defaults training saw.

All candidates of a request are scored in ONE candidate-parallel pass of a sequence model
(``score_request``: the behaviour sequence is encoded once, candidates are isolated from each other).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import numpy as np
import pyarrow as pa
import torch

from features.feature_repo.definitions import (
    DEFAULT_SERVICE,
    SERVICE_VIEWS,
    build_definitions,
    feature_arrow_type,
    feature_default,
    serving_views,
    view_features,
)
from features.normalize import normalize_features
from pipelines import tables
from pipelines.events import SIDE_FIELDS
from pipelines.settings import Settings
from serving_stub.online_reader import OnlineReader, OnlineRow
from training.inputs import Batch, InputSchema, encode
from training.models import SequenceModel

USER_VIEWS = frozenset({"user_stats", "user_sequence"})  # keyed by user_id; the others by item_id
CATEGORY_FEATURE = "item_attributes__category"
DEFAULT_POSITION = 0  # unranked candidates are scored as if shown in the top slot


@dataclass(frozen=True)
class RequestContext:
    """The impression context of a request; None = not given (hour then follows event_time)."""

    event_time_ms: int
    hour: int | None = None
    device: str | None = None
    page: str | None = None
    positions: tuple[int, ...] | None = None


def utc_hour(event_time_ms: int) -> int:
    return datetime.fromtimestamp(event_time_ms / 1000, UTC).hour


def now_ms() -> int:
    return int(time.time() * 1000)


def service_of(schema: InputSchema) -> str:
    return schema.feature_service if schema.feature_service in SERVICE_VIEWS else DEFAULT_SERVICE


class FeatureFetcher:
    """User features and behaviour sequence read once, every candidate's item features in one batch."""

    def __init__(self, settings: Settings, reader: OnlineReader) -> None:
        self.reader = reader
        self.horizons = settings.horizons
        self._ttl_ms = {name: int(view.ttl.total_seconds() * 1000)
                        for name, view in build_definitions(settings).views.items()}

    def fetch(self, service: str, user_id: str, items: Sequence[str], event_time_ms: int) -> dict[str, list]:
        """``<view>__<feature>`` -> one value per candidate, missing or stale rows filled with defaults."""
        n = len(items)
        columns: dict[str, list[Any]] = {}
        for view in serving_views(service):
            fresh_after = event_time_ms - self._ttl_ms[view]
            if view in USER_VIEWS:
                row = self.reader.read(view, [user_id]).get(user_id)
                values = _row_values(view, row, fresh_after, self.horizons)
                for feature, value in values.items():
                    columns[f"{view}__{feature}"] = [value] * n
            else:
                rows = self.reader.read(view, items)
                per_item = [_row_values(view, rows.get(item), fresh_after, self.horizons) for item in items]
                for feature in view_features(view, self.horizons):
                    columns[f"{view}__{feature}"] = [v[feature] for v in per_item]
        return columns


def cold_start_features(service: str, n: int, horizons: tables.StatHorizons) -> dict[str, list[Any]]:
    """Every serving feature of ``n`` candidates of a user nobody has seen: the defaults training saw."""
    return {f"{view}__{feature}": [value] * n for view in serving_views(service)
            for feature, value in _row_values(view, None, 0, horizons).items()}


def _row_values(
    view: str, row: OnlineRow | None, fresh_after_ms: int, horizons: tables.StatHorizons
) -> dict[str, Any]:
    usable = row is not None and row.event_time_ms >= fresh_after_ms
    out = {}
    for feature in view_features(view, horizons):
        value = row.values.get(feature) if usable else None
        out[feature] = feature_default(feature) if value is None else value
    return out


def request_table(user_id: str, items: Sequence[str], context: RequestContext,
                  features: dict[str, list[Any]], horizons: tables.StatHorizons) -> pa.Table:
    """The request as training-set rows (``features.datasets`` layout), one per candidate."""
    n = len(items)
    hour = utc_hour(context.event_time_ms) if context.hour is None else context.hour
    positions = list(context.positions) if context.positions is not None else [DEFAULT_POSITION] * n
    sample = tables.LABELLED_SAMPLES
    columns: dict[str, pa.Array] = {
        "label": pa.array(np.zeros(n, np.int8)),
        "event_time": pa.repeat(pa.scalar(context.event_time_ms, pa.int64()), n).cast(tables.TS),
        "user_id": pa.repeat(pa.scalar(user_id, pa.string()), n),
        "item_id": pa.array(list(items), pa.string()),
        "category": _column(features.get(CATEGORY_FEATURE, [None] * n), sample.field("category").type),
        "position": _column(positions, sample.field("position").type),
        "hour": pa.repeat(pa.scalar(hour, sample.field("hour").type), n),
        "device": pa.repeat(pa.scalar(context.device, sample.field("device").type), n),
        "page": pa.repeat(pa.scalar(context.page, sample.field("page").type), n),
    }
    if "request_size" in sample.names:
        columns["request_size"] = pa.repeat(pa.scalar(n, sample.field("request_size").type), n)
    # Side fields no online view holds yet (subcategory, genres, demographics) are missing, as in a
    # training set built from a log without them: the model's missing bucket.
    for name in SIDE_FIELDS:
        if name not in columns and name in sample.names:
            columns[name] = pa.nulls(n, sample.field(name).type)
    for name, values in features.items():
        columns[name] = _column(values, feature_arrow_type(name, horizons))
    table = pa.table(columns)
    return normalize_features(table, list(features), horizons)


def _column(values: list[Any], arrow_type: pa.DataType) -> pa.Array:
    # A user-level value repeated for every candidate is one object n times: broadcast it in Arrow
    # instead of converting n copies (a 50-long sequence x 100 candidates is 5,000 Python ints).
    first = values[0] if values else None
    if values and all(v is first for v in values):
        return pa.repeat(pa.scalar(first, arrow_type), len(values))
    return pa.array(values, arrow_type)


def probabilities(model: torch.nn.Module, batch: Batch, one_request: bool) -> np.ndarray:
    """Click probabilities as float64; ``one_request``: every row is a candidate of row 0's user."""
    with torch.inference_mode():
        if one_request and isinstance(model, SequenceModel):
            logits = model.score_request(batch)
        else:
            logits = model(batch)
        return torch.sigmoid(logits.float()).numpy().astype(np.float64)


def encode_request(schema: InputSchema, user_id: str, items: Sequence[str], context: RequestContext,
                   features: dict[str, list[Any]], horizons: tables.StatHorizons) -> Batch:
    return encode(request_table(user_id, items, context, features, horizons), schema)
