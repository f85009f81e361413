"""One served world for every serving test (training it is the expensive part)."""

from __future__ import annotations

import pytest

from pipelines.settings import Settings

from .world import World, build_world


@pytest.fixture(scope="session")
def world(tmp_path_factory: pytest.TempPathFactory) -> World:
    settings = Settings(home=tmp_path_factory.mktemp("serving") / "home", topic_prefix="srv",
                        reload_interval_s=1.0, serving_max_items=50, serving_max_body_bytes=16_384,
                        serving_p99_budget_ms=60_000.0)
    return build_world(settings)
