"""A cycle at time t: train on [t-W-H, t-H), hold out [t-H, t), both built by the dataset builder; the
version records its holdout, evaluate scores it by default, and verify sees the Feast service online."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

from typer.testing import CliRunner

from features.datasets import latest_event_time
from features.store import feature_store
from orchestration.cli import app
from tests.feature_store.synthetic_warehouse import T0_MS, write_synthetic_warehouse
from tests.training.tiny import tiny_train_config
from training import artifacts, registry
from training.cycle import load_training_set, training_overlap
from training.trainer import TrainConfig
from training.usecases import TrainRequest, train_version


def test_windowed_cycle_records_its_holdout_and_verifies_online(settings, home) -> None:
    settings = settings.model_copy(update={"train_window_s": 36 * 3600, "holdout_window_s": 12 * 3600})
    written = write_synthetic_warehouse(settings, n_samples=300, days=3.0)
    # "Now" of a cycle over replayed history: the newest labelled sample, not the wall clock.
    newest = max(written["labelled_samples"].column("event_time").to_pylist())
    assert latest_event_time(settings) == newest
    at = datetime.fromtimestamp(T0_MS / 1000, UTC) + timedelta(days=2, hours=12)
    # `ctrflow train --at`'s use case: build the cycle's two sets, then train on one and hold out the other.
    config = TrainConfig.from_dict(tiny_train_config(teacher_grade=None, students=1))
    result = train_version(settings, TrainRequest(config, at=at))
    train, manifest = load_training_set(settings, result.dataset)
    holdout, holdout_manifest = load_training_set(settings, result.holdout)
    cut = at - timedelta(hours=12)
    assert (manifest.window_start, manifest.window_end) == (
        (cut - timedelta(hours=36)).isoformat(), cut.isoformat())
    assert (holdout_manifest.window_start, holdout_manifest.window_end) == (cut.isoformat(), at.isoformat())

    saved = artifacts.read_config(settings, result.version)
    assert (saved.train.dataset, saved.train.part) == (result.dataset, "all")
    assert saved.train.rows == train.num_rows
    assert (saved.holdout.dataset, saved.holdout.part) == (result.holdout, "all")
    assert saved.holdout.content_hash == holdout_manifest.content_hash
    assert training_overlap(saved, holdout) == 0 and training_overlap(saved, train) == train.num_rows
    assert registry.show_version(settings, result.version).status == "candidate"  # registered by the cycle

    runner = CliRunner()
    out = runner.invoke(app, ["--home", str(home), "evaluate", result.version, "--json"])
    assert out.exit_code == 0, out.output
    assert json.loads(out.stdout.strip().splitlines()[-1])["rows"] == holdout.num_rows
    out = runner.invoke(app, ["--home", str(home), "evaluate", result.version, "--dataset", result.dataset])
    assert out.exit_code == 2 and "training window" in out.stderr

    registry.promote(settings, result.version, force=True, reason="windowed cycle test")
    feature_store(settings)  # applies the Feast repository (registry + online tables)
    report = registry.verify(settings)
    assert report.ok, report.checks
