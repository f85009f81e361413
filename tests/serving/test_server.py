"""The scoring service over real HTTP: uvicorn on a free loopback port, an httpx client, the real broker."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path

import duckdb
import httpx
import numpy as np
import pyarrow as pa
import pytest
import torch
from hypothesis import HealthCheck, given
from hypothesis import settings as hsettings
from hypothesis import strategies as st

from features.datasets import join_features
from features.online import latest_per_entity
from pipelines import tables
from pipelines.beam.sinks import refresh_views
from pipelines.kafka import EmbeddedBroker
from pipelines.served import sink_served
from pipelines.settings import Settings
from serving_stub.server import ServerThread
from tests.feature_store.synthetic_warehouse import write_table
from training.artifacts import load_model, read_config
from training.inputs import Batch, InputSchema, encode
from training.models.sequence import match_counts

from .world import World, corrupt_copy, poisoned, promote, shifted, variant

ITEMS = ["i0", "i1", "i2", "i5", "i8", "i13", "never-seen-item"]


def _labelled_samples(table: pa.Table) -> pa.Table:
    """``labelled_samples`` rows; the side fields a test does not set are missing, as on a plain log."""
    for field in tables.LABELLED_SAMPLES:
        if field.name not in table.column_names:
            table = table.append_column(field.name, pa.nulls(table.num_rows, field.type))
    return table.select(tables.LABELLED_SAMPLES.names).cast(tables.LABELLED_SAMPLES)


@pytest.fixture(scope="module")
def server(world: World, broker: EmbeddedBroker) -> Iterator[ServerThread]:
    promote(world.settings, world.version, world.model)
    with ServerThread(world.settings, broker.bootstrap) as srv:
        yield srv


@pytest.fixture(scope="module")
def client(server: ServerThread) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.url, timeout=30) as c:
        yield c


def wait_for(condition: Callable[[], bool], timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.02)
    return condition()


def serving_version(client: httpx.Client) -> str | None:
    serving = client.get("/v1/model").json()["serving"]
    return serving and serving["version"]


def score(client: httpx.Client, world: World, user: str = "u2", **extra: object) -> httpx.Response:
    context = {"event_time": world.as_of_ms, "device": "mobile", "page": "home",
               "positions": list(range(len(ITEMS)))}
    return client.post("/v1/score", json={"user_id": user, "items": ITEMS, "context": context, **extra})


def training_path_rows(world: World, version: str, user: str) -> tuple[torch.nn.Module, Batch]:
    """The same request as training rows (the dataset builder's PIT join, the training encoder) and the
    served model, which scores each row on its own; the candidate's category as its newest
    item_attributes row says."""
    categories = latest_per_entity("item_attributes", world.tables["item_attributes"],
                                   world.settings.horizons).to_pydict()
    category = dict(zip(categories["item_id"], categories["category"], strict=True))
    n = len(ITEMS)
    when = pa.array([world.as_of_ms] * n, pa.int64()).cast(tables.TS)
    samples = _labelled_samples(pa.table({
        "impression_id": [f"x{k}" for k in range(n)], "request_id": ["r"] * n, "user_id": [user] * n,
        "item_id": ITEMS, "category": [category.get(i) for i in ITEMS], "position": list(range(n)),
        "hour": [datetime.fromtimestamp(world.as_of_ms / 1000, UTC).hour] * n, "device": ["mobile"] * n,
        "page": ["home"] * n, "event_time": when, "label": [0] * n, "click_time": pa.nulls(n),
        "p_click": pa.nulls(n), "created": when, "request_size": [n] * n,
    }))
    rows = join_features(world.settings, samples)
    model, config = load_model(world.settings, version, world.model)
    return model, encode(rows, InputSchema.from_dict(config.input_schema))


def test_served_scores_equal_the_training_path_on_the_same_features(client: httpx.Client,
                                                                     world: World) -> None:
    # Every statistics horizon is a model input here, the long ones (decayed, all time) included.
    dense = InputSchema.from_dict(read_config(world.settings, world.version).input_schema).dense
    for view in ("user_stats", "item_stats"):
        assert {f"{view}__{stat}_{w}" for w in world.settings.horizons.suffixes
                for stat in ("impressions", "clicks", "ctr")} <= set(dense)
    # The target-match counts are inputs too: some candidates share an item, and some a category, with
    # the user's behaviours, so a serving path that got them wrong would change these scores.
    rows = {user: training_path_rows(world, world.version, user) for user in ("u2", "u7", "never-seen-user")}
    counts = torch.cat([match_counts(torch.stack([b.cand_item, b.cand_category], -1)[:, None, :], b,
                                     m.inputs.seq_len)[:, 0] for m, b in rows.values()])
    assert all(m.inputs.target_match for m, _ in rows.values()) and (counts > 0).any(0).all(), counts
    for user, (model, batch) in rows.items():
        with torch.no_grad():
            expected = torch.sigmoid(model(batch)).numpy()
        response = score(client, world, user)
        assert response.status_code == 200, response.text
        body = response.json()
        assert body["model_version"] == world.version
        assert len(body["scores"]) == len(ITEMS)
        np.testing.assert_allclose(body["scores"], expected, atol=1e-5, rtol=0)
    assert client.get("/readyz").json() == {"ready": True, "model_version": world.version}


def test_new_champion_and_switch_back_without_restart(client: httpx.Client, world: World) -> None:
    settings = world.settings
    before = score(client, world).json()["scores"]
    newer = variant(settings, world.version, world.model, shifted)
    promote(settings, newer, world.model)
    assert wait_for(lambda: serving_version(client) == newer, 3 * settings.reload_interval_s)
    after = score(client, world).json()
    assert after["model_version"] == newer and not np.allclose(after["scores"], before)
    promote(settings, world.version, world.model)
    assert wait_for(lambda: serving_version(client) == world.version, 3 * settings.reload_interval_s)
    back = score(client, world).json()
    assert back["model_version"] == world.version
    np.testing.assert_allclose(back["scores"], before, atol=1e-7)


def _failures(client: httpx.Client) -> int:
    return client.get("/v1/model").json()["reload"]["failures"]


@pytest.mark.parametrize("breakage", ["corrupt weights", "NaN scores"])
def test_a_bad_champion_is_refused_and_the_old_one_keeps_serving(client: httpx.Client, world: World,
                                                                 breakage: str) -> None:
    settings = world.settings
    if breakage == "corrupt weights":
        bad = corrupt_copy(settings, world.version)
    else:
        bad = variant(settings, world.version, world.model, poisoned)
    assert score(client, world).json()["model_version"] == world.version
    failures = _failures(client)
    promote(settings, bad, world.model)
    assert wait_for(lambda: _failures(client) > failures, 3 * settings.reload_interval_s + 5)
    info = client.get("/v1/model").json()
    assert info["serving"]["version"] == world.version
    assert bad in info["reload"]["last_error"]
    reason = "artifact" if breakage == "corrupt weights" else "smoke"
    assert f'ctrflow_serving_reload_failures_total{{reason="{reason}"}}' in client.get("/metrics").text
    response = score(client, world)
    assert response.status_code == 200 and response.json()["model_version"] == world.version
    promote(settings, world.version, world.model)


def _post_raw(client: httpx.Client, body: bytes) -> httpx.Response:
    return client.post("/v1/score", content=body, headers={"content-type": "application/json"})


def test_bounds_give_4xx_with_a_message(client: httpx.Client, world: World) -> None:
    limits = world.settings
    cases = {
        "too many items": {"user_id": "u1", "items": [f"i{k}" for k in range(limits.serving_max_items + 1)]},
        "long id": {"user_id": "u" * (limits.serving_max_id_length + 1), "items": ["i1"]},
        "no items": {"user_id": "u1", "items": []},
        "positions mismatch": {"user_id": "u1", "items": ["i1", "i2"], "context": {"positions": [0]}},
        "event_time in seconds": {"user_id": "u1", "items": ["i1"], "context": {"event_time": 1_700_000_000}},
        "hour out of range": {"user_id": "u1", "items": ["i1"], "context": {"hour": 24}},
        "unknown field": {"user_id": "u1", "items": ["i1"], "colour": "red"},
        "lone surrogate": {"user_id": "\ud800", "items": ["i1"]},
    }
    for name, body in cases.items():
        response = _post_raw(client, json.dumps(body).encode())
        assert response.status_code == 422, (name, response.status_code, response.text)
        assert response.json()["detail"], name
    big = _post_raw(client, b'{"user_id": "u1", "items": ["' + b"i" * limits.serving_max_body_bytes + b'"]}')
    assert big.status_code == 413 and "bytes" in big.json()["detail"]
    assert _post_raw(client, b"{not json").status_code == 422


def _shaped_bodies(properties: list[str]) -> st.SearchStrategy:
    scalar = st.one_of(st.none(), st.booleans(), st.integers(-(2**63), 2**63), st.floats(allow_nan=False),
                       st.text(max_size=40), st.sampled_from(["\ud800", "", "i" * 300, "\x00"]))
    ids = st.lists(st.one_of(st.text(min_size=1, max_size=12), scalar), max_size=60)
    context = st.dictionaries(
        st.sampled_from(["event_time", "hour", "device", "page", "positions", "extra"]),
        st.one_of(scalar, st.integers(0, 5_000_000_000_000), st.lists(st.integers(-5, 20_000), max_size=60)),
    )
    fields = {"user_id": st.one_of(st.text(min_size=1, max_size=20), scalar), "items": ids,
              "context": st.one_of(context, scalar), "request_id": st.one_of(st.text(max_size=300), scalar)}
    assert set(fields) == set(properties), "the fuzz strategy must cover the OpenAPI request schema"
    return st.fixed_dictionaries({}, optional=fields)


def test_fuzzed_requests_never_get_a_5xx(client: httpx.Client, world: World) -> None:
    openapi = client.get("/openapi.json").json()
    properties = list(openapi["components"]["schemas"]["ScoreRequest"]["properties"])
    anything = st.recursive(st.one_of(st.none(), st.booleans(), st.integers(), st.text(max_size=20)),
                            lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=8),
                                                                                       inner, max_size=5),
                            max_leaves=20)
    as_json = lambda value: json.dumps(value).encode()  # noqa: E731
    bodies = st.one_of(_shaped_bodies(properties).map(as_json), anything.map(as_json),
                       st.binary(max_size=200))
    seen: dict[int, int] = {}

    @hsettings(max_examples=100, deadline=None, database=None,
               suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])
    @given(bodies)
    def check(body: bytes) -> None:
        response = _post_raw(client, body)
        seen[response.status_code] = seen.get(response.status_code, 0) + 1
        assert response.status_code < 500, (body, response.status_code, response.text)
        if response.status_code == 200:
            assert len(response.json()["scores"]) == len(json.loads(body)["items"])
        else:
            assert 400 <= response.status_code < 500 and response.json()["detail"]

    check()
    assert seen.get(422, 0) > 0


def test_prediction_log_has_one_record_per_scored_request_and_joins_clicks(
    client: httpx.Client, server: ServerThread, world: World
) -> None:
    settings = world.settings
    sent = {}
    for k in range(4):
        body = score(client, world, f"u{k}", request_id=f"plog-{k}").json()
        sent[body["request_id"]] = body
    service = server.app.state.service
    assert service.prediction_log.flush(30)
    report = sink_served(settings, server_bootstrap(server))
    assert report.skipped == 0
    # Clicks arrive later as labelled impressions of the same requests (what the feature job writes).
    clicked = [("plog-1", "u1", "i2"), ("plog-3", "u3", "never-seen-item")]
    write_table(settings, "labelled_samples", _labelled(world, clicked), part="clicks-of-served")
    refresh_views(settings.warehouse_dir, settings.warehouse_db, settings.horizons)
    with duckdb.connect(str(settings.warehouse_db), read_only=True) as con:
        served = con.sql("SELECT request_id, item_id, model_version, score, rank_in_request FROM served "
                         "WHERE request_id LIKE 'plog-%' ORDER BY request_id, rank_in_request").fetchall()
        joined = con.sql("SELECT s.request_id, s.item_id, l.label, s.model_version FROM served s JOIN "
                         "labelled_samples l USING (request_id, user_id, item_id) "
                         "WHERE s.request_id LIKE 'plog-%' ORDER BY 1").fetchall()

    assert len(served) == len(sent) * len(ITEMS)  # exactly once per scored candidate
    for request_id, item, version, value, rank in served:
        assert version == sent[request_id]["model_version"] == world.version
        assert ITEMS[rank] == item and value == pytest.approx(sent[request_id]["scores"][rank])
    assert [(r, i, label) for r, i, label, _ in joined] == [(r, i, 1) for r, _, i in clicked]
    scored = sum(float(line.rsplit(" ", 1)[1]) for line in client.get("/metrics").text.splitlines()
                 if line.startswith("ctrflow_serving_scored_requests_total"))
    log_lines = [ln for ln in client.get("/metrics").text.splitlines() if "prediction_log" in ln]
    assert report.records == scored, log_lines  # one record per scored request, all this server scored


def server_bootstrap(server: ServerThread) -> str:
    return server.app.state.service.prediction_log.bootstrap


def _labelled(world: World, clicked: list[tuple[str, str, str]]) -> pa.Table:
    n = len(clicked)
    when = pa.array([world.as_of_ms] * n, pa.int64()).cast(tables.TS)
    return _labelled_samples(pa.table({
        "impression_id": [f"imp-{r}-{i}" for r, _, i in clicked], "request_id": [r for r, _, _ in clicked],
        "user_id": [u for _, u, _ in clicked], "item_id": [i for _, _, i in clicked],
        "category": pa.nulls(n, pa.string()), "position": [0] * n, "hour": [0] * n,
        "device": ["mobile"] * n, "page": ["home"] * n, "event_time": when, "label": [1] * n,
        "click_time": when, "p_click": pa.nulls(n), "created": when,
    }))


def test_not_ready_without_a_champion(tmp_path: Path) -> None:
    settings = Settings(home=tmp_path / "home", reload_interval_s=0.2)
    with ServerThread(settings) as srv, httpx.Client(base_url=srv.url) as c:
        assert c.get("/healthz").status_code == 200
        ready = c.get("/readyz")
        assert ready.status_code == 503 and ready.json()["ready"] is False
        response = c.post("/v1/score", json={"user_id": "u1", "items": ["i1"]})
        assert response.status_code == 503 and "no champion" in response.json()["detail"]


def test_an_unreadable_pointer_keeps_the_old_model(client: httpx.Client, world: World) -> None:
    from training.registry import pointer_path

    failures = _failures(client)
    pointer_path(world.settings).write_text('{"version": ')  # a foreign writer's half-written file
    try:
        assert wait_for(lambda: _failures(client) > failures, 3 * world.settings.reload_interval_s + 5)
        info = client.get("/v1/model").json()
        assert info["serving"]["version"] == world.version
        assert info["reload"]["last_error"].startswith("champion pointer unreadable")
        assert score(client, world).json()["model_version"] == world.version
    finally:
        promote(world.settings, world.version, world.model)
