"""One training cycle: a training-set window in, a trained + evaluated + saved cohort version out.

This is what `ctrflow train`, the continual-training flow and the benchmarks call: split off the test
holdout and, from the training part, the validation slice (its latest rows); fit the input statistics on
the rest; build the cohort (warm-started from a parent version if its schema and the model's config
match, else cold-started with the reason recorded); train with validation-based early stopping; fit each
model's calibration on the validation slice; evaluate every model on the holdout beside the reference
scores (``training.references``: single columns used as the score), measure its cost, save the version and
write the run report. The served student is the one with the best validation score (per-request gAUC
where requests hold several candidates, else AUC): the holdout never chooses anything.

The rows a version trained on (validation included) and was held out on are recorded in its
config (``DataSlice``), so the promotion gate and ``ctrflow evaluate`` score it on exactly its holdout,
never on its training rows; a saved version is registered as a ``candidate``.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from features.manifest import DatasetManifest
from pipelines.settings import Settings
from training import artifacts, registry
from training.artifacts import ArtifactError, DataSlice, ModelRecord, VersionConfig
from training.distributed import Workers
from training.inputs import InputSchema, encode, fit_input_schema, schema_change, with_context_groups
from training.metrics import METRIC_TITLES
from training.references import ReferenceScore, reference_metrics, references_summary
from training.report import write_report
from training.trainer import (
    TrainConfig,
    build_cohort,
    cohort_configs,
    evaluate_model,
    fit_calibration,
    inference_ms,
    predict,
    resolve_sizes,
    seed_everything,
    select_device,
    time_split,
    train_window,
    warm_start,
)

if TYPE_CHECKING:
    from features.datasets import BuiltDataset


def load_training_set(settings: Settings, name: str | None = None) -> tuple[pa.Table, DatasetManifest]:
    """The named (default: newest) training set written by `ctrflow dataset build`."""
    # Imported here: features.datasets pulls in Feast (seconds of import) that training itself never needs.
    from features.datasets import load_dataset

    return load_dataset(settings, name)


def schema_for(manifest: DatasetManifest, config: TrainConfig) -> InputSchema:
    """Input schema sized for the longest sequence any model of the cohort reads."""
    longest = max(int(cfg.get("seq_len", 1)) for _, cfg in cohort_configs(config).values())
    return InputSchema.from_manifest(manifest, max_seq_len=longest)


@dataclass(frozen=True)
class CycleResult:
    version: str | None
    run_dir: Path
    metrics: dict[str, dict[str, float]]
    results: dict[str, dict[str, Any]] = field(repr=False)
    serve: str | None = None
    warm_started: list[str] = field(default_factory=list)
    cold_start: dict[str, str] = field(default_factory=dict)  # model -> why it did not warm-start
    references: tuple[ReferenceScore, ...] = ()  # on the holdout rows the models were evaluated on
    dataset: str | None = None  # the training set trained on
    holdout: str | None = None  # the training set held out; None: the latest rows of ``dataset``
    main: bool = True  # False on the other workers of a torchrun launch (no evaluation, nothing saved)
    workers: int = 1  # processes that trained together (torchrun's world size)

    @property
    def report(self) -> Path:
        return self.run_dir / "report.md"

    def summary(self) -> dict[str, Any]:
        return {
            "version": self.version,
            "serve": self.serve,
            "warm_started": self.warm_started,
            "cold_start": self.cold_start,
            "run_dir": str(self.run_dir),
            "report": str(self.report),
            "models": self.metrics,
            "dataset": self.dataset,
            "holdout": self.holdout,
            "workers": self.workers,
        } | references_summary(self.metrics, self.references)


def data_slice(table: pa.Table, manifest: DatasetManifest | None, part: artifacts.DataPart) -> DataSlice:
    """Which rows of which training set ``table`` is: all of it, or its first/last rows by time."""
    times = table.column(manifest.columns.time if manifest else "event_time")
    start = end = None
    if table.num_rows:
        lo, hi = pc.min_max(times).values()
        start, end = _iso(lo.as_py()), _iso(hi.as_py())
    return DataSlice(
        dataset=manifest.name if manifest else None, rows=table.num_rows, start=start, end=end, part=part,
        content_hash=manifest.content_hash if manifest else None,
    )


def _iso(value: Any) -> str:
    if isinstance(value, datetime):
        return (value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)).isoformat()
    return datetime.fromtimestamp(int(value) / 1000, UTC).isoformat()  # integer milliseconds


def load_slice(settings: Settings, part: DataSlice) -> pa.Table:
    """The recorded rows again: the training set by name, checked against its hash, cut as recorded."""
    if part.dataset is None:
        raise ArtifactError("the rows were not recorded by training-set name (an in-memory table)")
    table, manifest = load_training_set(settings, part.dataset)
    if part.content_hash is not None and manifest.content_hash != part.content_hash:
        raise ArtifactError(
            f"training set {part.dataset!r} changed since it was used (content hash "
            f"{manifest.content_hash[:12]} != recorded {part.content_hash[:12]})"
        )
    if part.part != "all":
        table = table.sort_by([(manifest.columns.time, "ascending")])
        table = table.slice(0, part.rows) if part.part == "head" else table.slice(table.num_rows - part.rows)
    if table.num_rows != part.rows:
        raise ArtifactError(
            f"training set {part.dataset!r} yields {table.num_rows} rows where {part.rows} were recorded"
        )
    return table


def recorded_holdout(settings: Settings, config: VersionConfig) -> pa.Table:
    """The holdout rows a version was judged on when it was trained."""
    if config.holdout is None:
        raise ArtifactError(
            f"version {config.version} recorded no holdout (saved before holdouts were recorded): "
            "name the rows to score explicitly"
        )
    return load_slice(settings, config.holdout)


def training_overlap(config: VersionConfig, table: pa.Table, time_column: str = "event_time") -> int:
    """How many rows of ``table`` fall inside the version's training window (first to last train time)."""
    if config.train.start is None or config.train.end is None or table.num_rows == 0:
        return 0
    times = table.column(time_column)
    bounds = (config.train.start, config.train.end)
    lo, hi = (pa.scalar(datetime.fromisoformat(t), times.type) for t in bounds)
    inside = pc.and_(pc.greater_equal(times, lo), pc.less_equal(times, hi))
    return int(pc.sum(inside.cast(pa.int64())).as_py() or 0)


def evaluate_version(
    settings: Settings, version: str, table: pa.Table, names: list[str] | None = None
) -> dict[str, dict[str, float]]:
    """Holdout metrics of models of a saved version (all of them by default) on a training-set table."""
    config = artifacts.read_config(settings, version)
    unknown = [n for n in names or () if n not in config.models]
    if unknown:
        raise ValueError(f"version {version} has no model {unknown}; it has {sorted(config.models)}")
    schema = InputSchema.from_dict(config.input_schema)
    batch = with_context_groups(encode(table, schema), schema)  # once for every model
    device = select_device("auto")
    metrics = {}
    for name in names or list(config.models):
        model, _ = artifacts.load_model(settings, version, name)
        metrics[name] = evaluate_model(model.to(device), batch, device)[0]
    return metrics


# The row keys a prediction file carries before the per-model score columns.
PREDICTION_KEYS = ("impression_id", "request_id", "user_id", "item_id", "label")


@dataclass(frozen=True)
class PredictionExport:
    """What ``export_predictions`` wrote: one row per table row, one float64 score column per model."""

    version: str
    path: Path
    rows: int
    models: tuple[str, ...]
    format_version: int = 1


def export_predictions(
    settings: Settings, version: str, table: pa.Table, path: Path, names: list[str] | None = None
) -> PredictionExport:
    """Score a training-set table with models of a saved version (all by default) and write a Parquet
    file of the row keys (``PREDICTION_KEYS``) and each model's click probability, named by the model.

    Rows keep the table's order. The file is written next to ``path`` and renamed into place, so a failure
    leaves no partial file (and an existing one intact)."""
    if path.suffix != ".parquet":
        raise ValueError(f"predictions are written as Parquet: {path} must end in .parquet")
    if path.is_dir():
        raise ValueError(f"{path} is a directory: give the path of the Parquet file to write")
    missing = [c for c in PREDICTION_KEYS if c not in table.column_names]
    if missing:
        raise ValueError(f"table lacks the key columns of a prediction file: {missing}")
    config = artifacts.read_config(settings, version)
    names = list(names or config.models)
    unknown = [n for n in names if n not in config.models]
    if unknown:
        raise ValueError(f"version {version} has no model {unknown}; it has {sorted(config.models)}")
    clashing = [n for n in names if n in PREDICTION_KEYS]
    if clashing:
        raise ValueError(f"model names {clashing} clash with the key columns {list(PREDICTION_KEYS)}")
    schema = InputSchema.from_dict(config.input_schema)
    batch = with_context_groups(encode(table, schema), schema)  # once for every model
    device = select_device("auto")
    columns = {c: table.column(c) for c in PREDICTION_KEYS}
    for name in names:
        model, _ = artifacts.load_model(settings, version, name)
        columns[name] = pa.array(predict(model.to(device), batch, device).astype("float64"), pa.float64())
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.partial")
    try:
        pq.write_table(pa.table(columns), tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return PredictionExport(version, path, table.num_rows, tuple(names))


@dataclass(frozen=True)
class CycleSets:
    """The two training sets of one cycle at time ``at``: train [at-W-H, at-H), holdout [at-H, at)."""

    at: datetime
    train: BuiltDataset
    holdout: BuiltDataset


def build_cycle_sets(settings: Settings, at: datetime | None = None, service: str | None = None) -> CycleSets:
    """Build a cycle's training and holdout sets with the one dataset builder (default ``at``: just after
    the newest labelled sample, since replayed history is not "now")."""
    from features.datasets import DEFAULT_SERVICE, build_dataset, latest_event_time

    at = at or latest_event_time(settings) + timedelta(milliseconds=1)
    cut = at - timedelta(seconds=settings.holdout_window_s)
    begin = cut - timedelta(seconds=settings.train_window_s)
    service = service or DEFAULT_SERVICE
    train = build_dataset(settings, begin, cut, service)
    holdout = build_dataset(settings, cut, at, service)
    return CycleSets(at=at, train=train, holdout=holdout)


def _best_student(val_score: dict[str, float], students: list[str]) -> str | None:
    """The student with the best validation score (never the holdout's); the first one without any."""
    scored = [(val_score[n], n) for n in students if n in val_score and val_score[n] == val_score[n]]
    return max(scored)[1] if scored else (students[0] if students else None)


def _split_validation(table: pa.Table, time_col: str, fraction: float) -> tuple[pa.Table, pa.Table | None]:
    """(rows to fit on, the latest ``fraction`` as validation); no validation when it would be empty."""
    if fraction <= 0 or round(table.num_rows * fraction) < 1 or table.num_rows < 4:
        return table, None
    return time_split(table, time_col, fraction)


def run_cycle(
    settings: Settings,
    train_table: pa.Table,
    manifest: DatasetManifest,
    config: TrainConfig,
    holdout_table: pa.Table | None = None,
    holdout_manifest: DatasetManifest | None = None,
    holdout_fraction: float = 0.2,
    parent: str | None = None,
    save: bool = True,
    report: bool = True,
    progress: bool = True,
    run_name: str | None = None,
    workers: Workers | None = None,
) -> CycleResult:
    """Train one cohort on a window and evaluate it on the holdout (by default the latest
    ``holdout_fraction`` of the rows by time); a saved version is registered as a ``candidate``.

    With ``workers`` (a torchrun launch) every worker trains its share of each batch; the main worker
    then calibrates, evaluates, saves and reports, and the others return a result with ``main=False``.
    """
    seed_everything(config.seed)
    device = select_device(config.device)
    # `auto` sizes become concrete here, so the version records what ran (and a warm start compares it).
    config, sizes = resolve_sizes(config, device)
    time_col = manifest.columns.time
    if holdout_table is None:
        train_table, holdout_table = time_split(train_table, time_col, holdout_fraction)
        train_part = data_slice(train_table, manifest, "head")
        holdout_part = data_slice(holdout_table, manifest, "tail")
    else:
        train_part = data_slice(train_table, manifest, "all")
        holdout_part = data_slice(holdout_table, holdout_manifest, "all")
    fit_table, val_table = _split_validation(train_table, time_col, config.val_fraction)
    schema = schema_for(manifest, config)
    parent_schema, cold_reason = None, None
    if parent is not None:
        parent_schema = InputSchema.from_dict(artifacts.read_config(settings, parent).input_schema)
        # The sequence length read is the cohort's (a model whose seq_len changed cold-starts alone).
        parent_schema = dataclasses.replace(parent_schema, max_seq_len=schema.max_seq_len)
        cold_reason = schema_change(parent_schema, schema)
        if cold_reason is None:
            # The parent's schema keeps hashed ids and dense statistics aligned with its weights.
            schema = parent_schema
    schema = fit_input_schema(schema, fit_table, config.min_id_count,
                              parent=parent_schema if parent is not None and cold_reason is None else None)
    # Context keys once per table, for every model and evaluation that reads it.
    train_batch = with_context_groups(encode(fit_table, schema), schema)
    holdout_batch = with_context_groups(encode(holdout_table, schema), schema)
    val_batch = with_context_groups(encode(val_table, schema), schema) if val_table is not None else None

    cohort = build_cohort(config, schema).to(device)
    loaded, cold = [], {}
    if parent is not None and cold_reason is None:
        warm = warm_start(cohort, settings, parent)
        loaded, cold = warm.loaded, warm.cold
    elif parent is not None:
        cold = dict.fromkeys(cohort.models, cold_reason)
    if cohort.teacher in loaded and config.kd_rampup_steps:
        # The ramp shields students from an immature teacher over the first increment (docs/models.md);
        # a teacher carried over from the parent is not one.
        config = dataclasses.replace(config, kd_rampup_steps=0)
    history = train_window(cohort, train_batch, config, device, progress=progress, validation=val_batch,
                           workers=workers)
    if workers is not None and not workers.main:
        return CycleResult(None, settings.runs_dir, {}, {}, dataset=manifest.name, main=False,
                           workers=workers.world_size)
    if val_batch is not None and config.calibrate:
        fit_calibration(cohort, val_batch, config, device)

    results: dict[str, dict[str, Any]] = {}
    for name, model in cohort.models.items():
        metrics, curve = evaluate_model(
            model, holdout_batch, device, config.eval_batch_size, config.precision
        )
        best = history.best.get(name)
        if best is not None:
            metrics |= {"val_auc": best["auc"], "val_logloss": best["logloss"], "best_step": best["step"],
                        "best_epoch": history.epoch_of(best["step"])}
            if "request_gauc" in best:
                metrics["val_request_gauc"] = best["request_gauc"]
        results[name] = {
            "family": cohort.families[name],
            "metrics": metrics,
            "reliability": curve,
            "loss_history": history.losses[name],
            "bce_history": history.bce[name],
            "val_curve": history.val_curve[name],
            "stopped_at": history.stopped.get(name),
            "calibration": {"scale": float(model.calibration.scale), "bias": float(model.calibration.bias)},
            "params": model.num_parameters(trainable_only=False),
            "infer_ms_100": inference_ms(model, holdout_batch, device),
            # The cohort steps together: this is the joint rate, the same for every member.
            "train_samples_per_s": history.samples_per_s,
        }
    metrics = {n: r["metrics"] for n, r in results.items()}
    references = reference_metrics(holdout_table, schema)
    serve = _best_student({n: b[history.select_by] for n, b in history.best.items()}, cohort.students)

    version = None
    if save:
        saved = artifacts.save_version(
            settings,
            cohort.models,
            {n: ModelRecord(cohort.families[n], cohort.configs[n], metrics[n]) for n in cohort.models},
            schema.to_dict(),
            feature_service=manifest.feature_service,
            train=train_part,
            holdout=holdout_part,
            train_config=config.to_dict(),
            parent=parent,
            serve=serve,
            cold_start_reason=cold_reason,
            cold_start=cold,
            sizes=dataclasses.asdict(sizes),
        )
        registry.register_version(settings, saved)
        version = saved.version
    run_dir = settings.runs_dir / (run_name or version or f"run-{datetime.now(UTC):%Y%m%dT%H%M%S}")
    if report:
        oracle = next((m["oracle_auc"] for m in metrics.values() if "oracle_auc" in m), None)
        notes = [
            f"device {device.type}; precision {config.precision}"
            + ("" if device.type == "cuda" else " (CUDA/bf16 path not exercised on this machine)"),
            f"train rows {fit_table.num_rows}, validation rows "
            f"{val_table.num_rows if val_table is not None else 0}, holdout rows {holdout_table.num_rows}, "
            f"{history.steps} steps, {history.samples_per_s:.0f} samples/s for the whole cohort"
            + (f" (ETA after the first steps: {history.eta_s:.0f} s)" if history.eta_s is not None else ""),
            f"sizes: {sizes.reason}",
            f"workers: {workers.world_size} ({workers.backend}, DistributedDataParallel); the main one "
            f"stepped on {history.local_samples} of the {history.samples} rows, its share of every batch of "
            f"{config.batch_size}" if workers else "workers: 1 (one process)",
            f"parent version: {parent or 'none (from scratch)'}; warm-started: {', '.join(loaded) or '-'}",
            f"kept checkpoints (validation {METRIC_TITLES[history.select_by]}): " + (", ".join(
                f"{n} step {b['step']} = epoch {history.epoch_of(b['step']):.2f} "
                f"({b[history.select_by]:.4f})" for n, b in history.best.items())
                or "last step"),
            f"served student (best validation {METRIC_TITLES[history.select_by]}): {serve or '-'}",
        ]
        if cold:
            notes.append("cold start: " + "; ".join(f"{n}: {r}" for n, r in cold.items()))
        write_report(run_dir, f"ctrflow training run {version or run_dir.name}", results, notes, oracle,
                     references)
    held_out = holdout_part.dataset if holdout_part.part == "all" else None
    return CycleResult(version, run_dir, metrics, results, serve, loaded, cold, references, manifest.name,
                       held_out, workers=workers.world_size if workers else 1)
