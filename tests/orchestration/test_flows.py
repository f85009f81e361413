"""Real Prefect flow runs (the test harness: a temporary local Prefect API) over the real parts:
embedded broker, Beam job, Feast, Great Expectations and torch training."""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import unquote, urlparse
from uuid import UUID

import pytest
from prefect import get_client
from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterId
from prefect.client.schemas.objects import Artifact
from prefect.settings import PREFECT_API_URL, temporary_settings
from prefect.testing.utilities import prefect_test_harness
from typer.testing import CliRunner

from features.datasets import list_datasets
from features.validation import ValidationFailed
from orchestration.artifacts import GATE_KEY, METRICS_KEY, REPORT_KEY
from orchestration.cli import app
from orchestration.deployments import build_deployments
from orchestration.flows import continual_training_flow, feature_refresh_flow, refresh_features
from pipelines.beam.job import run_file
from pipelines.kafka import EmbeddedBroker
from pipelines.replay import replay
from pipelines.settings import Settings, get_settings
from pipelines.simulator import SimulatorConfig, simulate
from tests.training.test_retention import fake_dataset, fake_version
from tests.training.tiny import tiny_train_config
from training.artifacts import list_versions, load_model
from training.registry import ChampionPointer, write_champion_pointer

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def prefect_api() -> Iterator[None]:
    with prefect_test_harness(server_startup_timeout=120):
        yield


def read_cycle_artifacts(ids: dict[str, str]) -> dict[str, Artifact]:
    """A cycle's artifacts read back from the Prefect API, by key."""
    with get_client(sync_client=True) as client:
        found = client.read_artifacts(artifact_filter=ArtifactFilter(
            id=ArtifactFilterId(any_=[UUID(i) for i in ids.values()])))
    return {a.key: a for a in found}


def check_cycle_artifacts(artifacts: dict[str, Artifact], settings: Settings, cycle: dict) -> None:
    """What a person reads in the Prefect UI after a cycle: every model's metrics, the gate's verdict with
    its numbers as the registry recorded them, and a link to the run report on disk."""
    from training import registry

    assert set(artifacts) == {METRICS_KEY, GATE_KEY, REPORT_KEY}
    metrics = artifacts[METRICS_KEY].data
    for name, m in cycle["training"]["models"].items():
        (row,) = [line for line in metrics.splitlines() if re.match(rf"\| {name}( \(served\))? \|", line)]
        for column in ("auc", "gauc", "request_gauc", "logloss", "pcoc", "ece"):
            assert f"| {m[column]:.4f} |" in row, (column, row)
    record = registry.show_version(settings, cycle["training"]["version"])
    gate = artifacts[GATE_KEY].data
    assert gate.splitlines()[0].endswith(": PASS" if cycle["promotion"]["promoted"] else ": FAIL")
    assert f"registry status: **{record.status}**" in gate
    for blessing in record.gate.blessings:
        assert f"## {blessing.name}: {'PASS' if blessing.passed else 'FAIL'}" in gate
        assert all(f"- {reason}" in gate for reason in blessing.reasons)
    quality = record.gate.blessing("quality").numbers
    assert f"| rows | {quality['rows']} |" in gate
    assert f"| challenger.auc | {quality['challenger']['auc']:.4f} |" in gate
    assert f"| challenger.pcoc | {quality['challenger']['pcoc']:.4f} |" in gate
    (url,) = re.findall(r"\]\((file://[^)]+)\)", artifacts[REPORT_KEY].data)
    report = Path(unquote(urlparse(url).path))
    assert report.is_file() and report.parent == Path(cycle["training"]["run_dir"]).resolve()


def test_demo_runs_the_end_to_end_flow_through_every_stage(prefect_api: None, home: Path) -> None:
    runner = CliRunner()
    # Four days: cycle 1 trains on days 0-1 and is gated on day 2, cycle 2 on days 0-2, gated on day 3.
    # The demo's own (CPU) training config: the gate's floors need models that learn, which the tiny
    # test config does not on a few thousand rows.
    args = ["demo", "--days", "4", "--users", "300", "--items", "150", "--impressions", "16000",
            "--seed", "3", "--json"]
    run = runner.invoke(app, args)
    assert run.exit_code == 0, run.output
    result = json.loads(run.stdout.strip().splitlines()[-1])
    settings = get_settings()

    sim, replay = result["simulation"], result["replay"]
    assert replay["produced"] == replay["read"] == sim["impressions"] + sim["clicks"]
    assert replay["dead_lettered"] == 0
    for counts in result["features"]["accounting"].values():
        assert counts["consumed"] == counts["accepted"] + counts["dead_lettered"]
    assert result["features"]["rows"]["labelled_samples"] == sim["impressions"]
    assert result["events_validation"]["success"]

    # Two gated cycles one holdout window apart: the first promoted on the floors (or rejected with its
    # numbers), the second warm-started from the first's champion and gated against it.
    from training import registry

    first, second = result["cycles"]
    assert first["validation"]["success"] and second["validation"]["success"]
    assert first["holdout"] != second["holdout"] and first["dataset"] != second["dataset"]
    for cycle in (first, second):
        record = registry.show_version(settings, cycle["training"]["version"])
        assert record.gate is not None and {b.name for b in record.gate.blessings} == {
            "data", "quality", "servability"}
        assert record.gate.blessing("quality").numbers  # judged with its numbers, not implicitly
        assert cycle["promotion"]["promoted"] == record.gate.passed
    v1, v2 = first["training"]["version"], second["training"]["version"]
    assert first["promotion"]["promoted"], first["promotion"]  # the floors alone: a champion after cycle 1
    assert registry.show_version(settings, v2).gate.against == v1
    assert load_model(settings, v2)[1].parent == v1
    assert result["champion"] == (v2 if second["promotion"]["promoted"] else v1)
    assert [v.version for v in list_versions(settings)] == [v1, v2]

    # The serving stub answered over HTTP with the champion's version, one score per candidate.
    served = result["serving"]
    assert served["model_version"] == result["champion"]
    assert len(served["scores"]) == len(served["items"]) > 0 and all(0 < p < 1 for p in served["scores"])
    for cycle in (first, second):
        assert Path(cycle["training"]["report"]).is_file()

    # Each cycle published its artifacts into the one end-to-end flow run.
    published = [read_cycle_artifacts(cycle["artifacts"]) for cycle in (first, second)]
    for cycle, artifacts in zip((first, second), published, strict=True):
        check_cycle_artifacts(artifacts, settings, cycle)
    assert len({a.flow_run_id for artifacts in published for a in artifacts.values()}) == 1


@pytest.fixture
def six_hour_holdout(monkeypatch: pytest.MonkeyPatch) -> None:
    """These tests simulate one day: a 6 h holdout leaves the cycle's training window some rows."""
    monkeypatch.setenv("CTRFLOW_HOLDOUT_WINDOW_S", str(6 * 3600))


def test_failed_dataset_validation_stops_training(
    prefect_api: None, home: Path, tmp_path: Path, six_hour_holdout: None
) -> None:
    # A log whose clicks were all lost upstream: every label is 0, which the dataset gate must refuse.
    log = tmp_path / "log.jsonl"
    simulate(SimulatorConfig(days=1, users=50, items=40, impressions=600, seed=5), log)
    no_clicks = tmp_path / "no_clicks.jsonl"
    no_clicks.write_text("".join(line for line in log.open() if '"type":"click"' not in line))
    settings = get_settings()
    run_file(settings, no_clicks)

    with pytest.raises(ValidationFailed, match="label"):
        continual_training_flow(train_config=tiny_train_config())
    assert list_versions(settings) == []  # nothing was trained, nothing can be promoted


def test_continual_training_trains_on_its_window_and_gates_against_the_champion(
    prefect_api: None, home: Path, tmp_path: Path, six_hour_holdout: None
) -> None:
    from training import registry

    log = tmp_path / "log.jsonl"
    simulate(SimulatorConfig(days=1, users=50, items=40, impressions=1500, seed=5), log)
    settings = get_settings()
    run_file(settings, log)
    state = continual_training_flow(train_config=tiny_train_config(), return_state=True)
    result = state.result()

    version = result["training"]["version"]
    saved = load_model(settings, version)[1]
    assert (saved.train.dataset, saved.holdout.dataset) == (result["dataset"], result["holdout"])
    record = registry.show_version(settings, version)
    assert record.gate is not None and record.gate.against is None  # gated, against no champion
    # Whatever the verdict, it is explicit and the registry, the history and the pointer agree with it.
    promoted = result["promotion"]["promoted"]
    assert promoted == record.gate.passed
    assert record.status == ("champion" if promoted else "rejected")
    assert registry.current_champion(settings) == (version if promoted else None)
    if not promoted:
        assert result["promotion"]["failures"] == record.gate.failures() != []
    artifacts = read_cycle_artifacts(result["artifacts"])
    check_cycle_artifacts(artifacts, settings, result)
    assert {a.flow_run_id for a in artifacts.values()} == {state.state_details.flow_run_id}


def test_continual_training_ends_with_retention_that_spares_the_champion(
        prefect_api: None, home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        six_hour_holdout: None) -> None:
    monkeypatch.setenv("CTRFLOW_KEEP_VERSIONS", "1")
    monkeypatch.setenv("CTRFLOW_KEEP_DATASETS", "1")
    settings = get_settings()
    log = tmp_path / "log.jsonl"
    simulate(SimulatorConfig(days=1, users=50, items=40, impressions=600, seed=5), log)
    run_file(settings, log)
    # An old champion trained on an old training set, and a newer version nothing depends on.
    fake_dataset(settings, "ds-champion", "2026-01-01T00:00:00+00:00")
    fake_dataset(settings, "ds-unused", "2026-01-02T00:00:00+00:00")
    champion = fake_version(settings, None, "ds-champion")
    unused = fake_version(settings, champion, "ds-unused")
    write_champion_pointer(settings, ChampionPointer(version=champion, model="m", promoted_at="2026-01-01"))

    result = continual_training_flow(train_config=tiny_train_config(), warm_start_from_latest=False)
    new = result["training"]["version"]
    assert list(result["retention"]["removed_versions"]) == [unused]
    assert [v.version for v in list_versions(settings)] == [champion, new]
    assert set(list_datasets(settings)) == {"ds-champion", result["dataset"], result["holdout"]}
    assert Path(result["training"]["report"]).is_file()  # the new version's run folder stays


def test_deployments_carry_the_configured_schedules() -> None:
    settings = Settings(feature_refresh_interval_s=120, retrain_cron="15 3 * * *")
    deployments = {d.name: d for d in build_deployments(settings)}
    assert set(deployments) == {"feature-refresh", "continual-training"}
    refresh = deployments["feature-refresh"].schedules[0].schedule
    assert refresh.interval.total_seconds() == 120
    assert deployments["continual-training"].schedules[0].schedule.cron == "15 3 * * *"


def test_feature_refresh_fails_when_records_do_not_add_up(monkeypatch: pytest.MonkeyPatch) -> None:
    from pipelines.beam import job

    def lossy_run(settings, **_kwargs) -> job.RunReport:
        # Partition 0 consumed 10 records but accepted 7 and dead-lettered 2: one vanished.
        counts = {"consumed": 10, "accepted": 7, "dead_lettered": 2}
        batch = job.BatchReport(0, "b0", True, None, {"events/0": counts}, {"labelled_samples": 7}, {})
        return job.RunReport(batches=[batch])

    monkeypatch.setattr(job, "run_kafka", lossy_run)
    with pytest.raises(RuntimeError, match="lost records.*events/0"):
        refresh_features.fn(Settings(), final=True)


def _listening(bootstrap: str) -> bool:
    host, port = bootstrap.rsplit(":", 1)
    try:
        with socket.create_connection((host, int(port)), timeout=1):
            return True
    except OSError:
        return False


def test_flows_serve_can_serve_only_some_deployments(monkeypatch: pytest.MonkeyPatch) -> None:
    import prefect

    monkeypatch.delenv("CTRFLOW_KAFKA_BOOTSTRAP", raising=False)
    served: list[str] = []
    monkeypatch.setattr(prefect, "serve", lambda *deployments: served.extend(d.name for d in deployments))
    runner = CliRunner()
    # What the compose `flows` service runs: retraining only, beside its own feature-stream service.
    assert runner.invoke(app, ["flows", "serve", "--deployment", "continual-training"]).exit_code == 0
    assert served == ["continual-training"]
    served.clear()
    assert runner.invoke(app, ["flows", "serve"]).exit_code == 0
    assert sorted(served) == ["continual-training", "feature-refresh"]
    unknown = runner.invoke(app, ["flows", "serve", "-d", "nightly"])
    assert unknown.exit_code == 2 and "unknown deployment(s) ['nightly']" in unknown.output


def test_flows_serve_keeps_one_embedded_broker_for_every_feature_refresh_run(
        monkeypatch: pytest.MonkeyPatch) -> None:
    import prefect

    monkeypatch.delenv("CTRFLOW_KAFKA_BOOTSTRAP", raising=False)
    seen: dict[str, object] = {}

    def fake_serve(*deployments) -> None:
        by_name = {d.name: d for d in deployments}
        seen["bootstrap"] = by_name["feature-refresh"].parameters.get("bootstrap")
        # Up while the deployments are being served.
        seen["alive"] = seen["bootstrap"] is not None and _listening(seen["bootstrap"])
        seen["training"] = by_name["continual-training"].parameters

    monkeypatch.setattr(prefect, "serve", fake_serve)
    result = CliRunner().invoke(app, ["flows", "serve"])
    assert result.exit_code == 0, result.output
    assert seen["alive"] is True and seen["training"] == {}
    assert f"embedded broker for this serve's lifetime at {seen['bootstrap']}" in result.stderr
    assert not _listening(seen["bootstrap"])  # stopped with the command

    # With a configured Kafka no broker starts and the runs use the configured one from their environment.
    monkeypatch.setenv("CTRFLOW_KAFKA_BOOTSTRAP", "kafka.example:9092")
    seen.clear()
    assert CliRunner().invoke(app, ["flows", "serve"]).exit_code == 0
    assert seen["bootstrap"] is None and seen["alive"] is False


def test_feature_refresh_runs_read_on_from_the_broker_they_are_given(
        prefect_api: None, broker: EmbeddedBroker, settings: Settings, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """What `flows serve` relies on: runs given one lasting broker each pick up what arrived since the
    last one (here the session's broker plays the one `flows serve` starts)."""
    monkeypatch.delenv("CTRFLOW_KAFKA_BOOTSTRAP", raising=False)
    monkeypatch.setenv("CTRFLOW_TOPIC_PREFIX", settings.topic_prefix)
    logs = []
    # The second log starts two days later: its impression ids (the simulator numbers them from 0) are
    # reused past the dedup window, so they are new impressions.
    for seed, start in ((1, "2026-01-05"), (2, "2026-01-07")):
        logs.append(tmp_path / f"log{seed}.jsonl")
        config = SimulatorConfig(days=1, users=50, items=40, impressions=300, seed=seed, start=start)
        simulate(config, logs[-1])
    for log in logs:
        replayed = replay(log, settings, broker.bootstrap).as_dict()
        result = feature_refresh_flow(bootstrap=broker.bootstrap)
        consumed = sum(c["consumed"] for c in result["accounting"].values())
        assert consumed == replayed["produced"] > 0  # exactly the records since the previous run


def test_feature_refresh_without_a_lasting_broker_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CTRFLOW_KAFKA_BOOTSTRAP", raising=False)
    runner = CliRunner()
    for command in (["flows", "run", "feature-refresh"], ["flows", "deploy", "--pool", "p"]):
        result = runner.invoke(app, command)
        assert result.exit_code == 2, result.output
        assert result.stderr.startswith("error: feature") and "CTRFLOW_KAFKA_BOOTSTRAP" in result.stderr
    # Registering to a pool needs a lasting Prefect server, not the temporary one Prefect would start.
    with temporary_settings(restore_defaults={PREFECT_API_URL}):
        result = runner.invoke(app, ["flows", "deploy", "--pool", "p", "-d", "continual-training"])
    assert result.exit_code == 2 and result.stderr.startswith("error: flows deploy needs PREFECT_API_URL")


def test_flows_run_takes_the_global_home_and_fails_in_one_quiet_line(tmp_path: Path) -> None:
    """`ctrflow --home H flows run ...` runs the flow on H (it once ran on the default home), and without
    --verbose a failing flow prints the CLI's one error line and none of Prefect's log lines (a
    subprocess: Prefect's handlers write to the real stderr, which an in-process runner does not see)."""
    home = tmp_path / "elsewhere"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CTRFLOW_", "PREFECT_API_URL"))}
    proc = subprocess.run([sys.executable, "-m", "orchestration.cli", "--home", str(home), "flows", "run",
                           "continual-training"], cwd=ROOT, env=env | {"PYTHONPATH": str(ROOT)},
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2, proc.stderr[-2000:]
    samples = home / "warehouse" / "labelled_samples"
    assert proc.stderr.splitlines() == [
        f"error: no labelled samples under {samples}: run the feature job first"]


@pytest.mark.parametrize("command", [["flows", "run", "continual-training"], ["demo"]])
def test_bad_train_config_is_a_usage_error_before_any_flow_runs(command: list[str]) -> None:
    runner = CliRunner()
    for value, message in [("{teacher_grade: G1}", "--train-config is not valid JSON"),
                           ("[1, 2]", "--train-config must be a JSON object"),
                           ('{"no_such_field": 1}', "unknown TrainConfig fields: ['no_such_field']")]:
        result = runner.invoke(app, [*command, "--train-config", value])
        assert result.exit_code == 2 and message in result.output, result.output
