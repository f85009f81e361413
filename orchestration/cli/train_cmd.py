"""`ctrflow train` (teacher + students on a training set) and `ctrflow evaluate` (score a saved version)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import typer
from rich.console import Console
from rich.table import Table

from orchestration.cli.app import app, cli_settings, json_object_option, usage_error

if TYPE_CHECKING:
    from training.references import ReferenceScore

console = Console(stderr=True)

_METRICS = ("auc", "gauc", "request_gauc", "logloss", "pcoc", "ece", "oracle_gap")


def _metrics_table(title: str, metrics: dict[str, dict[str, float]],
                   references: Sequence[ReferenceScore] = ()) -> Table:
    table = Table(title=title)
    table.add_column("model")
    cols = [c for c in _METRICS if any(c in m for m in metrics.values())]
    for c in cols:
        table.add_column(c, justify="right")
    for name, m in metrics.items():
        table.add_row(name, *(f"{m[c]:.4f}" if c in m else "–" for c in cols))
    if references:
        table.add_section()
    for ref in references:
        table.add_row(ref.label, *(f"{ref.metrics[c]:.4f}" if c in ref.metrics else "–" for c in cols))
    return table


def _print_results(title: str, metrics: dict[str, dict[str, float]],
                   references: Sequence[ReferenceScore]) -> None:
    from training.references import shortfalls

    console.print(_metrics_table(title, metrics, references))
    for below in shortfalls(metrics, references):
        console.print(f"[bold red]below reference:[/bold red] {below.describe()}")


@app.command("train")
def train(
    ctx: typer.Context,
    dataset: str | None = typer.Option(None, "--dataset", help="Training-set name (default: the newest)."),
    holdout: str | None = typer.Option(
        None, "--holdout", help="Training set to evaluate on (default: the last fraction by time)."
    ),
    at: str | None = typer.Option(
        None, "--at", help="Build this cycle's sets first: train on [AT-W-H, AT-H), hold out [AT-H, AT) "
        "(W, H: CTRFLOW_TRAIN_WINDOW_S, CTRFLOW_HOLDOUT_WINDOW_S); 'latest' = just after the newest sample.",
    ),
    holdout_fraction: float = typer.Option(0.2, "--holdout-fraction", min=0.01, max=0.9),
    teacher_grade: str = typer.Option(
        "auto", "--teacher-grade",
        help="auto (chosen by the device: a CPU grade that trains 100k rows in ~5 min, G2 on CUDA), "
             "G0..G5, or 'none' for no teacher.",
    ),
    students: int = typer.Option(2, "--students", min=0, max=8),
    baselines: str = typer.Option("", "--baselines", help="Comma list of lr,dnn,deepfm,dcnv2,din."),
    warm_start: str | None = typer.Option(None, "--warm-start", help="Version to warm-start from."),
    epochs: int = typer.Option(1, "--epochs", min=1, max=100),
    batch_size: int = typer.Option(0, "--batch-size", min=0, max=65536, help="0: by device (auto)."),
    lr: float = typer.Option(1e-3, "--lr", min=1e-6, max=1.0),
    lambda_kd: float = typer.Option(1.0, "--lambda-kd", min=0.0),
    lambda_ml: float = typer.Option(1.0, "--lambda-ml", min=0.0),
    lambda_rev: float = typer.Option(0.0, "--lambda-rev", min=0.0),
    temperature: float = typer.Option(2.0, "--temperature", min=0.1, max=100.0),
    kd_rampup_steps: int = typer.Option(0, "--kd-rampup-steps", min=0),
    config_json: str | None = typer.Option(
        None, "--config", help="JSON object of TrainConfig overrides (e.g. model sizes)."
    ),
    seed: int = typer.Option(0, "--seed"),
    device: str = typer.Option("auto", "--device", help="auto | cpu | cuda"),
    threads: int = typer.Option(0, "--threads", min=0, max=256, help="CPU threads (0 = torch default)."),
    as_json: bool = typer.Option(
        False, "--json", help="Print one JSON object (last line) with the results; progress stays on stderr."
    ),
) -> None:
    """Train teacher + students (online distillation, mutual learning) and save a model version."""
    from orchestration.cli.store_cmd import parse_time
    from training.cycle import build_cycle_sets, load_training_set, run_cycle
    from training.trainer import TrainConfig

    settings = cli_settings(ctx)
    overrides = json_object_option(config_json, "--config")
    if at is not None and (dataset or holdout):
        raise usage_error("--at builds its own training and holdout sets: drop --dataset / --holdout")
    try:
        config = TrainConfig.from_dict({
            "teacher_grade": None if teacher_grade.lower() == "none" else teacher_grade,
            "students": students,
            "baselines": tuple(b.strip() for b in baselines.split(",") if b.strip()),
            "epochs": epochs, "batch_size": batch_size, "lr": lr,
            "lambda_kd": lambda_kd, "lambda_ml": lambda_ml, "lambda_rev": lambda_rev,
            "temperature": temperature, "kd_rampup_steps": kd_rampup_steps, "seed": seed, "device": device,
            "threads": threads,
        } | overrides)
        if at is not None:
            sets = build_cycle_sets(settings, None if at == "latest" else parse_time(at, "--at"))
            dataset, holdout = sets.train.name, sets.holdout.name
        table, manifest = load_training_set(settings, dataset)
        holdout_table, holdout_manifest = load_training_set(settings, holdout) if holdout else (None, None)
        result = run_cycle(
            settings, table, manifest, config, holdout_table=holdout_table, holdout_manifest=holdout_manifest,
            holdout_fraction=holdout_fraction, parent=warm_start, progress=True,
        )
    except (ValueError, FileNotFoundError, RuntimeError) as exc:
        raise usage_error(str(exc)) from exc
    if as_json:
        print(json.dumps(result.summary() | {"dataset": manifest.name, "holdout": holdout}))
        return
    _print_results(f"holdout metrics — version {result.version}", result.metrics, result.references)
    console.print(f"saved version [bold]{result.version}[/bold] (serve: {result.serve}); "
                  f"report: {result.run_dir / 'report.md'}")


@app.command("evaluate")
def evaluate(
    ctx: typer.Context,
    model: str = typer.Argument(..., help="Model version id, or 'latest'."),
    dataset: str | None = typer.Option(
        None, "--dataset", help="Training set to score (default: the version's recorded holdout)."
    ),
    name: str | None = typer.Option(None, "--name", help="One model of the version (default: all)."),
    last_fraction: float | None = typer.Option(
        None, "--last-fraction", min=0.01, max=1.0, help="Score only the latest fraction of rows by time."
    ),
    predictions: Path | None = typer.Option(
        None, "--predictions", help="Also write each row's scores to this .parquet file, a column per model."
    ),
    allow_overlap: bool = typer.Option(
        False, "--allow-overlap", help="Score rows inside the version's training window anyway."
    ),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object (last line)."),
) -> None:
    """Score a saved version's models (default: on its recorded holdout): AUC, gAUC (per user and per
    request), logloss, calibration, oracle gap; optionally export the per-row predictions."""
    from training import artifacts
    from training.cycle import (
        evaluate_version,
        export_predictions,
        load_training_set,
        recorded_holdout,
        training_overlap,
    )
    from training.inputs import InputSchema
    from training.references import reference_metrics, references_summary
    from training.trainer import time_split

    settings = cli_settings(ctx)
    try:
        version = artifacts.latest_version(settings) if model == "latest" else model
        if version is None:
            raise ValueError("no model versions saved yet (run `ctrflow train`)")
        config = artifacts.read_config(settings, version)
        if dataset is None:
            if config.holdout is None:
                raise ValueError(f"version {version} recorded no holdout (an older format): pass --dataset")
            table, source = recorded_holdout(settings, config), f"holdout of {config.holdout.dataset}"
        else:
            table, source = load_training_set(settings, dataset)[0], dataset
        time_column = InputSchema.from_dict(config.input_schema).time
        if last_fraction is not None and last_fraction < 1.0:
            table = time_split(table, time_column, last_fraction)[1]
        overlap = training_overlap(config, table, time_column) if dataset is not None else 0
        if overlap and not allow_overlap:
            raise ValueError(
                f"{overlap} of the {table.num_rows} rows of {dataset} lie inside {version}'s training window "
                f"[{config.train.start}, {config.train.end}]; score its holdout (no --dataset) or pass "
                "--allow-overlap"
            )
        metrics = evaluate_version(settings, version, table, [name] if name else None)
        references = reference_metrics(table, InputSchema.from_dict(config.input_schema))
        exported = None
        if predictions is not None:
            exported = export_predictions(settings, version, table, predictions, [name] if name else None)
    except (ValueError, FileNotFoundError, RuntimeError, OSError) as exc:
        raise usage_error(str(exc)) from exc
    if as_json:
        print(json.dumps({"version": version, "dataset": source, "rows": table.num_rows,
                          "overlap_rows": overlap, "models": metrics}
                         | references_summary(metrics, references)
                         | ({"predictions": str(exported.path)} if exported else {})))
        return
    title = f"version {version} on {source} ({table.num_rows} rows)"
    _print_results(title, metrics, references)
    if exported:
        scored = ", ".join(exported.models)
        console.print(f"wrote {exported.rows:,} rows of scores ({scored}) to {exported.path}")
