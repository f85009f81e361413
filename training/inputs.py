"""The model input layer's data side: which columns feed which model slot, and table -> tensors.

One ``InputSchema`` is derived from a training set's manifest ("columns") and travels with every model
artifact. Categorical values are hashed into fixed bucket counts (no vocabulary), so a warm start on a
newer data window sees the same id -> row mapping; bucket 0 of every slot is reserved for missing values
and sequence padding.

Two things are fitted on the training window and stored in the schema (so every place that calls
``encode`` -- training, evaluation, serving -- transforms a row identically):

- dense standardisation: after the fixed log transforms, each dense column is centred and scaled by the
  training window's mean and standard deviation (``dense_mean`` / ``dense_std``);
- id admission: on the user and item slots, a bucket seen fewer than ``min_id_count`` times in the
  training window is not admitted and encodes as bucket 0, the "no usable id" row (``admitted`` holds a
  compressed bitmap per slot). A rare or unseen item then scores from its side features.

A schema without these fields (versions written before them) encodes exactly as before. A warm-started
cycle keeps its parent's dense statistics (the warm weights were fitted to them) and widens the admitted
set with the ids the new window brings.

The candidate's item and category and the behaviour sequence's items and categories share one id space:
both go through ``pipelines.events.stable_int_id`` and the same bucket function, so a behaviour token and a
candidate token for the same item look up the same embedding row.
"""

from __future__ import annotations

import base64
import zlib
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields, replace
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
DENSE_CLIP = 10.0
# What `fit_input_schema` learns from a window; everything else is the schema's structure.
FITTED_FIELDS: tuple[str, ...] = ("dense_mean", "dense_std", "min_id_count", "admitted")
# The training-set column grouping impressions into requests (an evaluation key, never a model input).
REQUEST_COLUMN = "request_id"

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
    # Fitted on the training window (module docstring); empty = not fitted, encode as before.
    dense_mean: tuple[float, ...] = ()
    dense_std: tuple[float, ...] = ()
    min_id_count: int = 0
    admitted: tuple[str, ...] = ()  # per categorical slot: base64(zlib(bitmap of admitted buckets)), "" = all

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
        if len(self.dense_mean) != len(self.dense_std) or len(self.dense_mean) not in (0, len(self.dense)):
            raise ValueError("dense_mean and dense_std need one value per dense column (or none)")
        if not all(np.isfinite(self.dense_mean)) or not all(s > 0 and np.isfinite(s) for s in self.dense_std):
            raise ValueError("dense statistics must be finite with positive standard deviations")
        if len(self.admitted) not in (0, len(self.categorical)):
            raise ValueError("admitted needs one entry per categorical column (or none)")

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

    def admitted_mask(self, slot: int) -> np.ndarray | None:
        """Bool [buckets] of the slot's admitted buckets (bucket 0 always), or None when all are."""
        if not self.admitted or not self.admitted[slot]:
            return None
        try:
            bits = np.frombuffer(zlib.decompress(base64.b64decode(self.admitted[slot])), np.uint8)
        except (ValueError, zlib.error) as exc:
            raise ValueError(f"admitted ids of slot {self.categorical[slot]!r} are corrupt: {exc}") from exc
        mask = np.unpackbits(bits)[: self.buckets[slot]].astype(bool)
        if len(mask) != self.buckets[slot]:
            raise ValueError(f"admitted ids of slot {self.categorical[slot]!r} do not match its bucket count")
        mask[0] = True
        return mask

    def structure(self) -> dict[str, Any]:
        """The schema without its fitted statistics: what a warm start needs to be unchanged."""
        return {k: v for k, v in self.to_dict().items() if k not in FITTED_FIELDS}

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
    request: torch.Tensor | None = None  # [B] int64 request key (per-request gAUC), when the table has one
    # [B] int64, set by training and evaluation (``context_groups``): rows with one key have the same user
    # context, so the sequence models encode it once for all of them
    group: torch.Tensor | None = None

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


def context_groups(batch: Batch, schema: InputSchema) -> torch.Tensor:
    """[B] int64 keys, equal exactly where two rows carry the same user context: the same user id, the
    same behaviour sequence (items, categories, times, mask) and the same user-level dense features --
    everything a sequence model's behaviour tokens and user profile are computed from. The candidates of
    one request share it, so a sequence model encodes the context once for all of them (as serving does)
    and gets the same scores as encoding it per row.

    Rows are grouped by a 64-bit hash of those fields, and every row is then compared with its group's
    first row: a row that differs (a hash collision) gets a group of its own, so sharing is always exact.
    """
    n = len(batch)
    if n == 0:
        return torch.zeros(0, dtype=torch.long)
    profile = list(schema.profile_dense_index)
    profile_bits = batch.dense[:, profile].contiguous().view(torch.int32).long()
    parts = [batch.categorical[:, schema.slot(schema.user)][:, None], batch.seq_items, batch.seq_categories,
             batch.seq_times, batch.seq_mask.long(), profile_bits]
    rng = np.random.default_rng(0x5EED)
    h = np.zeros(n, np.uint64)
    with np.errstate(over="ignore"):
        for part in parts:
            cols = part.numpy().astype(np.uint64, copy=False)
            for j in range(cols.shape[1]):
                h = h * np.uint64(0x100000001B3) + cols[:, j] * rng.integers(1, 2**63, dtype=np.uint64)
    _, key = np.unique(h, return_inverse=True)
    key = torch.from_numpy(key.astype(np.int64).reshape(-1))
    rep = first_rows(key, int(key.max()) + 1)[key]
    same = torch.ones(n, dtype=torch.bool)
    for start in range(0, n, 1 << 16):  # in chunks: part[rep] copies every column
        rows = slice(start, start + (1 << 16))
        for part in parts:
            same[rows] &= (part[rows] == part[rep[rows]]).all(1)
    return torch.where(same, key, key.max() + 1 + torch.arange(n))


def with_context_groups(batch: Batch, schema: InputSchema) -> Batch:
    """``batch`` with its ``group`` keys (``context_groups``), computed once for every model and pass that
    reads it; a batch that has them is returned as it is."""
    return batch if batch.group is not None else replace(batch, group=context_groups(batch, schema))


def first_rows(keys: torch.Tensor, n_keys: int) -> torch.Tensor:
    """[n_keys] index of the first row holding each key in 0..n_keys-1."""
    first = torch.full((n_keys,), len(keys), dtype=torch.long, device=keys.device)
    return first.scatter_reduce(0, keys, torch.arange(len(keys), device=keys.device), reduce="amin")


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


def group_ids(column: pa.ChunkedArray | pa.Array) -> np.ndarray:
    """Stable int64 keys of a grouping column (user, request): the keys ``encode`` puts in a Batch, so a
    grouped metric computed from the table groups exactly the rows the models' gAUC grouped."""
    return _stable_ids(column)[0]


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


def _log_transformed(table: pa.Table, schema: InputSchema) -> np.ndarray:
    """[rows, D] float64: the fixed per-kind transforms (nulls -> 0), clipped; no fitted state."""
    out = np.zeros((table.num_rows, len(schema.dense)), dtype=np.float64)
    for j, (name, kind) in enumerate(zip(schema.dense, schema.dense_kinds, strict=True)):
        x = np.asarray(table.column(name).cast(pa.float64()).fill_null(0.0).to_numpy(), dtype=np.float64)
        x = np.nan_to_num(x, nan=0.0, posinf=0.0, neginf=0.0)
        if kind == "count":
            x = np.log1p(np.maximum(x, 0.0))
        elif kind == "rate":
            x = np.log1p(np.maximum(x, 0.0) / PRIOR_CTR)
        out[:, j] = np.clip(x, -DENSE_CLIP, DENSE_CLIP)
    return out


def _dense_matrix(table: pa.Table, schema: InputSchema) -> np.ndarray:
    x = _log_transformed(table, schema)
    if schema.dense_mean:
        mean = np.asarray(schema.dense_mean, dtype=np.float64)
        std = np.asarray(schema.dense_std, dtype=np.float64)
        x = np.clip((x - mean) / std, -DENSE_CLIP, DENSE_CLIP)
    return x.astype(np.float32)


def _pack_mask(mask: np.ndarray) -> str:
    return base64.b64encode(zlib.compress(np.packbits(mask).tobytes(), 9)).decode("ascii")


def fit_input_schema(
    schema: InputSchema, table: pa.Table, min_id_count: int, parent: InputSchema | None = None
) -> InputSchema:
    """The schema with statistics fitted on a training window (module docstring).

    ``min_id_count <= 1`` admits every id. With ``parent`` (same structure, a warm start) the parent's
    dense statistics are kept and its admitted ids stay admitted.
    """
    if min_id_count < 0:
        raise ValueError(f"min_id_count must be >= 0, got {min_id_count}")
    if table.num_rows == 0:
        raise ValueError("cannot fit input statistics on an empty training window")
    if parent is not None and parent.structure() != schema.structure():
        raise ValueError("the parent schema has a different structure; fit a fresh schema instead")
    if parent is not None:
        mean, std = parent.dense_mean, parent.dense_std
    else:
        x = _log_transformed(table, schema)
        mean = tuple(float(v) for v in x.mean(0))
        # A constant column keeps unit scale: dividing by ~0 would blow up any later variation.
        std = tuple(float(v) if v > 1e-6 else 1.0 for v in x.std(0))
    admitted = [""] * len(schema.categorical)
    if min_id_count > 1:
        for name in (schema.user, schema.item):
            slot = schema.slot(name)
            ids = _bucketed(table.column(name), schema.buckets[slot])
            mask = np.bincount(ids, minlength=schema.buckets[slot]) >= min_id_count
            if parent is not None:
                old = parent.admitted_mask(slot)
                mask = np.ones_like(mask) if old is None else mask | old
            mask[0] = True
            admitted[slot] = "" if mask.all() else _pack_mask(mask)
    return replace(schema, dense_mean=tuple(mean), dense_std=tuple(std), min_id_count=min_id_count,
                   admitted=tuple(admitted) if any(admitted) else ())


def schema_change(old: InputSchema, new: InputSchema) -> str | None:
    """Why a model fitted to ``old`` cannot warm-start on ``new`` data, or None if their structure matches."""
    a, b = old.structure(), new.structure()
    if a == b:
        return None
    parts = []
    for key in sorted(set(a) | set(b)):
        if a.get(key) == b.get(key):
            continue
        va, vb = a.get(key), b.get(key)
        if isinstance(va, list) and isinstance(vb, list) and key in ("dense", "categorical", "profile_dense"):
            added, removed = sorted(set(vb) - set(va)), sorted(set(va) - set(vb))
            parts.append(f"{key}: added {added}, removed {removed}" if added or removed
                         else f"{key}: reordered")
        else:
            parts.append(f"{key}: {va!r} -> {vb!r}")
    return "input schema differs from the parent's (" + "; ".join(parts) + ")"


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
    admitted = [schema.admitted_mask(j) for j in range(len(schema.categorical))]
    for j, ok in enumerate(admitted):
        if ok is not None:
            categorical[:, j] = np.where(ok[categorical[:, j]], categorical[:, j], 0)
    seq_items, mask = _padded_lists(table.column(schema.seq_item_ids), L)
    seq_cats, _ = _padded_lists(table.column(schema.seq_category_ids), L)
    seq_items = np.where(mask, hash_ids(seq_items, item_b), 0)
    seq_cats = np.where(mask, hash_ids(seq_cats, cat_b), 0)
    # Behaviour ids go through the same admission as the candidate's (one id space): a rare item in a
    # sequence is the "no usable id" row, its category still informs.
    for name, seq in ((schema.item, seq_items), (schema.category, seq_cats)):
        ok = admitted[schema.slot(name)]
        if ok is not None:
            seq[:] = np.where(ok[seq], seq, 0)
    seq_ms, _ = _padded_lists(table.column(schema.seq_event_times), L)
    label = np.asarray(table.column(schema.label).cast(pa.float32()).to_numpy(zero_copy_only=False))
    if np.isnan(label).any() or not np.isin(label, (0.0, 1.0)).all():
        raise ValueError("labels must be 0 or 1 with no nulls")
    user_ids = group_ids(table.column(schema.user))
    request = None
    if REQUEST_COLUMN in table.column_names:
        request = torch.from_numpy(group_ids(table.column(REQUEST_COLUMN)))
    p_click = None
    if schema.has_p_click and schema.p_click in table.column_names:
        p = table.column(schema.p_click)
        if p.null_count == 0:
            p_click = torch.from_numpy(np.asarray(p.cast(pa.float32()).to_numpy(), np.float32).copy())

    return Batch(
        categorical=torch.from_numpy(categorical.astype(np.int64)),
        dense=torch.from_numpy(_dense_matrix(table, schema)),
        seq_items=torch.from_numpy(seq_items),
        seq_categories=torch.from_numpy(seq_cats),
        seq_times=torch.from_numpy(np.where(mask, seq_ms // 1000, 0)),
        seq_mask=torch.from_numpy(mask),
        cand_item=torch.from_numpy(categorical[:, schema.slot(schema.item)].astype(np.int64)),
        cand_category=torch.from_numpy(categorical[:, schema.slot(schema.category)].astype(np.int64)),
        cand_time=torch.from_numpy(_seconds(table.column(schema.time))),
        label=torch.from_numpy(label.astype(np.float32)),
        user=torch.from_numpy(user_ids),
        p_click=p_click,
        request=request,
    )
