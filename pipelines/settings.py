"""The one typed settings object for ctrflow.

Every package reads configuration from here (environment variables prefixed ``CTRFLOW_``), so a value
is defined once. It lives in ``pipelines`` because every other package already depends on it.

All state lives under ``home``: two runs with different homes never interfere. The warehouse, the model
registry and the run reports may each be placed elsewhere (``warehouse_path``, ``registry_path``,
``runs_path``), e.g. on their own volumes; unset, they follow ``home``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="CTRFLOW_", extra="ignore")

    # --- state ---------------------------------------------------------------------------------------
    home: Path = Field(default=Path(".ctrflow"), description="Root of all ctrflow state.")
    warehouse_path: Path | None = Field(
        default=None, description="Warehouse Parquet folder; unset = <home>/warehouse."
    )
    registry_path: Path | None = Field(
        default=None, description="Model registry (versions, champion pointer); unset = <home>/registry."
    )
    runs_path: Path | None = Field(default=None, description="Run reports folder; unset = <home>/runs.")

    # --- Kafka ---------------------------------------------------------------------------------------
    kafka_bootstrap: str | None = Field(
        default=None, description="host:port of a real Kafka; unset = start the embedded broker."
    )
    topic_prefix: str = "ctr"
    topic_partitions: int = Field(default=4, ge=1, le=256)

    # --- feature jobs --------------------------------------------------------------------------------
    attribution_window_s: int = Field(default=30 * 60, ge=1, description="Click attribution window.")
    sequence_length: int = Field(default=50, ge=1, le=1000, description="Last N clicked items kept.")
    dedup_window_s: int = Field(
        default=24 * 3600,
        ge=1,
        description="A later impression with an id already seen this long before (event time) is a "
        "duplicate and dead-lettered; a reuse after it is a new impression. At least the attribution window.",
    )

    # --- feature store (Feast) ------------------------------------------------------------------------
    feast_profile: Literal["local", "compose"] = Field(
        default="local", description="local: SQLite online store; compose: Redis online store."
    )
    redis_connection: str = Field(
        default="localhost:6379", description="Feast Redis connection string (compose profile)."
    )

    # --- orchestration (Prefect deployments) -----------------------------------------------------------
    feature_refresh_interval_s: int = Field(default=300, ge=10, description="Feature refresh schedule.")
    retrain_cron: str = Field(default="0 */6 * * *", description="Continual-training schedule (cron, UTC).")

    # --- retention (`ctrflow gc`, and the end of every continual-training run) ---------------------------
    keep_versions: int = Field(
        default=10, ge=1, description="Newest model versions kept; the champion and its parents always stay."
    )
    keep_datasets: int = Field(
        default=5, ge=1, description="Newest training sets kept; LATEST and the champion lineage's stay."
    )
    keep_runs: int = Field(
        default=30, ge=1, description="Newest run folders kept; those of kept versions always stay."
    )

    # --- serving -------------------------------------------------------------------------------------
    serving_host: str = "127.0.0.1"
    serving_port: int = Field(default=8000, ge=0, le=65535)

    @model_validator(mode="after")
    def _dedup_covers_attribution(self) -> Settings:
        # A shorter dedup window would let a re-sent impression be labelled twice while its clicks
        # can still attach to either copy.
        if self.dedup_window_s < self.attribution_window_s:
            raise ValueError(
                f"dedup_window_s ({self.dedup_window_s}) must be at least attribution_window_s "
                f"({self.attribution_window_s})"
            )
        return self

    # --- derived paths (they follow `home`, except the three that may be placed on their own) ------------
    @property
    def home_dir(self) -> Path:
        return self.home.expanduser().resolve()

    @property
    def warehouse_dir(self) -> Path:
        if self.warehouse_path:
            return self.warehouse_path.expanduser().resolve()
        return self.home_dir / "warehouse"

    @property
    def warehouse_db(self) -> Path:
        return self.home_dir / "warehouse.duckdb"

    @property
    def checkpoints_dir(self) -> Path:
        return self.home_dir / "checkpoints"

    @property
    def feast_dir(self) -> Path:
        return self.home_dir / "feast"

    @property
    def datasets_dir(self) -> Path:
        return self.home_dir / "datasets"

    @property
    def registry_dir(self) -> Path:
        return self.registry_path.expanduser().resolve() if self.registry_path else self.home_dir / "registry"

    @property
    def runs_dir(self) -> Path:
        return self.runs_path.expanduser().resolve() if self.runs_path else self.home_dir / "runs"

    def topic(self, name: str) -> str:
        """Full topic name, e.g. ``topic("impressions") -> "ctr.impressions"``."""
        return f"{self.topic_prefix}.{name}"


def get_settings(**overrides: object) -> Settings:
    """Settings from the environment, with explicit overrides (CLI flags) on top."""
    clean = {k: v for k, v in overrides.items() if v is not None}
    return Settings(**clean)
