"""Small training sets that follow the dataset contract (data.parquet + manifest.json) with learnable signal.

Each user has a favourite category; the click probability rises when the candidate is in it, when the
candidate's category appears in the user's recent clicks, and falls with the position. The true click
probability is written to ``p_click`` so oracle metrics can be checked. Sequences and statistics are built
strictly from events before each impression, like the real builder does.
"""

from __future__ import annotations

from collections import defaultdict, deque
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from features.manifest import SEQUENCE_COLUMNS, SEQUENCE_VIEW, DatasetManifest, ManifestColumns
from features.services import DEFAULT_SERVICE
from pipelines.events import EVENT_SCHEMA, SIDE_FIELDS, stable_int_id
from pipelines.settings import Settings
from pipelines.tables import ALL_TIME, CTR_PRIOR_CLICKS, CTR_PRIOR_IMPRESSIONS, DEFAULT_HORIZONS, TS

SEQ_ITEMS = SEQUENCE_COLUMNS["item_ids"]
SEQ_CATS = SEQUENCE_COLUMNS["category_ids"]
SEQ_TIMES = SEQUENCE_COLUMNS["event_times"]
SEQ_LEN_COL = f"{SEQUENCE_VIEW}__seq_length"


def _dense_columns() -> list[str]:
    cols = []
    for view in ("user_stats", "item_stats"):
        for w in DEFAULT_HORIZONS.suffixes:
            cols += [f"{view}__impressions_{w}", f"{view}__clicks_{w}", f"{view}__ctr_{w}"]
    return cols


DENSE = _dense_columns()


def make_manifest(name: str, rows: int, label_rate: float, has_p_click: bool = True) -> DatasetManifest:
    return DatasetManifest(
        name=name,
        feature_service=DEFAULT_SERVICE,
        window_start="2026-01-01T00:00:00+00:00",
        window_end="2026-01-02T00:00:00+00:00",
        rows=rows,
        label_rate=label_rate,
        content_hash=f"synthetic-{name}",
        columns=ManifestColumns.for_features([*DENSE, SEQ_ITEMS, SEQ_CATS, SEQ_TIMES, SEQ_LEN_COL]),
        has_p_click=has_p_click,
    )


def make_table(
    n_rows: int = 512,
    n_users: int = 24,
    n_items: int = 60,
    n_categories: int = 6,
    seq_len: int = 8,
    seed: int = 0,
    start_ms: int = 1_767_225_600_000,  # 2026-01-01 UTC
    item_quality: float = 0.0,
) -> pa.Table:
    """A contract-conforming training table, rows in event-time order.

    ``item_quality`` > 0 adds a per-item logit offset (normal, that standard deviation), so an item's past
    click rate carries signal; drawn from its own generator, so 0 leaves every other draw as it was."""
    rng = np.random.default_rng(seed)
    quality = np.random.default_rng(seed + 10_007).normal(0.0, item_quality, size=n_items)
    item_cat = rng.integers(0, n_categories, size=n_items)
    fav = rng.integers(0, n_categories, size=n_users)
    times = start_ms + np.sort(rng.integers(0, 86_400_000, size=n_rows))
    users = rng.integers(0, n_users, size=n_rows)
    items = rng.integers(0, n_items, size=n_rows)
    positions = rng.integers(0, 10, size=n_rows)

    history: dict[int, deque] = defaultdict(lambda: deque(maxlen=seq_len))
    user_events: dict[int, list[tuple[int, int]]] = defaultdict(list)  # (time, clicked)
    item_events: dict[int, list[tuple[int, int]]] = defaultdict(list)
    rows: dict[str, list] = defaultdict(list)
    for n in range(n_rows):
        u, i, t, pos = int(users[n]), int(items[n]), int(times[n]), int(positions[n])
        cat = int(item_cat[i])
        seq = list(history[u])
        recent_cats = {c for _, c, _ in seq}
        logit = -2.2 + 1.8 * (cat == fav[u]) + 1.0 * (cat in recent_cats) - 0.12 * pos + quality[i]
        p = float(1.0 / (1.0 + np.exp(-logit)))
        label = int(rng.random() < p)
        rows["impression_id"].append(f"imp-{seed}-{n}")
        rows["request_id"].append(f"req-{seed}-{n}")
        rows["user_id"].append(f"u{u}")
        rows["item_id"].append(f"i{i}")
        rows["category"].append(f"c{cat}")
        rows["position"].append(pos)
        rows["hour"].append((t // 3_600_000) % 24)
        rows["device"].append("mobile" if u % 3 else "desktop")
        rows["page"].append("home" if n % 2 else "search")
        for side in SIDE_FIELDS:  # no side information in this log, as in the simulator's
            rows[side].append(None)
        rows["event_time"].append(t)
        rows["label"].append(label)
        rows["click_time"].append(t + 5_000 if label else None)
        rows["p_click"].append(p)
        rows["created"].append(t)
        rows[SEQ_ITEMS].append([stable_int_id(f"i{s}") for s, _, _ in seq])
        rows[SEQ_CATS].append([stable_int_id(f"c{c}") for _, c, _ in seq])
        rows[SEQ_TIMES].append([st for _, _, st in seq])
        rows[SEQ_LEN_COL].append(len(seq))
        for view, key, events in (("user_stats", u, user_events), ("item_stats", i, item_events)):
            windows = {w: [c for et, c in events[key] if t - secs * 1000 <= et < t]
                       for w, secs in DEFAULT_HORIZONS.sliding}
            windows[ALL_TIME] = [c for et, c in events[key] if et < t]
            counts = {w: (len(past) - sum(past), sum(past)) for w, past in windows.items()}
            for w, secs in DEFAULT_HORIZONS.decayed:
                weights = [(np.exp(-(t - et) / (secs * 1000)), c) for et, c in events[key] if et < t]
                counts[w] = (sum(x for x, c in weights if not c), sum(x for x, c in weights if c))
            for w in DEFAULT_HORIZONS.suffixes:
                imps, clicks = counts[w]
                rows[f"{view}__impressions_{w}"].append(imps)
                rows[f"{view}__clicks_{w}"].append(clicks)
                rows[f"{view}__ctr_{w}"].append((clicks + CTR_PRIOR_CLICKS) / (imps + CTR_PRIOR_IMPRESSIONS))
        user_events[u].append((t, label))
        item_events[i].append((t, label))
        if label:
            history[u].append((i, cat, t + 5_000))

    types = {
        "position": pa.int32(), "hour": pa.int8(), "label": pa.int8(), "p_click": pa.float64(),
        "event_time": TS, "click_time": TS, "created": TS, SEQ_LEN_COL: pa.int32(),
        SEQ_ITEMS: pa.list_(pa.int64()), SEQ_CATS: pa.list_(pa.int64()), SEQ_TIMES: pa.list_(pa.int64()),
    }
    for col in DENSE:
        decayed = any(col.endswith(f"_{w}") for w, _ in DEFAULT_HORIZONS.decayed)
        types[col] = pa.float64() if "__ctr_" in col or decayed else pa.int64()
    types.update({side: EVENT_SCHEMA.field(side).type for side in SIDE_FIELDS})
    return pa.table({k: pa.array(v, type=types.get(k, pa.string())) for k, v in rows.items()})


def make_dataset(
    n_rows: int = 512, seed: int = 0, name: str = "synthetic", **kwargs: Any
) -> tuple[pa.Table, DatasetManifest]:
    table = make_table(n_rows=n_rows, seed=seed, **kwargs)
    labels = np.asarray(table.column("label").to_numpy(), dtype=np.float64)
    return table, make_manifest(name, table.num_rows, float(labels.mean()))


def write_dataset(settings: Settings, table: pa.Table, manifest: DatasetManifest) -> Path:
    """Write ``datasets_dir/<name>/{data.parquet,manifest.json}`` and point LATEST at it."""
    import pyarrow.parquet as pq

    folder = settings.datasets_dir / manifest.name
    folder.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, folder / "data.parquet")
    (folder / "manifest.json").write_text(manifest.to_json())
    (settings.datasets_dir / "LATEST").write_text(manifest.name)
    return folder
