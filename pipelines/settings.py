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

from pipelines.tables import StatHorizons


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
    kafka_connect_timeout_s: float = Field(
        default=5.0, gt=0, le=300,
        description="How long to wait for a configured Kafka to answer before giving up with an error.",
    )
    topic_prefix: str = "ctr"
    topic_partitions: int = Field(default=4, ge=1, le=256)

    # --- feature jobs --------------------------------------------------------------------------------
    attribution_window_s: int = Field(default=30 * 60, ge=1, description="Click attribution window.")
    sequence_length: int = Field(default=50, ge=1, le=1000, description="Last N clicked items kept.")
    stat_windows: str = Field(
        default="1h,24h,7d",
        description="Sliding windows of the user/item statistics, e.g. 1h,24h,7d (units s m h d w; at most "
        "90 days: the job keeps that many days of events per entity). Fixed per warehouse.",
    )
    stat_decayed_windows: str = Field(
        default="30d",
        description="Long horizons kept as exponentially decayed counters (time constants, up to 10 years; "
        "empty for none). All-time counts are always kept. Fixed per warehouse.",
    )
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

    # --- validation gates (Great Expectations suites) ------------------------------------------------
    min_click_rate: float = Field(
        default=0.001, ge=0, description="Events gate: clicks / impressions must be at least this."
    )
    max_click_rate: float = Field(
        default=0.6, ge=0, description="Events gate: clicks / impressions must be at most this."
    )
    min_distinct_users: int = Field(
        default=2, ge=0,
        description="Events and dataset gates: at least this many distinct user ids (one user = a broken "
        "producer or join); raise it to what a real window of your traffic has.",
    )

    # --- orchestration (Prefect deployments) -----------------------------------------------------------
    feature_refresh_interval_s: int = Field(default=300, ge=10, description="Feature refresh schedule.")
    retrain_cron: str = Field(default="0 */6 * * *", description="Continual-training schedule (cron, UTC).")

    # --- training windows and the promotion gate --------------------------------------------------------
    # A cycle at time t trains on [t - W - H, t - H) and is gated on the holdout [t - H, t).
    train_window_s: int = Field(default=3 * 86400, ge=60, description="W: training window of a cycle.")
    # A whole day: a shorter holdout sees only some hours of the daily rhythm, so its click rate (and a
    # calibrated PCOC) differs from the training window's for reasons no model can fix.
    holdout_window_s: int = Field(default=86400, ge=60, description="H: the gate's holdout window.")
    # None is refused by the gate: a missing threshold is an error, never an implicit pass.
    gate_auc_tolerance: float | None = Field(
        default=0.002, ge=0, description="A challenger's AUC may be at most this much below the champion's."
    )
    gate_logloss_tolerance: float | None = Field(
        default=0.002, ge=0, description="A challenger's logloss may exceed the champion's by at most this."
    )
    gate_pcoc_low: float | None = Field(default=0.8, gt=0, description="Lowest predicted/observed clicks.")
    gate_pcoc_high: float | None = Field(default=1.25, gt=0, description="Highest predicted/observed clicks.")
    gate_min_slice_rows: int | None = Field(
        default=200, ge=1, description="A user-activity slice with fewer rows (or no click) is not gated."
    )

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
    reload_interval_s: float = Field(
        default=2.0, ge=0.05, le=3600, description="How often the server polls the champion pointer file."
    )
    serving_max_items: int = Field(default=1000, ge=1, le=10_000, description="Candidates per request.")
    serving_max_id_length: int = Field(default=256, ge=1, le=4096, description="Longest user/item id.")
    serving_max_body_bytes: int = Field(
        default=1 << 20, ge=1024, description="Largest request body; bigger ones get 413."
    )
    serving_p99_budget_ms: float = Field(
        default=20.0, gt=0, description="Servability gate: in-process p99 of one 100-candidate scoring."
    )
    serving_torch_threads: int = Field(
        default=1, ge=0, le=256,
        description="torch intra-op threads of the server (0 = torch's default); requests run in "
        "parallel threads, so one each avoids oversubscribing cores.",
    )
    serving_prediction_log: bool = Field(
        default=True, description="Log every scored request to the <prefix>.served topic."
    )

    @model_validator(mode="after")
    def _check_bounds(self) -> Settings:
        # A shorter dedup window would let a re-sent impression be labelled twice while its clicks
        # can still attach to either copy.
        if self.dedup_window_s < self.attribution_window_s:
            raise ValueError(
                f"dedup_window_s ({self.dedup_window_s}) must be at least attribution_window_s "
                f"({self.attribution_window_s})"
            )
        if self.min_click_rate > self.max_click_rate:
            raise ValueError("min_click_rate must be <= max_click_rate")
        self.horizons  # noqa: B018 -- a bad spelling is refused when the settings are made, not mid-job
        return self

    @property
    def horizons(self) -> StatHorizons:
        """The statistics horizons the feature tables carry (``stat_windows``, ``stat_decayed_windows``)."""
        return StatHorizons.parse(self.stat_windows, self.stat_decayed_windows)

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
