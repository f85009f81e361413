"""The promotion gate's servability check: can this version be served, without skew, within budget?

Two independent paths score the same users x candidates at the same as-of time:

- serving: the serving code loads the artifact from disk (``load_serving_model``, smoke test included)
  and scores each user's candidates exactly as a request would (online store read -> request encoder ->
  one candidate-parallel pass);
- offline: the warehouse point-in-time join (``features.asof``) builds training-set rows, the training
  encoder (``training.inputs.encode``) turns them into a batch, and the model scores every row on its own
  (rows mode).

PASS iff the largest absolute score difference is below ``MAX_ABS_DIFF`` and the in-process p99 of
``TIMING_RUNS`` scorings of ``candidates`` candidates is within ``Settings.serving_p99_budget_ms``. The
as-of time defaults to the newest feature row of the warehouse, where a complete online store holds
exactly the rows the join picks; an online store behind the warehouse fails the check, rightly: it
would serve other features than training assumed.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime

import duckdb
import numpy as np
import pyarrow as pa
import torch

from features.asof import ROW_ID, asof_view_features, parquet_glob
from features.feature_repo.definitions import VIEW_TABLES, serving_feature_names, serving_views
from features.normalize import normalize_features
from pipelines import tables
from pipelines.events import SIDE_FIELDS
from pipelines.settings import Settings
from serving_stub.champion import ModelRefused, load_serving_model
from serving_stub.online_reader import OnlineReader, OnlineReadError
from serving_stub.scoring import CATEGORY_FEATURE, FeatureFetcher, RequestContext, probabilities, utc_hour
from training.gate import Blessing
from training.inputs import InputSchema, encode

MAX_ABS_DIFF = 1e-5
TIMING_RUNS = 200
COLD_USER = "__servability_cold_user"
COLD_ITEM = "__servability_cold_item"


def _distinct(settings: Settings, table: str, key: str, limit: int, seed: int) -> list[str]:
    directory = settings.warehouse_dir / table
    if not any(directory.rglob("*.parquet")):
        return []
    sql = (f"SELECT DISTINCT {key} FROM read_parquet('{parquet_glob(directory)}', hive_partitioning = false) "
           f"ORDER BY hash({key} || ?) LIMIT ?")
    with duckdb.connect() as con:
        return [row[0] for row in con.execute(sql, [str(seed), limit]).fetchall()]


def newest_feature_time_ms(settings: Settings) -> int | None:
    """The newest event_time of any online feature table in the warehouse (ms UTC)."""
    newest = None
    with duckdb.connect() as con:
        for table in VIEW_TABLES.values():
            directory = settings.warehouse_dir / table
            if not any(directory.rglob("*.parquet")):
                continue
            sql = (f"SELECT epoch_ms(max(event_time)) FROM "
                   f"read_parquet('{parquet_glob(directory)}', hive_partitioning = false)")
            value = con.execute(sql).fetchone()[0]
            if value is not None:
                newest = value if newest is None else max(newest, value)
    return newest


def offline_scores(settings: Settings, model: torch.nn.Module, schema: InputSchema, service: str,
                   users: list[str], items: list[str], context: RequestContext) -> np.ndarray:
    """[users, items] scores through the PIT join and the training encoder, every row on its own."""
    n = len(users) * len(items)
    when = pa.array(np.full(n, context.event_time_ms, np.int64)).cast(tables.TS)
    entities = pa.table({
        ROW_ID: pa.array(np.arange(n), pa.int64()),
        "user_id": pa.array(np.repeat(users, len(items)).tolist(), pa.string()),
        "item_id": pa.array(items * len(users), pa.string()),
        "event_time": when,
    })
    joined = asof_view_features(settings, entities, serving_views(service))
    names = serving_feature_names(service, settings.horizons)
    sample = tables.LABELLED_SAMPLES
    hour = utc_hour(context.event_time_ms) if context.hour is None else context.hour
    rows = pa.table({
        "label": pa.array(np.zeros(n, np.int8)),
        "event_time": when,
        "user_id": entities.column("user_id"),
        "item_id": entities.column("item_id"),
        "category": joined.column(CATEGORY_FEATURE),
        "position": pa.array(list(context.positions or [0] * len(items)) * len(users),
                             sample.field("position").type),
        "hour": pa.array([hour] * n, sample.field("hour").type),
        "device": pa.array([context.device] * n, sample.field("device").type),
        "page": pa.array([context.page] * n, sample.field("page").type),
        **{name: joined.column(name) for name in names},
    })
    # A request's size is its candidate count; side fields no online view holds are missing here too.
    for name in SIDE_FIELDS:
        if name in sample.names:
            column = (pa.array([len(items)] * n, sample.field(name).type) if name == "request_size"
                      else pa.nulls(n, sample.field(name).type))
            rows = rows.append_column(name, column)
    batch = encode(normalize_features(rows, names, settings.horizons), schema)
    return probabilities(model, batch, one_request=False).reshape(len(users), len(items))


def check_servability(
    settings: Settings,
    version: str,
    *,
    sample_users: int = 16,
    candidates: int = 100,
    model: str | None = None,
    as_of_ms: int | None = None,
    timing_runs: int = TIMING_RUNS,
    seed: int = 0,
) -> Blessing:
    """Score ``sample_users`` (plus one never-seen user) x ``candidates`` through the serving path and the
    offline path; see the module docstring for the PASS rule. Every outcome is a Blessing with numbers."""
    thresholds = {"max_abs_diff": MAX_ABS_DIFF, "p99_ms": settings.serving_p99_budget_ms}
    try:
        served = load_serving_model(settings, version, model)
    except ModelRefused as exc:
        return Blessing("servability", False, {}, thresholds, (str(exc),))
    as_of = as_of_ms if as_of_ms is not None else newest_feature_time_ms(settings)
    if as_of is None:
        return Blessing("servability", False, {}, thresholds,
                        ("the warehouse has no feature rows: nothing to compare serving against",))
    users = [*_distinct(settings, "user_stats", "user_id", sample_users, seed), COLD_USER]
    items = _distinct(settings, "item_stats", "item_id", max(candidates - 1, 1), seed)
    items = (items + [f"{COLD_ITEM}_{k}" for k in range(candidates)])[:candidates]
    context = RequestContext(event_time_ms=as_of)
    fetcher = FeatureFetcher(settings, OnlineReader(settings))
    threads = torch.get_num_threads()
    if settings.serving_torch_threads:  # time what the server would run (process-wide: restored below)
        torch.set_num_threads(settings.serving_torch_threads)
    try:
        online = np.stack([
            served.score(user, items, context, fetcher.fetch(served.feature_service, user, items, as_of))
            for user in users
        ])
        times = []
        for k in range(timing_runs):
            user = users[k % len(users)]
            started = time.perf_counter()
            served.score(user, items, context, fetcher.fetch(served.feature_service, user, items, as_of))
            times.append((time.perf_counter() - started) * 1000)
    except OnlineReadError as exc:
        return Blessing("servability", False, {}, thresholds, (f"online store unreadable: {exc}",))
    finally:
        fetcher.reader.close()
        torch.set_num_threads(threads)
    offline = offline_scores(settings, served.model, served.schema, served.feature_service, users, items,
                             context)
    diff = float(np.max(np.abs(online - offline))) if online.size else float("nan")
    p50, p99 = (float(np.percentile(times, q)) for q in (50, 99))
    numbers = {
        "version": version, "model": served.name, "users": len(users), "candidates": len(items),
        "as_of": datetime.fromtimestamp(as_of / 1000, UTC).isoformat(), "max_abs_diff": diff,
        "p50_ms": round(p50, 3), "p99_ms": round(p99, 3), "timing_runs": timing_runs,
        "finite": bool(np.isfinite(online).all()),
    }
    reasons = []
    if not diff < MAX_ABS_DIFF:
        reasons.append(f"served and offline scores differ by {diff:.3g} (limit {MAX_ABS_DIFF:g})")
    if not p99 <= settings.serving_p99_budget_ms:
        reasons.append(f"p99 {p99:.2f} ms over the budget of {settings.serving_p99_budget_ms} ms")
    return Blessing("servability", not reasons, numbers, thresholds, tuple(reasons))
