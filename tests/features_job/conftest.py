"""Fixtures of the feature-job tests: a small simulated log (real simulator) and table readers."""

from __future__ import annotations

from pathlib import Path

import pytest

from pipelines.simulator import SimulatorConfig, simulate

# Small enough for seconds-long Beam runs, long enough (3 days) for the 24 h windows to slide.
SMALL_LOG = SimulatorConfig(days=3, users=40, items=80, impressions=2_400, seed=3, long_click_share=0.1)


@pytest.fixture(scope="session")
def small_log(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("log") / "small.parquet"
    simulate(SMALL_LOG, path)
    return path
