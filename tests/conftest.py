"""Shared fixtures: a real embedded Kafka-protocol broker and an isolated CTRFLOW_HOME per test."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from pipelines.kafka import EmbeddedBroker
from pipelines.settings import Settings

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"

os.environ.setdefault("DO_NOT_TRACK", "1")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")


@pytest.fixture(scope="session")
def broker() -> Iterator[EmbeddedBroker]:
    """One real broker for the session; tests isolate themselves with distinct topic prefixes."""
    with EmbeddedBroker() as b:
        yield b


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    path = tmp_path / "home"
    monkeypatch.setenv("CTRFLOW_HOME", str(path))
    return path


@pytest.fixture
def settings(home: Path, request: pytest.FixtureRequest) -> Settings:
    """Settings rooted in a fresh home, with a topic prefix unique to the test."""
    prefix = "t" + str(abs(hash(request.node.nodeid)) % 10**10)
    return Settings(home=home, topic_prefix=prefix)


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The real public log samples; tests that need them fail loudly when the folder is missing."""
    if not SHARED_DATA.is_dir():
        pytest.fail(f"../shared/data not found at {SHARED_DATA}: the real-data tests need it")
    return SHARED_DATA
