"""The end-to-end flow's serving probe: the warehouse's newest request, scored over HTTP by a fresh stub."""

from __future__ import annotations

import math
import socket

import httpx
import numpy as np
import pyarrow as pa
import pytest

from pipelines.beam.sinks import refresh_views
from pipelines.kafka import EmbeddedBroker
from pipelines.settings import Settings
from serving_stub.probe import newest_request, score_newest_request
from tests.feature_store.synthetic_warehouse import labelled_samples, write_table

from .world import World, promote


def _replace_tail(table: pa.Table, column: str, values: list) -> pa.Table:
    head = table.column(column).to_pylist()[: table.num_rows - len(values)]
    field = table.schema.field(column)
    return table.set_column(table.schema.get_field_index(column), field, pa.array(head + values, field.type))


def test_newest_request_is_its_user_and_candidates_in_display_order(tmp_path) -> None:
    settings = Settings(home=tmp_path / "home")
    refresh_views(settings.warehouse_dir, settings.warehouse_db, settings.horizons, ["labelled_samples"])
    with pytest.raises(RuntimeError, match="no labelled samples"):
        newest_request(settings)

    # Event times are sorted: the last three rows are the newest request, shown in the order i5, i3, i4.
    table = labelled_samples(np.random.default_rng(0), 12, n_users=4, n_items=6, days=1.0)
    for column, values in (("request_id", ["newest"] * 3), ("user_id", ["u9"] * 3),
                           ("item_id", ["i3", "i5", "i4"]), ("position", [1, 0, 2])):
        table = _replace_tail(table, column, values)
    write_table(settings, "labelled_samples", table)
    refresh_views(settings.warehouse_dir, settings.warehouse_db, settings.horizons, ["labelled_samples"])
    assert newest_request(settings) == ("u9", ["i5", "i3", "i4"])


def test_probe_scores_the_newest_request_with_the_champion(world: World, broker: EmbeddedBroker) -> None:
    promote(world.settings, world.version, world.model)
    # Its own topics: the server tests count the records of the shared world's prediction log.
    settings = world.settings.model_copy(update={"topic_prefix": "srv-probe"})
    refresh_views(settings.warehouse_dir, settings.warehouse_db, settings.horizons, ["labelled_samples"])
    probe = score_newest_request(settings, broker.bootstrap)

    assert (probe.user_id, probe.items) == newest_request(settings)
    assert probe.model_version == world.version
    assert len(probe.scores) == len(probe.items) > 0
    assert all(math.isfinite(p) and 0 < p < 1 for p in probe.scores)
    host, port = httpx.URL(probe.url).host, httpx.URL(probe.url).port
    with pytest.raises(OSError), socket.create_connection((host, port), timeout=1):
        pass  # the stub stopped with the probe
