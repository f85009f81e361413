"""Scheduled Prefect deployments: feature refresh on an interval, continual training on a cron.

``ctrflow flows serve`` serves them from this process against the Prefect API in ``PREFECT_API_URL``
(schedules need a real ``prefect server start``). The compose stack runs the server and a ``flows``
service that serves only continual-training: its ``feature-stream`` service already runs the feature
job, and a feature-refresh run beside it would share its checkpoint.
"""

from __future__ import annotations

from datetime import timedelta

from prefect.deployments.runner import RunnerDeployment

from orchestration.flows import continual_training_flow, feature_refresh_flow
from pipelines.settings import Settings


def build_deployments(settings: Settings) -> list[RunnerDeployment]:
    return [
        feature_refresh_flow.to_deployment(
            name="feature-refresh",
            interval=timedelta(seconds=settings.feature_refresh_interval_s),
            description="Kafka -> Beam -> warehouse Parquet + online store, up to the topics' end.",
            tags=["ctrflow", "features"],
        ),
        continual_training_flow.to_deployment(
            name="continual-training",
            cron=settings.retrain_cron,
            description="Build + validate the newest training set, warm-start, train, evaluate, save.",
            tags=["ctrflow", "training"],
        ),
    ]
