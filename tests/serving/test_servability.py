"""The gate's servability check: serving path vs PIT join + training encoder, and the p99 budget rule."""

from __future__ import annotations

import pyarrow as pa
import pyarrow.compute as pc
import pytest

from features.online import push_latest
from pipelines.settings import Settings
from serving_stub.champion import ModelRefused, load_serving_model
from serving_stub.servability import MAX_ABS_DIFF, check_servability
from training.artifacts import read_config
from training.inputs import InputSchema

from .world import World, build_world, corrupt_copy

SMALL = {"sample_users": 4, "candidates": 40, "timing_runs": 20}


def test_a_consistent_version_passes_with_its_numbers(world: World) -> None:
    blessing = check_servability(world.settings, world.version, **SMALL)
    assert blessing.name == "servability" and blessing.passed, blessing.reasons
    numbers = blessing.numbers
    assert numbers["max_abs_diff"] < MAX_ABS_DIFF and numbers["finite"]
    assert numbers["users"] == 5 and numbers["candidates"] == 40  # 4 sampled users + one never seen
    assert 0 < numbers["p50_ms"] <= numbers["p99_ms"] and numbers["timing_runs"] == 20
    budget = world.settings.serving_p99_budget_ms
    assert blessing.thresholds == {"max_abs_diff": MAX_ABS_DIFF, "p99_ms": budget}


def test_configured_statistics_horizons_reach_serving_unchanged(tmp_path) -> None:
    """A home with other horizons: the model's inputs are those columns, and the serving path (online
    store, request encoder) scores exactly what the point-in-time join and the training encoder do."""
    settings = Settings(home=tmp_path / "home", topic_prefix="hz", stat_windows="2h,3d",
                        stat_decayed_windows="60d", serving_p99_budget_ms=60_000.0)
    custom = build_world(settings, seed=5)
    dense = InputSchema.from_dict(read_config(settings, custom.version).input_schema).dense
    for view in ("user_stats", "item_stats"):
        assert {f"{view}__{stat}_{w}" for w in ("2h", "3d", "60d", "all")
                for stat in ("impressions", "clicks", "ctr")} <= set(dense)
        assert not [c for c in dense if c.startswith(view) and c.endswith(("_1h", "_24h", "_7d", "_30d"))]
    blessing = check_servability(settings, custom.version, **SMALL)
    assert blessing.passed and blessing.numbers["max_abs_diff"] < MAX_ABS_DIFF, blessing.reasons
    # A server started without the home's horizons would miss those columns in every request: refused.
    default = settings.model_copy(update={"stat_windows": "1h,24h,7d", "stat_decayed_windows": "30d"})
    refused = r"does not serve \(e\.g\. user_stats__impressions_2h.*here are 1h,24h,7d,30d,all"
    with pytest.raises(ModelRefused, match=refused):
        load_serving_model(default, custom.version)


def test_over_the_latency_budget_fails(world: World) -> None:
    strict = world.settings.model_copy(update={"serving_p99_budget_ms": 1e-6})
    blessing = check_servability(strict, world.version, **SMALL)
    assert not blessing.passed and blessing.numbers["max_abs_diff"] < MAX_ABS_DIFF
    assert len(blessing.reasons) == 1 and "p99" in blessing.reasons[0]


def test_an_online_store_that_disagrees_with_the_warehouse_fails(world: World) -> None:
    settings, items = world.settings, world.tables["item_stats"]
    skewed = items.set_column(items.schema.get_field_index("impressions_7d"), "impressions_7d",
                              pc.add(items.column("impressions_7d"), pa.scalar(5000, pa.int64())))
    push_latest(settings, "item_stats", skewed)
    try:
        blessing = check_servability(settings, world.version, **SMALL)
    finally:
        push_latest(settings, "item_stats", items)
    assert not blessing.passed and blessing.numbers["max_abs_diff"] > MAX_ABS_DIFF
    assert "differ" in blessing.reasons[0]


def test_an_unloadable_artifact_fails_with_the_reason(world: World) -> None:
    blessing = check_servability(world.settings, corrupt_copy(world.settings, world.version), **SMALL)
    assert not blessing.passed and "cannot load" in blessing.reasons[0]
