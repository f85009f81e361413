"""The model input layer's data side: which columns feed which model slot, and table -> tensors.

One ``InputSchema`` is derived from a training set's manifest ("columns") and travels with every model
artifact. Categorical values are hashed into fixed bucket counts (no vocabulary), so a warm start on a
newer data window sees the same id -> row mapping; bucket 0 of every slot is reserved for missing values
and sequence padding. Dense features get a fixed, stateless transform (no fitted statistics that would
drift between continual-training cycles).

The candidate's item and category and the behaviour sequence's items and categories share one id space:
both go through ``pipelines.events.stable_int_id`` and the same bucket function, so a behaviour token and a
candidate token for the same item look up the same embedding row.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import torch

from features.manifest import DatasetManifest
from pipelines.events import stable_int_id
from pipelines.tables import CTR_PRIOR_CLICKS, CTR_PRIOR_IMPRESSIONS

# Buckets per categorical slot: high-cardinality ids get large tables, small context fields small ones.
ID_BUCKETS = 1 << 16
CATEGORY_BUCKETS = 1 << 12
CONTEXT_BUCKETS = 1 << 8
PRIOR_CTR = CTR_PRIOR_CLICKS / CTR_PRIOR_IMPRESSIONS
MAX_SEQ_LEN = 4096

DenseKind = str  # "count" -> log1p(x); "rate" -> log1p(x / prior CTR); "raw" -> clip to [-10, 10]


def _dense_kind(name: str) -> DenseKind:
    leaf = name.rsplit("__", 1)[-1]
    if leaf.startswith("ctr"):
        return "rate"
    if leaf.startswith(("impressions", "clicks")):
        return "count"
    return "raw"


@dataclass(frozen=True)
class InputSchema:
    """Where every model input comes from in a training-set table, and how it is hashed/normalised."""

    label: str
    time: str
    user: str
    item: str
    category: str
    categorical: tuple[str, ...]
    buckets: tuple[int, ...]  # per categorical slot, including the reserved 0
    dense: tuple[str, ...]
    dense_kinds: tuple[DenseKind, ...]
    seq_item_ids: str
    seq_category_ids: str
    seq_event_times: str
    max_seq_len: int
    feature_service: str = ""
    has_p_click: bool = False
    p_click: str = "p_click"
    profile_dense: tuple[str, ...] = field(default=())  # user-level dense features (cross-attention K/V)

    def __post_init__(self) -> None:
        if not 1 <= self.max_seq_len <= MAX_SEQ_LEN:
            raise ValueError(f"max_seq_len must be in [1, {MAX_SEQ_LEN}], got {self.max_seq_len}")
        if len(self.buckets) != len(self.categorical) or min(self.buckets, default=2) < 2:
            raise ValueError("one bucket count >= 2 per categorical column is required")
        for name in (self.user, self.item, self.category):
            if name not in self.categorical:
                raise ValueError(f"column {name!r} must be one of the categorical columns")
        if len(self.dense_kinds) != len(self.dense):
            raise ValueError("one dense kind per dense column is required")
        unknown = set(self.profile_dense) - set(self.dense)
        if unknown:
            raise ValueError(f"profile dense columns not in dense: {sorted(unknown)}")

    @classmethod
    def from_manifest(cls, manifest: DatasetManifest, max_seq_len: int) -> InputSchema:
        """Build the schema from a training-set manifest (the ``columns`` block of the dataset contract)."""
        cols = manifest.columns
        categorical, user, item, dense = cols.categorical, cols.user, cols.item, cols.dense
        label, time, category = cols.label, cols.time, cols.category
        if cols.sequence is None:
            raise ValueError(
                f"training set of feature service {manifest.feature_service!r} has no behaviour "
                "sequence; every model family reads one: build it with the sequence_ctr service"
            )
        try:
            seq = cols.sequence
            seq_items, seq_cats, seq_times = seq["item_ids"], seq["category_ids"], seq["event_times"]
        except KeyError as exc:
            raise ValueError(f"manifest's sequence columns lack {exc}") from exc

        def buckets_for(name: str) -> int:
            if name in (user, item):
                return ID_BUCKETS
            return CATEGORY_BUCKETS if name == category else CONTEXT_BUCKETS

        return cls(
            label=label,
            time=time,
            user=user,
            item=item,
            category=category,
            categorical=categorical,
            buckets=tuple(buckets_for(c) for c in categorical),
            dense=dense,
            dense_kinds=tuple(_dense_kind(d) for d in dense),
            seq_item_ids=seq_items,
            seq_category_ids=seq_cats,
            seq_event_times=seq_times,
            max_seq_len=max_seq_len,
            feature_service=manifest.feature_service,
            has_p_click=manifest.has_p_click,
            profile_dense=tuple(d for d in dense if d.startswith("user")),
        )

    def slot(self, column: str) -> int:
        return self.categorical.index(column)

    @property
    def profile_dense_index(self) -> tuple[int, ...]:
        return tuple(self.dense.index(d) for d in self.profile_dense)

    @property
    def candidate_slots(self) -> tuple[int, ...]:
        """Categorical slots that vary per candidate (everything but the user): they feed the heads."""
        return tuple(i for i, c in enumerate(self.categorical) if c != self.user)

    def to_dict(self) -> dict[str, Any]:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> InputSchema:
        known = {f.name for f in fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"unknown InputSchema fields: {sorted(unknown)}")
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in data.items()})


@dataclass
class Batch:
    """Model-ready tensors for B rows. Sequences are right-aligned: the newest behaviour is at index L-1."""

    categorical: torch.Tensor  # [B, C] int64 bucket ids per slot (0 = missing)
    dense: torch.Tensor  # [B, D] float32, normalised
    seq_items: torch.Tensor  # [B, L] int64 item bucket ids (0 = padding)
    seq_categories: torch.Tensor  # [B, L] int64 category bucket ids
    seq_times: torch.Tensor  # [B, L] int64 seconds UTC (0 on padding)
    seq_mask: torch.Tensor  # [B, L] bool, True on real behaviours
    cand_item: torch.Tensor  # [B] int64 item bucket id of the candidate
    cand_category: torch.Tensor  # [B] int64
    cand_time: torch.Tensor  # [B] int64 seconds UTC
    label: torch.Tensor  # [B] float32 in {0, 1}
    user: torch.Tensor  # [B] int64 user key (for gAUC)
    p_click: torch.Tensor | None = None  # [B] float32 true click probability (simulated logs)

    def __len__(self) -> int:
        return int(self.label.shape[0])

    def _map(self, fn: Callable[[torch.Tensor], torch.Tensor]) -> Batch:
        return Batch(**{f.name: None if getattr(self, f.name) is None else fn(getattr(self, f.name))
                        for f in fields(self)})

    def to(self, device: torch.device | str) -> Batch:
        return self._map(lambda t: t.to(device, non_blocking=True))

    def slice(self, start: int, stop: int) -> Batch:
        return self._map(lambda t: t[start:stop])

    def index(self, idx: torch.Tensor) -> Batch:
        """Rows picked by an index tensor (e.g. a shuffled permutation)."""
        return self._map(lambda t: t[idx.to(t.device)])


def hash_ids(ids: np.ndarray, buckets: int) -> np.ndarray:
    """Stable int64 ids -> bucket ids in [1, buckets); the caller marks missing values with 0."""
    return (ids.astype(np.int64) % np.int64(buckets - 1)) + 1


def _stable_ids(column: pa.ChunkedArray | pa.Array) -> tuple[np.ndarray, np.ndarray]:
    """Any scalar column -> (stable int64 ids, valid mask). Strings are hashed once per distinct value."""
    arr = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
    valid = np.asarray(arr.is_valid().to_numpy(zero_copy_only=False), dtype=bool)
    if pa.types.is_integer(arr.type) or pa.types.is_boolean(arr.type):
        values = np.asarray(arr.cast(pa.int64()).fill_null(0).to_numpy(zero_copy_only=False))
        # Negative ints are not decimal strings; hash them like any other text.
        neg = values < 0
        if neg.any():
            values = values.copy()
            values[neg] = [stable_int_id(str(v)) for v in values[neg]]
        return values, valid
    encoded = pc.cast(arr, pa.string()).fill_null("").dictionary_encode()
    codes = np.asarray(encoded.indices.to_numpy(zero_copy_only=False), dtype=np.int64)
    table = np.array([stable_int_id(s) for s in encoded.dictionary.to_pylist()], dtype=np.int64)
    return (table[codes] if len(table) else np.zeros(len(arr), np.int64)), valid


def _bucketed(column: pa.ChunkedArray | pa.Array, buckets: int) -> np.ndarray:
    ids, valid = _stable_ids(column)
    return np.where(valid, hash_ids(ids, buckets), 0)


def _padded_lists(column: pa.ChunkedArray | pa.Array, length: int) -> tuple[np.ndarray, np.ndarray]:
    """list<int64> -> ([B, length] right-aligned newest-last values, [B, length] valid mask).

    Keeps the newest ``length`` entries of each list (lists are oldest -> newest); nulls count as empty.
    """
    arr = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
    lengths = np.asarray(pc.list_value_length(arr).fill_null(0).to_numpy(zero_copy_only=False), np.int64)
    flat = np.asarray(pc.list_flatten(arr).cast(pa.int64()).fill_null(0).to_numpy(zero_copy_only=False))
    ends = np.cumsum(lengths)
    take = np.minimum(lengths, length)
    pos = np.arange(length)[None, :]
    valid = pos >= (length - take)[:, None]
    idx = ends[:, None] - length + pos
    values = np.where(valid, flat[np.clip(idx, 0, max(len(flat) - 1, 0))] if len(flat) else 0, 0)
    return values.astype(np.int64), valid


def _dense_matrix(table: pa.Table, schema: InputSchema) -> np.ndarray:
    out = np.zeros((table.num_rows, len(schema.dense)), dtype=np.float32)
    for j, (name, kind) in enumerate(zip(schema.dense, schema.dense_kinds, strict=True)):
        x = np.asarray(table.column(name).cast(pa.float64()).fill_null(0.0).to_numpy(), dtype=np.float64)
        x = np.nan_to_num(x, nan=0.0, posinf=0.0, neginf=0.0)
        if kind == "count":
            x = np.log1p(np.maximum(x, 0.0))
        elif kind == "rate":
            x = np.log1p(np.maximum(x, 0.0) / PRIOR_CTR)
        out[:, j] = np.clip(x, -10.0, 10.0)
    return out


def _seconds(column: pa.ChunkedArray) -> np.ndarray:
    """A timestamp (any unit) or integer-milliseconds column -> int64 seconds."""
    if pa.types.is_timestamp(column.type):
        column = pc.cast(column, pa.timestamp("ms", tz=column.type.tz)).cast(pa.int64())
    ms = np.asarray(column.cast(pa.int64()).fill_null(0).to_numpy(), dtype=np.int64)
    return ms // 1000


def encode(data: pa.Table | Any, schema: InputSchema) -> Batch:
    """A training-set table (pyarrow Table or pandas DataFrame) -> a Batch of CPU tensors."""
    table = data if isinstance(data, pa.Table) else pa.Table.from_pandas(data, preserve_index=False)
    needed = [schema.label, schema.time, *schema.categorical, *schema.dense,
              schema.seq_item_ids, schema.seq_category_ids, schema.seq_event_times]
    missing = [c for c in needed if c not in table.column_names]
    if missing:
        raise ValueError(f"table lacks columns required by the input schema: {missing}")
    L = schema.max_seq_len
    item_b = schema.buckets[schema.slot(schema.item)]
    cat_b = schema.buckets[schema.slot(schema.category)]

    categorical = np.stack(
        [_bucketed(table.column(c), b) for c, b in zip(schema.categorical, schema.buckets, strict=True)],
        axis=1,
    ) if schema.categorical else np.zeros((table.num_rows, 0), np.int64)
    seq_items, mask = _padded_lists(table.column(schema.seq_item_ids), L)
    seq_cats, _ = _padded_lists(table.column(schema.seq_category_ids), L)
    seq_ms, _ = _padded_lists(table.column(schema.seq_event_times), L)
    label = np.asarray(table.column(schema.label).cast(pa.float32()).to_numpy(zero_copy_only=False))
    if np.isnan(label).any() or not np.isin(label, (0.0, 1.0)).all():
        raise ValueError("labels must be 0 or 1 with no nulls")
    user_ids, _ = _stable_ids(table.column(schema.user))
    p_click = None
    if schema.has_p_click and schema.p_click in table.column_names:
        p = table.column(schema.p_click)
        if p.null_count == 0:
            p_click = torch.from_numpy(np.asarray(p.cast(pa.float32()).to_numpy(), np.float32).copy())

    return Batch(
        categorical=torch.from_numpy(categorical.astype(np.int64)),
        dense=torch.from_numpy(_dense_matrix(table, schema)),
        seq_items=torch.from_numpy(np.where(mask, hash_ids(seq_items, item_b), 0)),
        seq_categories=torch.from_numpy(np.where(mask, hash_ids(seq_cats, cat_b), 0)),
        seq_times=torch.from_numpy(np.where(mask, seq_ms // 1000, 0)),
        seq_mask=torch.from_numpy(mask),
        cand_item=torch.from_numpy(categorical[:, schema.slot(schema.item)].astype(np.int64)),
        cand_category=torch.from_numpy(categorical[:, schema.slot(schema.category)].astype(np.int64)),
        cand_time=torch.from_numpy(_seconds(table.column(schema.time))),
        label=torch.from_numpy(label.astype(np.float32)),
        user=torch.from_numpy(user_ids),
        p_click=p_click,
    )
