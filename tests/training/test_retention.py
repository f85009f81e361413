"""Retention over real files: saved versions (safetensors + config), built training sets, run folders."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pyarrow as pa
import pytest
import torch
from typer.testing import CliRunner

from features.datasets import list_datasets, write_dataset
from features.manifest import DatasetManifest, ManifestColumns
from orchestration.cli import app
from pipelines.settings import Settings
from training.artifacts import DataSlice, ModelRecord, list_versions, save_version
from training.registry import ChampionPointer, pointer_path, write_champion_pointer
from training.retention import RetentionError, gc


def fake_version(settings: Settings, parent: str | None, dataset: str) -> str:
    model = torch.nn.Linear(3, 1)
    return save_version(settings, {"m": model}, {"m": ModelRecord("lr", {})}, {}, feature_service=None,
                        train=DataSlice(dataset=dataset, rows=2), holdout=None, train_config={},
                        parent=parent, serve="m").version


def fake_dataset(settings: Settings, name: str, created: str) -> None:
    table = pa.table({"label": [0, 1]})
    write_dataset(settings, table, DatasetManifest(
        name=name, feature_service="", window_start=None, window_end=None, rows=2, label_rate=0.5,
        content_hash="", columns=ManifestColumns.for_features([]), created_at=created))


def _run(settings: Settings, name: str, age_s: int) -> None:
    folder = settings.runs_dir / name
    folder.mkdir(parents=True)
    (folder / "report.md").write_text("# run\n")
    stamp = 1_700_000_000 - age_s
    os.utime(folder, (stamp, stamp))


@pytest.fixture
def populated(tmp_path: Path) -> tuple[Settings, list[str]]:
    """Five versions v0 <- v1 <- v2 <- v3 <- v4 trained on datasets d0..d4; run folders for each version
    plus four validation runs; LATEST points at d4."""
    settings = Settings(home=tmp_path / "home", keep_versions=2, keep_datasets=1, keep_runs=1)
    versions: list[str] = []
    for i in range(5):
        fake_dataset(settings, f"ds-{i}", f"2026-01-0{i + 1}T00:00:00+00:00")
        versions.append(fake_version(settings, versions[-1] if versions else None, f"ds-{i}"))
        _run(settings, versions[-1], age_s=100 - i)
        _run(settings, f"validate-{i}", age_s=50 - i)
    return settings, versions


def test_keeps_the_newest_and_the_champion_lineage_with_its_datasets(
        populated: tuple[Settings, list[str]]) -> None:
    settings, v = populated
    # The champion is an old version: it, its parents and their training sets survive the limits.
    write_champion_pointer(settings, ChampionPointer(version=v[1], model="m", promoted_at="2026-01-02"))
    report = gc(settings)

    assert report.champion == v[1] and report.protected_versions == (v[1], v[0])
    assert [c.version for c in list_versions(settings)] == [v[0], v[1], v[3], v[4]]
    assert report.removed_versions == (v[2],)
    assert not (settings.registry_dir / v[2]).exists()
    # The lineage's, the other kept versions' (v3, v4) and LATEST (also the newest).
    assert list_datasets(settings) == ["ds-0", "ds-1", "ds-3", "ds-4"]
    assert set(report.removed_datasets) == {"ds-2"}
    # The newest run folder stays, and so do the reports of every kept version.
    runs = sorted(p.name for p in settings.runs_dir.iterdir())
    assert runs == sorted([v[0], v[1], v[3], v[4], "validate-4"])
    assert report.freed_bytes > 0
    assert gc(settings).removed_versions == ()  # a second collection finds nothing more


def test_dry_run_removes_nothing_and_reports_the_same(populated: tuple[Settings, list[str]]) -> None:
    settings, v = populated
    before = sorted(str(p) for p in settings.home_dir.rglob("*"))
    dry = gc(settings, dry_run=True)
    assert dry.dry_run and dry.champion is None
    assert sorted(str(p) for p in settings.home_dir.rglob("*")) == before
    real = gc(settings)
    assert (dry.removed_versions, dry.removed_datasets, dry.removed_runs, dry.freed_bytes) == (
        real.removed_versions, real.removed_datasets, real.removed_runs, real.freed_bytes)
    assert real.removed_versions == tuple(v[:3])  # no champion: only the newest two stay


def test_a_damaged_champion_pointer_removes_nothing(populated: tuple[Settings, list[str]]) -> None:
    settings, v = populated
    pointer_path(settings).write_text("{not json")
    with pytest.raises(RetentionError, match="champion pointer is unreadable"):
        gc(settings)
    assert len(list_versions(settings)) == 5 and len(list_datasets(settings)) == 5


def test_gc_command_json_dry_run_and_error(populated: tuple[Settings, list[str]],
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    settings, v = populated
    monkeypatch.setenv("CTRFLOW_HOME", str(settings.home))
    monkeypatch.setenv("CTRFLOW_KEEP_VERSIONS", "4")
    runner = CliRunner()
    dry = runner.invoke(app, ["gc", "--dry-run", "--json"])
    assert dry.exit_code == 0, dry.output
    assert json.loads(dry.stdout)["removed_versions"] == [v[0]]
    assert len(list_versions(settings)) == 5
    human = runner.invoke(app, ["gc"])
    assert human.exit_code == 0 and "removed 1 versions" in human.stdout
    assert len(list_versions(settings)) == 4
    pointer_path(settings).write_text("[]")
    bad = runner.invoke(app, ["gc"])
    assert bad.exit_code == 2 and bad.stderr.startswith("error: champion pointer is unreadable")
