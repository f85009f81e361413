"""Bad input on the command line is one `error: ...` line and exit 2, never a traceback (unless --debug)."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from orchestration.cli import app
from orchestration.cli.demo import start_over_on_a_fresh_broker
from pipelines.beam.job import job_name
from pipelines.beam.state import Checkpoint, RecordFingerprint, commit_checkpoint, job_dir, load_checkpoint
from pipelines.kafka import KafkaUnavailable
from pipelines.settings import Settings
from training import artifacts

runner = CliRunner()


def _one_line(result) -> str:
    assert result.exit_code == 2, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)
    (line,) = result.output.strip().splitlines()
    assert line.startswith("error: ")
    return line


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(autouse=True)
def _global_flags_restored(monkeypatch: pytest.MonkeyPatch) -> None:
    """Commands that run flows hand the global flags on through the environment: put back what was
    there before each test."""
    for name in ("CTRFLOW_HOME", "CTRFLOW_KAFKA_BOOTSTRAP", "CTRFLOW_DEBUG"):
        monkeypatch.setenv(name, os.environ.get(name, ""))
        monkeypatch.delenv(name)


def test_global_flags_reach_the_command_through_its_context_not_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    env_home, flag_home = tmp_path / "from-env", tmp_path / "from-flag"
    monkeypatch.setenv("CTRFLOW_HOME", str(env_home))
    result = runner.invoke(app, ["--home", str(flag_home), "models", "list", "--json"])
    assert result.exit_code == 0, result.output
    assert os.environ["CTRFLOW_HOME"] == str(env_home)  # the flag did not leak into the process
    assert (flag_home / "registry").is_dir() and not env_home.exists()


def test_home_that_is_a_file(tmp_path: Path) -> None:
    home = tmp_path / "home"
    home.write_text("not a directory")
    line = _one_line(runner.invoke(app, ["--home", str(home), "features", "query", "SELECT 1"]))
    assert line == f"error: --home {home} is a file, not a directory: give the state directory"


def test_unreachable_bootstrap_is_one_line_after_a_bounded_wait(
    home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CTRFLOW_KAFKA_CONNECT_TIMEOUT_S", "0.5")
    log = tmp_path / "log.jsonl"
    log.write_text("{}\n")
    address = f"127.0.0.1:{_closed_port()}"
    line = _one_line(runner.invoke(app, ["--bootstrap", address, "replay", str(log)]))
    assert line == f"error: no Kafka broker answered at {address} within 0.5 s"
    # --debug (or CTRFLOW_DEBUG) keeps the exception and its traceback for whoever debugs.
    debug = runner.invoke(app, ["--debug", "--bootstrap", address, "replay", str(log)])
    assert isinstance(debug.exception, KafkaUnavailable)


def test_a_truncated_weights_file_is_an_artifact_error(settings: Settings) -> None:
    model = torch.nn.Linear(3, 1)
    record = artifacts.ModelRecord(family="lr", config={})
    version = artifacts.save_version(
        settings, {"m": model}, {"m": record}, {}, feature_service=None,
        train=artifacts.DataSlice(dataset=None, rows=0), holdout=None, train_config={}, serve="m",
    ).version
    weights = settings.registry_dir / version / artifacts.WEIGHTS_FILE
    weights.write_bytes(weights.read_bytes()[:-7])
    with pytest.raises(artifacts.ArtifactError, match=f"version '{version}' has unreadable weights") as info:
        artifacts.read_weights(settings, version, "m")
    assert "\n" not in str(info.value)
    (settings.registry_dir / version / artifacts.CONFIG_FILE).write_text("{truncated")
    with pytest.raises(artifacts.ArtifactError, match="config.json is not JSON"):
        artifacts.read_config(settings, version)


def test_a_demo_on_a_fresh_embedded_broker_starts_its_feature_state_over(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("CTRFLOW_KAFKA_BOOTSTRAP", raising=False)
    directory = job_dir(settings.checkpoints_dir, job_name(settings))
    part = settings.warehouse_dir / "labelled_samples" / "date=2026-01-05" / "impressions.0.0-10.parquet"
    part.parent.mkdir(parents=True)
    part.write_bytes(b"PAR1")
    key = f"{settings.topic('impressions')}|0"
    fingerprints = {key: RecordFingerprint(None, 1, 9)}
    parts = [str(part.relative_to(settings.warehouse_dir))]
    commit_checkpoint(directory, Checkpoint(offsets={key: 10}, fingerprints=fingerprints, parts=parts))
    assert start_over_on_a_fresh_broker(settings) == 1
    assert not part.exists() and not load_checkpoint(directory).offsets
    # A configured cluster's checkpoint is meaningful across runs: kept.
    commit_checkpoint(directory, Checkpoint(offsets={f"{settings.topic('impressions')}|0": 10}))
    kept = settings.model_copy(update={"kafka_bootstrap": "127.0.0.1:1"})
    assert start_over_on_a_fresh_broker(kept) == 0 and (directory / "checkpoint.json").exists()


def test_a_misspelt_statistics_horizon_is_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CTRFLOW_STAT_WINDOWS", "1h,24hours")
    line = _one_line(runner.invoke(app, ["--home", str(tmp_path / "h"), "features", "verify"]))
    assert "24hours" in line and "<count><unit>" in line
