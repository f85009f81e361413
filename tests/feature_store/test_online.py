"""Online store: streaming pushes, explicit-range materialization, lookups (real Feast, SQLite)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pytest

from features.feature_repo.definitions import CTR_PRIOR
from features.online import latest_per_entity, materialize_range, online_features, push_latest
from features.store import FeatureStoreNotReady
from pipelines.settings import Settings
from pipelines.tables import DEFAULT_HORIZONS

from .synthetic_warehouse import T0_MS, write_synthetic_warehouse


def _newest(table: pa.Table, key: str, value: str) -> dict:
    rows = table.filter(pc.equal(table.column(key), value)).to_pylist()
    return max(rows, key=lambda r: (r["event_time"], r["created"]))


@pytest.fixture(scope="module")
def pushed(tmp_path_factory: pytest.TempPathFactory) -> tuple[Settings, dict]:
    settings = Settings(home=tmp_path_factory.mktemp("online") / "home")
    tables = write_synthetic_warehouse(settings, n_samples=60, n_users=6, n_items=8, feature_rows=80)
    for name in ("user_stats", "item_stats", "user_sequences"):
        assert push_latest(settings, name, tables[name]) > 0
    return settings, tables


def test_latest_per_entity_breaks_event_time_ties_by_created() -> None:
    ts = pa.array([1000, 1000, 500], pa.int64()).cast(pa.timestamp("ms", tz="UTC"))
    frame = pa.table({"user_id": ["a", "a", "b"], "event_time": ts,
                      "seq_item_ids": [[1], [2], [3]], "seq_category_ids": [[1], [2], [3]],
                      "seq_event_times": [[1], [2], [3]], "seq_length": pa.array([1, 1, 1], pa.int32()),
                      "created": pa.array([7, 3, 1], pa.int64()).cast(pa.timestamp("ms", tz="UTC"))})
    latest = latest_per_entity("user_sequences", frame, DEFAULT_HORIZONS)
    assert latest.column("user_id").to_pylist() == ["a", "b"]
    assert latest.column("seq_item_ids").to_pylist() == [[1], [3]]


def test_push_latest_serves_the_newest_row_per_entity(pushed: tuple[Settings, dict]) -> None:
    settings, tables = pushed
    user = tables["user_stats"].column("user_id")[0].as_py()
    items = [tables["item_stats"].column("item_id")[0].as_py(), "i-never-seen"]
    served = online_features(settings, user, items).to_pylist()
    newest_user = _newest(tables["user_stats"], "user_id", user)
    newest_item = _newest(tables["item_stats"], "item_id", items[0])
    newest_seq = _newest(tables["user_sequences"], "user_id", user)
    assert [row["item_id"] for row in served] == items
    for row in served:
        assert row["user_stats__impressions_24h"] == newest_user["impressions_24h"]
        assert row["user_stats__ctr_7d"] == pytest.approx(newest_user["ctr_7d"])
        assert row["user_sequence__seq_item_ids"] == newest_seq["seq_item_ids"]
        assert row["user_sequence__seq_length"] == newest_seq["seq_length"]
    assert served[0]["item_stats__clicks_7d"] == newest_item["clicks_7d"]
    # An item never seen gets the documented defaults, typed like training data.
    assert served[1]["item_stats__clicks_7d"] == 0
    assert served[1]["item_stats__ctr_24h"] == pytest.approx(CTR_PRIOR)


def test_push_latest_rejects_what_is_not_an_online_table(pushed: tuple[Settings, dict]) -> None:
    settings, tables = pushed
    with pytest.raises(ValueError, match="labelled_samples are training data"):
        push_latest(settings, "labelled_samples", tables["labelled_samples"])
    with pytest.raises(ValueError, match=r"lacks columns \['ctr_7d'\]"):
        push_latest(settings, "user_stats", tables["user_stats"].drop_columns(["ctr_7d"]))


def test_online_lookup_validates_its_inputs(pushed: tuple[Settings, dict]) -> None:
    settings, _ = pushed
    with pytest.raises(ValueError, match="unknown feature service"):
        online_features(settings, "u1", ["i1"], service="nope")
    with pytest.raises(ValueError, match="item ids"):
        online_features(settings, "u1", [])


def test_materialize_explicit_range_loads_replayed_history(tmp_path: Path) -> None:
    settings = Settings(home=tmp_path / "home")
    with pytest.raises(FeatureStoreNotReady, match="run the feature job first"):
        materialize_range(settings, datetime(2026, 1, 1, tzinfo=UTC), datetime(2026, 2, 1, tzinfo=UTC))
    tables = write_synthetic_warehouse(settings, n_samples=30, n_users=4, n_items=5, feature_rows=40)
    start = datetime.fromtimestamp(T0_MS / 1000, UTC) - timedelta(days=2)
    # History months before "now": materialize-incremental would skip all of it.
    materialize_range(settings, start, start + timedelta(days=10))
    user = tables["user_stats"].column("user_id")[0].as_py()
    served = online_features(settings, user, ["i0"]).to_pylist()[0]
    expected = _newest(tables["user_stats"], "user_id", user)
    assert served["user_stats__impressions_7d"] == expected["impressions_7d"]
