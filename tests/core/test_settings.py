"""The one settings object: env prefix, derived paths, bounds."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from pipelines.settings import Settings, get_settings


def test_env_prefix_and_home_derived_paths(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CTRFLOW_HOME", str(tmp_path / "h"))
    monkeypatch.setenv("CTRFLOW_TOPIC_PREFIX", "x")
    s = get_settings()
    assert s.home_dir == (tmp_path / "h").resolve()
    assert s.warehouse_dir.parent == s.home_dir
    assert s.topic("clicks") == "x.clicks"
    assert s.serving_host == "127.0.0.1"  # services bind to loopback unless told otherwise


def test_overrides_beat_env_and_none_is_ignored(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CTRFLOW_KAFKA_BOOTSTRAP", "env:9092")
    assert get_settings(kafka_bootstrap=None).kafka_bootstrap == "env:9092"
    assert get_settings(kafka_bootstrap="cli:9092").kafka_bootstrap == "cli:9092"


def test_out_of_bounds_values_are_rejected() -> None:
    with pytest.raises(ValidationError):
        Settings(topic_partitions=0)
    with pytest.raises(ValidationError):
        Settings(sequence_length=100_000)


def test_a_copy_with_another_home_derives_every_path_from_it(tmp_path: Path) -> None:
    first = Settings(home=tmp_path / "a")
    assert first.warehouse_dir == (tmp_path / "a" / "warehouse").resolve()  # derived paths read once
    second = first.model_copy(update={"home": tmp_path / "b"})
    assert second.home_dir == (tmp_path / "b").resolve()
    assert second.warehouse_dir.parent == second.checkpoints_dir.parent == (tmp_path / "b").resolve()


def test_warehouse_registry_and_runs_may_live_outside_home(tmp_path: Path,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CTRFLOW_HOME", str(tmp_path / "h"))
    default = get_settings()
    assert (default.warehouse_dir, default.registry_dir, default.runs_dir) == (
        default.home_dir / "warehouse", default.home_dir / "registry", default.home_dir / "runs")
    for var, sub in [("WAREHOUSE", "wh"), ("REGISTRY", "reg"), ("RUNS", "rep")]:
        monkeypatch.setenv(f"CTRFLOW_{var}_PATH", str(tmp_path / sub))
    placed = get_settings()
    assert placed.warehouse_dir == (tmp_path / "wh").resolve()
    assert placed.registry_dir == (tmp_path / "reg").resolve()
    assert placed.runs_dir == (tmp_path / "rep").resolve()
    assert placed.checkpoints_dir.parent == placed.home_dir  # the rest still follows home


def test_statistics_horizons_are_parsed_ordered_and_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CTRFLOW_STAT_WINDOWS", "7d, 30m,2w")
    monkeypatch.setenv("CTRFLOW_STAT_DECAYED_WINDOWS", "365d,30d")
    horizons = get_settings().horizons
    assert horizons.sliding == (("30m", 1800), ("7d", 604_800), ("2w", 1_209_600))  # by length
    assert horizons.decayed == (("30d", 2_592_000), ("365d", 31_536_000))
    assert horizons.suffixes == ("30m", "7d", "2w", "30d", "365d", "all")
    assert horizons.longest_sliding_s == 1_209_600
    assert get_settings(stat_decayed_windows="").horizons.decayed == ()  # all time stays
    for bad, why in [
        ({"stat_windows": "24"}, "not <count><unit>"),
        ({"stat_windows": "1y"}, "not <count><unit>"),
        ({"stat_windows": "91d"}, "90 days"),  # every sliding window's events are kept in state
        ({"stat_windows": ""}, "at least one sliding window"),
        ({"stat_windows": "24h,1d"}, "same length"),
        ({"stat_decayed_windows": "12h"}, "from 1 day"),
        ({"stat_windows": "7d", "stat_decayed_windows": "7d"}, "named twice"),
        ({"stat_windows": ",".join(f"{k}h" for k in range(1, 10))}, "at most 8"),
    ]:
        with pytest.raises(ValidationError, match=why):
            Settings(**bad)
