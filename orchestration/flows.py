"""Prefect flows: ingest, feature refresh, continual training, and the whole loop end to end.

Each task is a thin wrapper around one public function of the packages upstream, so the flows hold
the order and the gates (a failed validation stops a flow before training) and nothing else.

Flow parameters are plain values (paths as strings, numbers) so deployments can schedule them; the
settings come from the environment (``CTRFLOW_*``) like everywhere else. Tasks pass DataFrames and
models around in-process only, so caching is off (Prefect would try to hash them).
"""

from __future__ import annotations

from dataclasses import asdict
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from prefect import flow, task
from prefect.cache_policies import NO_CACHE

from pipelines.kafka import kafka_bootstrap
from pipelines.settings import Settings, get_settings

_task = task(cache_policy=NO_CACHE, persist_result=False)
NO_REFRESH_BROKER = ("feature refresh needs a Kafka bootstrap (CTRFLOW_KAFKA_BOOTSTRAP or --bootstrap): an "
                     "embedded broker started for one run would be empty; `ctrflow flows serve` keeps one "
                     "for its lifetime")


@_task
def simulate_log(out: Path, days: int, users: int, items: int, impressions: int,
                 seed: int) -> dict[str, Any]:
    from pipelines.simulator import SimulatorConfig, simulate

    config = SimulatorConfig(days=days, users=users, items=items, impressions=impressions, seed=seed)
    summary = simulate(config, out)
    return {"path": str(out), "impressions": summary.impressions, "clicks": summary.clicks,
            "oracle_auc": summary.oracle_auc, "oracle_logloss": summary.oracle_logloss}


@_task
def validate_event_log(settings: Settings, path: Path) -> dict[str, Any]:
    """The raw-event gate: raises ValidationFailed (failing the flow) when the log is bad."""
    from features.validation import require_valid, validate_events

    report = require_valid(validate_events(settings, path))
    return {"suite": report.suite, "success": report.success, "rows": report.rows}


@_task
def replay_log(settings: Settings, bootstrap: str, path: Path, fmt: str, speed: float | None) -> dict:
    from pipelines.replay import replay

    return replay(path, settings, bootstrap, fmt=fmt, speed=speed).as_dict()


@_task
def refresh_features(settings: Settings, final: bool) -> dict[str, Any]:
    """One bounded Kafka -> Beam -> Parquet + online-store run up to the current high-water marks.
    Raises RecordsLost (failing the flow, as the `features` commands exit 1) when a partition's records
    do not add up: consumed != accepted + dead-lettered means records were lost."""
    from features.refresh import run_feature_job

    run = run_feature_job(settings, final=final).run
    return {"batches": len(run.batches), "rows": run.rows, "accounting": run.accounting}


@_task
def validate_training_set(settings: Settings, name: str) -> dict[str, Any]:
    """The training-data gate: raises ValidationFailed (failing the flow) before any training."""
    from features.validation import require_valid, validate_dataset

    report = require_valid(validate_dataset(settings, name))
    return {"suite": report.suite, "success": report.success, "rows": report.rows}


@_task
def build_cycle_training_sets(settings: Settings, at: datetime | None = None) -> tuple[str, str]:
    """This cycle's training set [t-W-H, t-H) and holdout [t-H, t); t = ``at``, by default just after
    the newest sample."""
    from training.cycle import build_cycle_sets

    sets = build_cycle_sets(settings, at)
    return sets.train.name, sets.holdout.name


@_task
def train_cohort(settings: Settings, dataset: str, train_config: dict[str, Any],
                 warm_start: str | None, holdout: str | None = None) -> dict[str, Any]:
    """`ctrflow train --dataset D --holdout H --warm-start P`'s use case."""
    from training.trainer import TrainConfig
    from training.usecases import TrainRequest, train_version

    request = TrainRequest(TrainConfig.from_dict(train_config), dataset=dataset, holdout=holdout,
                           warm_start=warm_start)
    return train_version(settings, request).summary()


@_task
def gate_and_promote(settings: Settings, version: str) -> dict[str, Any]:
    """Promote the new version if it passes the gate against the champion; a FAIL is a result (the version
    is rejected and the champion keeps serving), not a failed flow."""
    from orchestration.servability import servability_check
    from training.registry import PromotionRefused, promote

    try:
        report = promote(settings, version, servability=servability_check(print))
    except PromotionRefused as exc:
        return {"promoted": False, "failures": exc.gate.failures() if exc.gate else [str(exc)]}
    return {"promoted": True, "previous": report.previous}


@_task
def publish_cycle_artifacts(settings: Settings, version: str, run_dir: str) -> dict[str, str]:
    """The cycle's metrics table, gate record (PASS/FAIL with its numbers) and run-report link as Prefect
    artifacts, rendered from what the registry recorded for the version."""
    from orchestration.artifacts import publish_cycle
    from training.registry import show_version

    published = publish_cycle(show_version(settings, version), Path(run_dir))
    return {name: str(artifact_id) for name, artifact_id in asdict(published).items()}


@_task
def apply_retention(settings: Settings) -> dict[str, Any]:
    """Keep-last-N versions, training sets and run folders; what serves and its lineage always stay."""
    from training.retention import gc

    return gc(settings).as_dict()


def _with_bootstrap(settings: Settings, bootstrap: str) -> Settings:
    return settings.model_copy(update={"kafka_bootstrap": bootstrap})


@flow(name="ctrflow-ingest", log_prints=True)
def ingest_flow(log_path: str, fmt: str = "canonical", speed: float | None = None) -> dict[str, Any]:
    """Replay a log file into Kafka (the configured cluster; replay needs one that outlives the flow)."""
    settings = get_settings()
    if not settings.kafka_bootstrap:
        raise ValueError("ingest_flow needs CTRFLOW_KAFKA_BOOTSTRAP: an embedded broker would vanish "
                         "with the flow; use end_to_end_flow for a self-contained run")
    return replay_log(settings, settings.kafka_bootstrap, Path(log_path), fmt, speed)


@flow(name="ctrflow-feature-refresh", log_prints=True)
def feature_refresh_flow(final: bool = False, bootstrap: str | None = None) -> dict[str, Any]:
    """Bring the warehouse and the online store up to the topics' current end. ``bootstrap`` (else
    CTRFLOW_KAFKA_BOOTSTRAP) must name a broker that outlives the run: ``ctrflow flows serve`` passes the
    embedded broker it keeps for its lifetime."""
    settings = get_settings()
    if bootstrap:
        settings = _with_bootstrap(settings, bootstrap)
    if not settings.kafka_bootstrap:
        raise ValueError(NO_REFRESH_BROKER)
    return refresh_features(settings, final)


@flow(name="ctrflow-continual-training", log_prints=True)
def continual_training_flow(train_config: dict[str, Any] | None = None,
                            warm_start_from_latest: bool = True) -> dict[str, Any]:
    """Build this cycle's training set [t-W-H, t-H) and holdout [t-H, t) from the warehouse -> validate
    the training set -> train (warm-started from the newest version) -> evaluate on the holdout, save and
    register -> the promotion gate against the champion, promoting on PASS -> apply the retention limits.
    It does not validate raw events: it reads what the feature job wrote (which dead-letters malformed
    records); ``end_to_end_flow`` and ``ctrflow validate events`` run the events suite on a log file."""
    from training.artifacts import latest_version

    settings = get_settings()
    parent = latest_version(settings) if warm_start_from_latest else None
    cycle = training_cycle(settings, train_config or {}, parent)
    return cycle | {"retention": apply_retention(settings)}


def training_cycle(settings: Settings, train_config: dict[str, Any], parent: str | None,
                   at: datetime | None = None) -> dict[str, Any]:
    """One continual-training cycle at ``at``: its two sets, the training-set gate, a cohort warm-started
    from ``parent``, then the promotion gate (PASS promotes; FAIL rejects, the champion keeps serving),
    then its artifacts for the Prefect UI (``orchestration.artifacts``)."""
    name, holdout = build_cycle_training_sets(settings, at)
    gate = validate_training_set(settings, name)
    trained = train_cohort(settings, name, train_config, parent, holdout)
    promotion = gate_and_promote(settings, trained["version"])
    artifacts = publish_cycle_artifacts(settings, trained["version"], trained["run_dir"])
    return {"dataset": name, "holdout": holdout, "validation": gate, "training": trained,
            "promotion": promotion, "artifacts": artifacts}


def two_cycles(settings: Settings, train_config: dict[str, Any]) -> list[dict[str, Any]]:
    """Two training cycles one holdout window apart, the second ending just after the newest sample and
    warm-started from the first's champion (from its version when the gate rejected it)."""
    from features.datasets import latest_event_time
    from training.registry import current_champion

    end = latest_event_time(settings) + timedelta(milliseconds=1)
    cycles, parent = [], None
    for at in (end - timedelta(seconds=settings.holdout_window_s), end):
        cycles.append(training_cycle(settings, train_config, parent, at))
        parent = current_champion(settings) or cycles[-1]["training"]["version"]
    return cycles


@_task
def score_one_request(settings: Settings, bootstrap: str) -> dict[str, Any]:
    """Start the serving stub on a free loopback port and score one real request over HTTP: the newest
    request of the warehouse, its user and candidates, against whatever champion the registry points to."""
    from serving_stub.probe import score_newest_request

    return score_newest_request(settings, bootstrap).to_dict()


@flow(name="ctrflow-end-to-end", log_prints=True)
def end_to_end_flow(days: int = 3, users: int = 500, items: int = 300, impressions: int = 8_000,
                    seed: int = 7, train_config: dict[str, Any] | None = None) -> dict[str, Any]:
    """The whole loop on one machine: simulate -> validate -> Kafka -> Beam -> Feast, then two
    continual-training cycles one holdout window apart (GX -> train -> gate -> promote; the second
    warm-started from the first's champion), then the serving stub scores one real request over HTTP."""
    from training.registry import current_champion

    settings = get_settings()
    log_path = settings.datasets_dir / "simulated_log.jsonl"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    result: dict[str, Any] = {
        "simulation": simulate_log(log_path, days, users, items, impressions, seed),
        "events_validation": validate_event_log(settings, log_path),
    }
    # The embedded broker (or the configured cluster) must live across replay and the feature job.
    with kafka_bootstrap(settings) as bootstrap:
        live = _with_bootstrap(settings, bootstrap)
        result["replay"] = replay_log(live, bootstrap, log_path, "canonical", None)
        result["features"] = refresh_features(live, final=True)
        result["cycles"] = two_cycles(settings, train_config or {})
        result["champion"] = current_champion(settings)
        if result["champion"] is not None:
            result["serving"] = score_one_request(live, bootstrap)
    return result
