"""Direct batched online reads equal Feast's get_online_features, entity for entity (real Feast, SQLite)."""

from __future__ import annotations

import pytest

from features.feature_repo.definitions import DEFAULT_SERVICE, serving_feature_names
from features.online import online_features
from serving_stub.online_reader import OnlineReader, entity_key
from serving_stub.scoring import FeatureFetcher

from .world import World


def test_direct_reads_equal_feast_for_known_and_unknown_entities(world: World) -> None:
    settings = world.settings
    items = [f"i{k}" for k in range(30)] + ["never-seen-item"]
    fetcher = FeatureFetcher(settings, OnlineReader(settings))
    for user in ("u0", "u3", "u9", "never-seen-user"):
        feast = online_features(settings, user, items).to_pydict()
        # At the newest feature time no pushed row is stale, so the fetcher's TTL rule changes nothing
        # and both must agree on every value, defaults of unknown entities included.
        ours = fetcher.fetch(DEFAULT_SERVICE, user, items, world.as_of_ms)
        assert set(ours) == set(serving_feature_names(DEFAULT_SERVICE, settings.horizons))
        for name, values in ours.items():
            assert values == pytest.approx(feast[name]) if "ctr" in name else values == feast[name], name


def test_rows_report_their_event_time_and_stale_rows_get_defaults(world: World) -> None:
    settings = world.settings
    reader = OnlineReader(settings)
    rows = reader.read("item_stats", ["i1", "i1", "never-seen-item"])
    assert set(rows) == {"i1"}  # duplicates read once, unknown entities absent
    fetcher = FeatureFetcher(settings, reader)
    ttl_ms = 7 * 86_400_000
    late = rows["i1"].event_time_ms + ttl_ms + 1000  # the row is older than the view's TTL by then
    values = fetcher.fetch(DEFAULT_SERVICE, "u1", ["i1"], late)
    assert values["item_stats__impressions_24h"] == [0]
    assert values["item_stats__ctr_7d"] == [pytest.approx(1 / 20)]
    fresh = fetcher.fetch(DEFAULT_SERVICE, "u1", ["i1"], rows["i1"].event_time_ms)
    assert fresh["item_stats__impressions_24h"] == [rows["i1"].values["impressions_24h"]]


def test_entity_keys_are_feasts_serialisation() -> None:
    from feast.infra.key_encoding_utils import serialize_entity_key
    from feast.protos.feast.types.EntityKey_pb2 import EntityKey
    from feast.protos.feast.types.Value_pb2 import Value

    proto = EntityKey(join_keys=["item_id"], entity_values=[Value(string_val="é-item")])
    assert entity_key("item_id", "é-item") == serialize_entity_key(proto, entity_key_serialization_version=3)
