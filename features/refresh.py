"""The feature job as one use case: the use case behind `ctrflow features build | stream` and the
feature-refresh flow's task.

``run_feature_job`` runs the Beam job (``pipelines.beam.job``) over Kafka or a finished log file, pushing
each micro-batch's newest rows to the Feast online store, optionally reads the serving stub's prediction
log into the warehouse (``pipelines.served``), and applies the accounting rule: every source partition's
records must add up, consumed == accepted + dead_lettered.

The rule's verdict is raised, not returned: a run whose records do not add up raises ``RecordsLost``
(carrying the full report, so a caller can still show it) once everything else is done. A caller cannot
forget to check it, which is how `features stream` used to end with exit 0 on lost records.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from pipelines.beam import job
from pipelines.beam.job import BatchReport, JobConfig, OnlineSink, RunReport
from pipelines.served import ServedSinkReport, sink_served
from pipelines.settings import Settings


def lost_records(report: RunReport) -> dict[str, dict[str, int]]:
    """The source partitions whose records do not add up (consumed != accepted + dead_lettered), with
    their counts; empty when the run is balanced."""
    return {key: counts for key, counts in report.accounting.items()
            if counts["consumed"] != counts["accepted"] + counts["dead_lettered"]}


@dataclass(frozen=True)
class FeatureJobReport:
    """What one feature run did."""

    run: RunReport  # accounting per source partition, rows per table, per-batch reports
    prediction_log: ServedSinkReport | None = None  # None when the prediction log was not read
    reset_parts_removed: int | None = None  # part files a reset deleted; None without a reset

    @property
    def lost(self) -> dict[str, dict[str, int]]:
        return lost_records(self.run)

    def to_dict(self) -> dict[str, Any]:
        return self.run.to_dict() | {
            "prediction_log": asdict(self.prediction_log) if self.prediction_log else None,
            "reset_parts_removed": self.reset_parts_removed,
        }


class RecordsLost(RuntimeError):
    """A feature run whose records do not add up in some partition: records were lost. ``report`` is the
    whole run's; ``lost`` the partitions that do not add up, with their counts."""

    def __init__(self, report: FeatureJobReport) -> None:
        self.report = report
        self.lost = report.lost
        super().__init__(f"feature refresh lost records (consumed != accepted + dead_lettered): {self.lost}")


def check_balance(report: FeatureJobReport) -> FeatureJobReport:
    """``report`` itself when every partition adds up; raises RecordsLost otherwise."""
    if report.lost:
        raise RecordsLost(report)
    return report


def online_sink(settings: Settings) -> OnlineSink:
    """The job's online sink: each table frame's newest row per entity pushed to the Feast online store."""
    from features.online import push_latest  # Feast is heavy to import: only when pushing

    return lambda table, frame: push_latest(settings, table, frame)


def run_feature_job(
    settings: Settings,
    *,
    from_file: Path | None = None,
    final: bool | None = None,
    continuous: bool = False,
    reset: bool = False,
    online: bool = True,
    prediction_log: bool = False,
    config: JobConfig | None = None,
    on_batch: Callable[[BatchReport], None] | None = None,
    stop: threading.Event | None = None,
    poll_interval_s: float = 1.0,
    max_batches: int | None = None,
) -> FeatureJobReport:
    """One feature run: a backfill of the finished log ``from_file``, else Kafka (bounded up to the
    current high-water marks, or ``continuous`` until ``stop`` is set or ``max_batches`` ran).

    ``final`` labels every impression still pending at the end (None: on for a file, off for Kafka; a file
    backfill is always final). ``reset`` first drops the Kafka checkpoint and the part files it vouched
    for. ``online`` pushes each batch to the online store. ``prediction_log`` (bounded Kafka runs) then
    reads the ``<prefix>.served`` topic into the warehouse, when Kafka is a configured cluster: an embedded
    broker started for this run has no prediction log. Raises ValueError for a combination that cannot
    run, the job's own errors, and RecordsLost (after all of the above) when records were lost.
    """
    _check_combination(from_file, final, continuous, reset, prediction_log)
    sink = online_sink(settings) if online else None
    if from_file is not None:
        return check_balance(FeatureJobReport(job.run_file(settings, from_file, online_sink=sink,
                                                           config=config)))
    removed = job.reset_checkpoint(settings) if reset else None
    run = job.run_kafka(settings, final=bool(final), continuous=continuous, online_sink=sink,
                        config=config, stop=stop, poll_interval_s=poll_interval_s, max_batches=max_batches,
                        on_batch=on_batch)
    served = None
    if prediction_log and settings.kafka_bootstrap is not None:
        served = sink_served(settings, settings.kafka_bootstrap)
    return check_balance(FeatureJobReport(run, served, removed))


def _check_combination(
    from_file: Path | None, final: bool | None, continuous: bool, reset: bool, prediction_log: bool
) -> None:
    if from_file is not None:
        if final is False:
            raise ValueError("a file backfill always runs in final mode (the log is finished)")
        if continuous or reset or prediction_log:
            raise ValueError("a file backfill is one stateless run: it has no checkpoint to reset, does "
                             "not stream and reads no prediction log")
    if continuous and (final or prediction_log):
        raise ValueError("final mode and the prediction-log sink are for bounded runs, not for streaming")
