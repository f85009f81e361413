"""`ctrflow train` (teacher + students on a training set) and `ctrflow evaluate` (score a saved version)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import typer
from rich.console import Console
from rich.table import Table

from orchestration.cli.app import app, cli_settings, json_object_option

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


_DATASET = typer.Option(None, "--dataset", help="Training-set name (default: the newest).")
_HOLDOUT = typer.Option(
    None, "--holdout", help="Training set to evaluate on (default: the last fraction by time)."
)
_AT = typer.Option(
    None, "--at", help="Build this cycle's sets first: train on [AT-W-H, AT-H), hold out [AT-H, AT) "
    "(W, H: CTRFLOW_TRAIN_WINDOW_S, CTRFLOW_HOLDOUT_WINDOW_S); 'latest' = just after the newest sample.",
)
_HOLDOUT_FRACTION = typer.Option(0.2, "--holdout-fraction", min=0.01, max=0.9)
_WARM_START = typer.Option(None, "--warm-start", help="Version to warm-start from.")
# The TrainConfig flags (--config sets any field, these the usual ones).
_TEACHER_GRADE = typer.Option(
    "auto", "--teacher-grade",
    help="auto (chosen by the device: a CPU grade that trains 100k rows in ~5 min, G2 on CUDA), "
         "G0..G5, or 'none' for no teacher.",
)
_STUDENTS = typer.Option(2, "--students", min=0, max=8)
_BASELINES = typer.Option("", "--baselines", help="Comma list of lr,dnn,deepfm,dcnv2,din.")
_EPOCHS = typer.Option(1, "--epochs", min=1, max=100)
_BATCH_SIZE = typer.Option(0, "--batch-size", min=0, max=65536, help="0: by device (auto).")
_LR = typer.Option(1e-3, "--lr", min=1e-6, max=1.0)
_LAMBDA_KD = typer.Option(1.0, "--lambda-kd", min=0.0)
_LAMBDA_ML = typer.Option(1.0, "--lambda-ml", min=0.0)
_LAMBDA_REV = typer.Option(0.0, "--lambda-rev", min=0.0)
_TEMPERATURE = typer.Option(2.0, "--temperature", min=0.1, max=100.0)
_KD_RAMPUP_STEPS = typer.Option(300, "--kd-rampup-steps", min=0)  # TrainConfig.kd_rampup_steps
_CONFIG = typer.Option(None, "--config", help="JSON object of TrainConfig overrides (e.g. model sizes).")
_SEED = typer.Option(0, "--seed")
_DEVICE = typer.Option("auto", "--device", help="auto | cpu | cuda")
_THREADS = typer.Option(0, "--threads", min=0, max=256, help="CPU threads (0 = torch default).")
_TRAIN_JSON = typer.Option(
    False, "--json", help="Print one JSON object (last line) with the results; progress stays on stderr."
)


@app.command("train")
def train(
    ctx: typer.Context, dataset: str | None = _DATASET, holdout: str | None = _HOLDOUT, at: str | None = _AT,
    holdout_fraction: float = _HOLDOUT_FRACTION, teacher_grade: str = _TEACHER_GRADE,
    students: int = _STUDENTS, baselines: str = _BASELINES, warm_start: str | None = _WARM_START,
    epochs: int = _EPOCHS, batch_size: int = _BATCH_SIZE, lr: float = _LR, lambda_kd: float = _LAMBDA_KD,
    lambda_ml: float = _LAMBDA_ML, lambda_rev: float = _LAMBDA_REV, temperature: float = _TEMPERATURE,
    kd_rampup_steps: int = _KD_RAMPUP_STEPS, config_json: str | None = _CONFIG, seed: int = _SEED,
    device: str = _DEVICE, threads: int = _THREADS, as_json: bool = _TRAIN_JSON,
) -> None:
    """Train teacher + students (online distillation, mutual learning) and save a model version."""
    from orchestration.cli.store_cmd import parse_time
    from training.trainer import TrainConfig
    from training.usecases import LATEST, TrainRequest, train_version

    flags = {
        "teacher_grade": None if teacher_grade.lower() == "none" else teacher_grade, "students": students,
        "baselines": tuple(b.strip() for b in baselines.split(",") if b.strip()), "epochs": epochs,
        "batch_size": batch_size, "lr": lr, "lambda_kd": lambda_kd, "lambda_ml": lambda_ml,
        "lambda_rev": lambda_rev, "temperature": temperature, "kd_rampup_steps": kd_rampup_steps,
        "seed": seed, "device": device, "threads": threads,
    }
    config = TrainConfig.from_dict(flags | json_object_option(config_json, "--config"))
    request = TrainRequest(config, dataset=dataset, holdout=holdout, holdout_fraction=holdout_fraction,
                           at=LATEST if at == LATEST else parse_time(at, "--at"), warm_start=warm_start,
                           progress=True)
    result = train_version(cli_settings(ctx), request)
    if not result.main:  # another worker of a torchrun launch: the main one reports
        return
    if as_json:
        print(json.dumps(result.summary()))
        return
    _print_results(f"holdout metrics — version {result.version}", result.metrics, result.references)
    console.print(f"saved version [bold]{result.version}[/bold] (serve: {result.serve}); "
                  f"report: {result.report}")


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
    from training.references import references_summary
    from training.usecases import EvaluateRequest, evaluate_saved_version

    request = EvaluateRequest(version=model, dataset=dataset, model=name, last_fraction=last_fraction,
                              allow_overlap=allow_overlap, predictions=predictions)
    report = evaluate_saved_version(cli_settings(ctx), request)
    if as_json:
        print(json.dumps({"version": report.version, "dataset": report.source, "rows": report.rows,
                          "overlap_rows": report.overlap_rows, "models": report.metrics}
                         | references_summary(report.metrics, report.references)
                         | ({"predictions": str(report.exported.path)} if report.exported else {})))
        return
    title = f"version {report.version} on {report.source} ({report.rows} rows)"
    _print_results(title, report.metrics, report.references)
    if report.exported:
        scored = ", ".join(report.exported.models)
        console.print(f"wrote {report.exported.rows:,} rows of scores ({scored}) to {report.exported.path}")
