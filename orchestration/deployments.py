"""Scheduled Prefect deployments: feature refresh on an interval, continual training on a cron.

Two ways to run them, over the same ``build_deployments``:

- ``ctrflow flows serve`` serves them from this process against the Prefect API in ``PREFECT_API_URL``
  (schedules need a real ``prefect server start``). With no ``CTRFLOW_KAFKA_BOOTSTRAP`` it starts one
  embedded broker for its whole lifetime and hands that broker's address to every feature-refresh run, so
  what is replayed into it between runs is there for the next one.
- ``ctrflow flows deploy --pool NAME`` registers them to a work pool; a ``prefect worker start --pool NAME``
  anywhere with the project installed runs them. Feature refresh then needs a real Kafka: an embedded
  broker would live only as long as one run.

The compose stack serves only continual-training: its ``feature-stream`` service already runs the feature
job, and a feature-refresh run beside it would share its checkpoint.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from datetime import timedelta

from prefect.deployments.runner import RunnerDeployment

from orchestration.flows import continual_training_flow, feature_refresh_flow
from pipelines.settings import Settings

FEATURE_REFRESH = "feature-refresh"
CONTINUAL_TRAINING = "continual-training"


def build_deployments(settings: Settings, bootstrap: str | None = None) -> list[RunnerDeployment]:
    """``bootstrap`` (a broker that outlives the runs) becomes a parameter of every feature-refresh run;
    without it the runs use ``settings.kafka_bootstrap`` as they find it in their environment."""
    return [
        feature_refresh_flow.to_deployment(
            name=FEATURE_REFRESH,
            interval=timedelta(seconds=settings.feature_refresh_interval_s),
            parameters={"bootstrap": bootstrap} if bootstrap else None,
            description="Kafka -> Beam -> warehouse Parquet + online store, up to the topics' end.",
            tags=["ctrflow", "features"],
        ),
        continual_training_flow.to_deployment(
            name=CONTINUAL_TRAINING,
            cron=settings.retrain_cron,
            description="Build + validate the newest training set, warm-start, train, evaluate, save, "
                        "apply retention.",
            tags=["ctrflow", "training"],
        ),
    ]


def select(deployments: list[RunnerDeployment], only: list[str] | None) -> list[RunnerDeployment]:
    """The named deployments (all when ``only`` is empty); an unknown name is a ValueError."""
    known = [d.name for d in deployments]
    unknown = sorted(set(only or ()) - set(known))
    if unknown:
        raise ValueError(f"unknown deployment(s) {unknown}; expected some of {known}")
    return [d for d in deployments if not only or d.name in only]


@dataclass(frozen=True)
class PoolDeployment:
    """One deployment registered to a work pool."""

    name: str
    deployment_id: str
    pool: str
    format: int = 1


def deploy_to_pool(settings: Settings, pool: str, only: list[str] | None = None) -> list[PoolDeployment]:
    """Register the deployments to the work pool ``pool`` (created as a process pool when missing)."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import WorkPoolCreate
    from prefect.exceptions import ObjectAlreadyExists
    from prefect.settings import PREFECT_API_URL
    from prefect.workers.process import ProcessWorker

    chosen = select(build_deployments(settings), only)
    if not settings.kafka_bootstrap and any(d.name == FEATURE_REFRESH for d in chosen):
        raise ValueError("feature-refresh on a work pool needs CTRFLOW_KAFKA_BOOTSTRAP: an embedded broker "
                         "would start empty in every run; deploy only continual-training, or use "
                         "`ctrflow flows serve`")
    if not PREFECT_API_URL.value():
        raise ValueError("flows deploy needs PREFECT_API_URL (a running Prefect server): without it Prefect "
                         "would register to a temporary server that goes away with this command")
    with get_client(sync_client=True) as client, contextlib.suppress(ObjectAlreadyExists):
        client.create_work_pool(WorkPoolCreate(
            name=pool, type="process", base_job_template=ProcessWorker.get_default_base_job_template()))
    return [PoolDeployment(d.name, str(d.apply(work_pool_name=pool)), pool) for d in chosen]
