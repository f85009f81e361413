"""The feature-job use case (`features.refresh.run_feature_job`): the accounting rule, the prediction-log
sink after a bounded Kafka build, and the `features build | stream` exit codes that follow the rule."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from features.refresh import FeatureJobReport, RecordsLost, check_balance, lost_records, run_feature_job
from orchestration.cli import app
from pipelines.beam import job
from pipelines.kafka import ensure_topics, make_producer
from pipelines.replay import replay
from pipelines.served import SERVED_TOPIC, ServedRecord
from pipelines.settings import Settings

runner = CliRunner()


def _run(*partitions: dict[str, int]) -> job.RunReport:
    """A run whose one batch has these counts per source partition ``events/<i>``."""
    accounting = {f"events/{i}": counts for i, counts in enumerate(partitions)}
    batch = job.BatchReport(1, "b1", False, None, accounting, {"labelled_samples": 7}, {})
    return job.RunReport(batches=[batch])


BALANCED = {"consumed": 10, "accepted": 8, "dead_lettered": 2}
LOSSY = {"consumed": 10, "accepted": 7, "dead_lettered": 2}  # one record vanished


def test_a_run_whose_records_do_not_add_up_raises_records_lost_with_its_report() -> None:
    fine = FeatureJobReport(_run(BALANCED, BALANCED))
    assert check_balance(fine) is fine and fine.lost == {}
    lossy = FeatureJobReport(_run(BALANCED, LOSSY))
    assert lost_records(lossy.run) == lossy.lost == {"events/1": LOSSY}
    with pytest.raises(RecordsLost, match=r"lost records .*events/1") as raised:
        check_balance(lossy)
    assert raised.value.report is lossy and raised.value.lost == {"events/1": LOSSY}
    assert "events/0" not in str(raised.value)  # only the partitions that do not add up are named


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"from_file": Path("log.parquet"), "final": False}, "always runs in final mode"),
        ({"from_file": Path("log.parquet"), "reset": True}, "no checkpoint to reset"),
        ({"from_file": Path("log.parquet"), "prediction_log": True}, "reads no prediction log"),
        ({"continuous": True, "final": True}, "bounded runs, not for streaming"),
        ({"continuous": True, "prediction_log": True}, "bounded runs, not for streaming"),
    ],
)
def test_combinations_that_cannot_run_are_refused_before_anything_runs(
    settings: Settings, kwargs: dict, message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        run_feature_job(settings, online=False, **kwargs)
    assert not settings.home.exists()  # refused before any lock, checkpoint or warehouse file


@pytest.mark.parametrize("command", [["stream", "--max-batches", "1"], ["build", "--from-kafka"]])
def test_build_and_stream_exit_1_on_lost_records_after_printing_the_report(
    home: Path, monkeypatch: pytest.MonkeyPatch, command: list[str]
) -> None:
    # No honest run loses records (that is the job's promise), so the job's answer is replaced by one
    # that does: what is tested is that both commands act on the use case's verdict.
    monkeypatch.setattr(job, "run_kafka", lambda settings, **_: _run(BALANCED, LOSSY))
    result = runner.invoke(app, ["--home", str(home), "features", *command, "--no-online", "--json"])
    assert result.exit_code == 1, result.output
    report = json.loads(result.stdout)
    assert report["balanced"] is False and report["accounting"]["events/1"] == LOSSY
    assert result.stderr.strip().splitlines()[-1].startswith("error: feature refresh lost records")
    monkeypatch.setattr(job, "run_kafka", lambda settings, **_: _run(BALANCED))
    fine = runner.invoke(app, ["--home", str(home), "features", *command, "--no-online", "--json"])
    assert fine.exit_code == 0 and json.loads(fine.stdout)["balanced"] is True


def test_a_bounded_kafka_build_then_reads_the_prediction_log(
    settings: Settings, broker, small_log: Path
) -> None:
    replayed = replay(small_log, settings, broker.bootstrap)
    topic = settings.topic(SERVED_TOPIC)
    ensure_topics(broker.bootstrap, [topic], settings.topic_partitions)
    producer = make_producer(broker.bootstrap)
    now = int(time.time() * 1000)
    for i, items in enumerate((("1", "2", "3"), ("4",))):
        record = ServedRecord(f"r{i}", "7", items, tuple(0.1 for _ in items), "v1", now, now)
        producer.send(topic, record.to_json(), key=record.request_id.encode())
    producer.flush()
    producer.close()

    live = settings.model_copy(update={"kafka_bootstrap": broker.bootstrap})
    report = run_feature_job(live, final=True, online=False, prediction_log=True)
    assert report.run.consumed == replayed.read and report.lost == {}
    assert report.prediction_log is not None
    assert (report.prediction_log.records, report.prediction_log.rows) == (2, 4)
    assert report.to_dict()["prediction_log"]["rows"] == 4
    # Read from its committed offsets: a second build finds nothing new on either side.
    again = run_feature_job(live, final=True, online=False, prediction_log=True)
    assert again.prediction_log is not None and again.prediction_log.records == 0
