"""One training cycle: a training-set window in, a trained + evaluated + saved cohort version out.

This is what `ctrflow train`, the continual-training flow and the benchmarks call: split off the test
holdout and, from the training part, the validation slice (its latest rows); fit the input statistics on
the rest; build the cohort (warm-started from a parent version if its schema and the model's config
match, else cold-started with the reason recorded); train with validation-based early stopping; fit each
model's calibration on the validation slice; evaluate every model on the holdout, measure its cost, save
the version and write the run report. The served student is the one with the best validation AUC: the
holdout never chooses anything.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pyarrow as pa

from pipelines.settings import Settings
from training import artifacts
from training.artifacts import ModelRecord
from training.inputs import InputSchema, encode, fit_input_schema, schema_change
from training.report import write_report
from training.trainer import (
    TrainConfig,
    build_cohort,
    cohort_configs,
    evaluate_model,
    fit_calibration,
    inference_ms,
    resolve_sizes,
    seed_everything,
    select_device,
    time_range,
    time_split,
    train_window,
    warm_start,
)


def load_training_set(settings: Settings, name: str | None = None) -> tuple[pa.Table, dict[str, Any]]:
    """The named (default: newest) training set written by `ctrflow dataset build`."""
    # Imported here: features.datasets pulls in Feast (seconds of import) that training itself never needs.
    from features.datasets import load_dataset

    return load_dataset(settings, name)


def schema_for(manifest: dict[str, Any], config: TrainConfig) -> InputSchema:
    """Input schema sized for the longest sequence any model of the cohort reads."""
    longest = max(int(cfg.get("seq_len", 1)) for _, cfg in cohort_configs(config).values())
    return InputSchema.from_manifest(manifest, max_seq_len=longest)


@dataclass
class CycleResult:
    version: str | None
    run_dir: Path
    metrics: dict[str, dict[str, float]]
    results: dict[str, dict[str, Any]] = field(repr=False)
    serve: str | None = None
    warm_started: list[str] = field(default_factory=list)
    cold_start: dict[str, str] = field(default_factory=dict)  # model -> why it did not warm-start

    def summary(self) -> dict[str, Any]:
        return {
            "version": self.version,
            "serve": self.serve,
            "warm_started": self.warm_started,
            "cold_start": self.cold_start,
            "run_dir": str(self.run_dir),
            "report": str(self.run_dir / "report.md"),
            "models": self.metrics,
        }


def evaluate_version(
    settings: Settings, version: str, table: pa.Table, names: list[str] | None = None
) -> dict[str, dict[str, float]]:
    """Holdout metrics of models of a saved version (all of them by default) on a training-set table."""
    config = artifacts.read_config(settings, version)
    unknown = [n for n in names or () if n not in config["models"]]
    if unknown:
        raise ValueError(f"version {version} has no model {unknown}; it has {sorted(config['models'])}")
    batch = encode(table, InputSchema.from_dict(config["input_schema"]))
    device = select_device("auto")
    metrics = {}
    for name in names or list(config["models"]):
        model, _ = artifacts.load_model(settings, version, name)
        metrics[name] = evaluate_model(model.to(device), batch, device)[0]
    return metrics


def _best_student(val_auc: dict[str, float], students: list[str]) -> str | None:
    """The student with the best validation AUC (never the holdout's); the first one without any."""
    scored = [(val_auc[n], n) for n in students if n in val_auc and val_auc[n] == val_auc[n]]
    return max(scored)[1] if scored else (students[0] if students else None)


def _split_validation(table: pa.Table, time_col: str, fraction: float) -> tuple[pa.Table, pa.Table | None]:
    """(rows to fit on, the latest ``fraction`` as validation); no validation when it would be empty."""
    if fraction <= 0 or round(table.num_rows * fraction) < 1 or table.num_rows < 4:
        return table, None
    return time_split(table, time_col, fraction)


def run_cycle(
    settings: Settings,
    train_table: pa.Table,
    manifest: dict[str, Any],
    config: TrainConfig,
    holdout_table: pa.Table | None = None,
    holdout_fraction: float = 0.2,
    parent: str | None = None,
    save: bool = True,
    report: bool = True,
    progress: bool = True,
    run_name: str | None = None,
) -> CycleResult:
    """Train one cohort on a window and evaluate it on the holdout (the window after, by default)."""
    seed_everything(config.seed)
    device = select_device(config.device)
    # `auto` sizes become concrete here, so the version records what ran (and a warm start compares it).
    config, sizes = resolve_sizes(config, device)
    time_col = manifest["columns"]["time"]
    if holdout_table is None:
        train_table, holdout_table = time_split(train_table, time_col, holdout_fraction)
    fit_table, val_table = _split_validation(train_table, time_col, config.val_fraction)
    schema = schema_for(manifest, config)
    parent_schema, cold_reason = None, None
    if parent is not None:
        parent_schema = InputSchema.from_dict(artifacts.read_config(settings, parent)["input_schema"])
        # The sequence length read is the cohort's (a model whose seq_len changed cold-starts alone).
        parent_schema = dataclasses.replace(parent_schema, max_seq_len=schema.max_seq_len)
        cold_reason = schema_change(parent_schema, schema)
        if cold_reason is None:
            # The parent's schema keeps hashed ids and dense statistics aligned with its weights.
            schema = parent_schema
    schema = fit_input_schema(schema, fit_table, config.min_id_count,
                              parent=parent_schema if parent is not None and cold_reason is None else None)
    train_batch, holdout_batch = encode(fit_table, schema), encode(holdout_table, schema)
    val_batch = encode(val_table, schema) if val_table is not None else None

    cohort = build_cohort(config, schema).to(device)
    loaded, cold = [], {}
    if parent is not None and cold_reason is None:
        warm = warm_start(cohort, settings, parent)
        loaded, cold = warm.loaded, warm.cold
    elif parent is not None:
        cold = dict.fromkeys(cohort.models, cold_reason)
    if cohort.teacher in loaded and config.kd_rampup_steps:
        # The ramp shields students from an immature teacher over the first increment (MODELS.md 6.4);
        # a teacher carried over from the parent is not one.
        config = dataclasses.replace(config, kd_rampup_steps=0)
    history = train_window(cohort, train_batch, config, device, progress=progress, validation=val_batch)
    if val_batch is not None and config.calibrate:
        fit_calibration(cohort, val_batch, config, device)

    results: dict[str, dict[str, Any]] = {}
    for name, model in cohort.models.items():
        metrics, curve = evaluate_model(
            model, holdout_batch, device, config.eval_batch_size, config.precision
        )
        best = history.best.get(name)
        if best is not None:
            metrics |= {"val_auc": best["auc"], "val_logloss": best["logloss"], "best_step": best["step"]}
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
    serve = _best_student({n: b["auc"] for n, b in history.best.items()}, cohort.students)

    version = None
    if save:
        version = artifacts.save_version(
            settings,
            cohort.models,
            {n: ModelRecord(cohort.families[n], cohort.configs[n], metrics[n]) for n in cohort.models},
            schema.to_dict(),
            feature_service=manifest.get("feature_service"),
            window={
                "dataset": manifest.get("name"),
                "dataset_window": manifest.get("window"),
                "content_hash": manifest.get("content_hash"),
                "train": time_range(fit_table, time_col) | {"rows": fit_table.num_rows},
                "validation": (time_range(val_table, time_col) | {"rows": val_table.num_rows}
                               if val_table is not None else None),
                "holdout": time_range(holdout_table, time_col) | {"rows": holdout_table.num_rows},
            },
            train_config=config.to_dict(),
            parent=parent,
            serve=serve,
            extra={"cold_start_reason": cold_reason, "cold_start": cold, "sizes": dataclasses.asdict(sizes)},
        )
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
            f"parent version: {parent or 'none (from scratch)'}; warm-started: {', '.join(loaded) or '-'}",
            "kept checkpoints (validation AUC): " + (", ".join(
                f"{n} step {b['step']} ({b['auc']:.4f})" for n, b in history.best.items()) or "last step"),
            f"served student (best validation AUC): {serve or '-'}",
        ]
        if cold:
            notes.append("cold start: " + "; ".join(f"{n}: {r}" for n, r in cold.items()))
        write_report(run_dir, f"ctrflow training run {version or run_dir.name}", results, notes, oracle)
    return CycleResult(version, run_dir, metrics, results, serve, loaded, cold)
