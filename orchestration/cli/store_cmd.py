"""The Feast repository, point-in-time training sets and the Great Expectations gates on the CLI:
`ctrflow features apply|materialize|online`, `ctrflow dataset build|show`,
`ctrflow validate events|dataset`.

Feast, GX and the dataset builder are imported inside the commands: they take seconds to import, and
every `ctrflow` invocation would pay for them otherwise."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

import typer
from rich.console import Console
from rich.table import Table

from features.services import DEFAULT_SERVICE, SERVICE_VIEWS
from orchestration.cli.app import app, cli_settings, dataset_app, features_app, usage_error

if TYPE_CHECKING:
    from features.validation import ValidationBounds, ValidationReport
    from pipelines.settings import Settings

console = Console(stderr=True, soft_wrap=True)
validate_app = typer.Typer(
    help="Great Expectations gates on event logs and training sets.", no_args_is_help=True
)
app.add_typer(validate_app, name="validate")


def parse_time(value: str | None, option: str) -> datetime | None:
    """ISO-8601 date or datetime; naive values are UTC."""
    if value is None:
        return None
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        raise typer.BadParameter(
            f"{option} must be ISO-8601 (e.g. 2026-03-01 or 2026-03-01T12:00Z)"
        ) from None
    return parsed.replace(tzinfo=UTC) if parsed.tzinfo is None else parsed.astimezone(UTC)


def _service_option() -> str:
    return typer.Option(DEFAULT_SERVICE, "--service", help=f"Feature service: {', '.join(SERVICE_VIEWS)}.")


@features_app.command("apply")
def features_apply(ctx: typer.Context) -> None:
    """Register the Feast repository (like `feast apply`) and print the feature_store.yaml in use."""
    from features.store import REPO_DIR, apply_repo, feature_store, render_feature_store_yaml

    settings = cli_settings(ctx)
    apply_repo(feature_store(settings, apply=False), settings)
    path = render_feature_store_yaml(settings)
    console.print(f"applied Feast project to {settings.feast_dir}")
    typer.echo(f"feast -c {REPO_DIR} -f {path} <command>")


@features_app.command("materialize")
def features_materialize(
    ctx: typer.Context,
    start: str = typer.Option(..., "--start", help="Window start (ISO-8601, UTC if no zone)."),
    end: str = typer.Option(..., "--end", help="Window end (ISO-8601, UTC if no zone)."),
) -> None:
    """Load the newest warehouse feature rows in [start, end] into the online store (explicit range)."""
    from features.online import materialize_range
    from features.store import FeatureStoreNotReady

    settings = cli_settings(ctx)
    try:
        with console.status(f"materializing {start} .. {end}"):
            materialize_range(settings, parse_time(start, "--start"), parse_time(end, "--end"))
    except (ValueError, FeatureStoreNotReady) as exc:
        raise usage_error(str(exc)) from None
    console.print("[green]materialized[/green]")


@features_app.command("online")
def features_online(
    ctx: typer.Context,
    user: str = typer.Option(..., "--user", help="User id."),
    items: str = typer.Option(..., "--items", help="Comma-separated candidate item ids."),
    service: str = _service_option(),
    as_json: bool = typer.Option(False, "--json", help="One JSON object per item on stdout."),
) -> None:
    """Print the online features serving sees for a user and candidate items (missing ones filled)."""
    from features.online import online_features

    item_ids = [i.strip() for i in items.split(",") if i.strip()]
    try:
        rows = online_features(cli_settings(ctx), user, item_ids, service).to_pylist()
    except ValueError as exc:
        raise usage_error(str(exc)) from None
    if as_json:
        for row in rows:
            typer.echo(json.dumps(row))
        return
    table = Table("feature", *item_ids, title=f"online features for user {user} ({service})")
    for name in rows[0]:
        if name in ("user_id", "item_id"):
            continue
        table.add_row(name, *(_short(row[name]) for row in rows))
    Console().print(table)


def _short(value: object) -> str:
    if isinstance(value, list):
        return f"[{', '.join(map(str, value[-3:]))}{', ...' if len(value) > 3 else ''}] ({len(value)})"
    if isinstance(value, float):
        return f"{value:.4f}"
    return str(value)


@dataset_app.command("build")
def dataset_build(
    ctx: typer.Context,
    start: str | None = typer.Option(None, "--start", help="Window start, inclusive (ISO-8601)."),
    end: str | None = typer.Option(None, "--end", help="Window end, exclusive (ISO-8601)."),
    service: str = _service_option(),
    engine: str = typer.Option("asof", "--engine", help="Join engine: asof (DuckDB, default) or feast."),
    as_json: bool = typer.Option(False, "--json", help="Print the manifest as JSON on stdout."),
) -> None:
    """Build a point-in-time training set (no window = everything in the warehouse)."""
    from features.datasets import ENGINES, DatasetError, build_dataset

    if engine not in ENGINES:
        raise usage_error(f"unknown --engine {engine!r}; expected one of {', '.join(ENGINES)}")
    settings = cli_settings(ctx)
    try:
        with console.status("building training set") as status:
            built = build_dataset(settings, parse_time(start, "--start"), parse_time(end, "--end"), service,
                                  engine, on_step=status.update)
    except DatasetError as exc:
        raise usage_error(str(exc)) from None
    manifest = built.manifest
    if as_json:
        typer.echo(json.dumps(manifest.to_dict(), indent=2))
        return
    console.print(
        f"[green]{built.name}[/green]: {manifest.rows:,} rows, label rate {manifest.label_rate:.4f}, "
        f"{len(manifest.columns.dense)} dense features -> {built.path}"
    )


@dataset_app.command("show")
def dataset_show(
    ctx: typer.Context, name: str | None = typer.Argument(None, help="Dataset name; default LATEST.")
) -> None:
    """Print a built training set's manifest."""
    from features.datasets import DatasetError, load_dataset

    try:
        _, manifest = load_dataset(cli_settings(ctx), name)
    except DatasetError as exc:
        raise usage_error(str(exc)) from None
    typer.echo(json.dumps(manifest.to_dict(), indent=2))


def _bounds(settings: Settings, max_age_s: int | None, min_rows: int, max_rows: int,
            min_label_rate: float, max_label_rate: float) -> ValidationBounds:
    from features.validation import ValidationBounds

    if min_rows < 0 or max_rows < min_rows:
        raise typer.BadParameter("need 0 <= --min-rows <= --max-rows")
    if not 0 <= min_label_rate <= max_label_rate <= 1:
        raise typer.BadParameter("need 0 <= --min-label-rate <= --max-label-rate <= 1")
    return ValidationBounds.for_settings(settings, max_age_s=max_age_s, min_rows=min_rows,
                                         max_rows=max_rows, min_label_rate=min_label_rate,
                                         max_label_rate=max_label_rate)


def _report(report: ValidationReport) -> None:
    colour = "green" if report.success else "red"
    console.print(f"[{colour}]{report.summary()}[/{colour}]")
    console.print(f"results: {report.results_path}")
    if report.docs_path:
        console.print(f"data docs: {report.docs_path.as_uri()}")
    if not report.success:
        raise typer.Exit(code=1)


_RUN = typer.Option(None, "--run", help="Run name (results go to runs/<run>/validation); default generated.")
_MAX_AGE = typer.Option(None, "--max-age", help="Freshness: newest event at most this many seconds old.")
_MIN_ROWS = typer.Option(1, "--min-rows")
_MAX_ROWS = typer.Option(1_000_000_000, "--max-rows")
_MIN_RATE = typer.Option(0.001, "--min-label-rate")
_MAX_RATE = typer.Option(0.6, "--max-label-rate")


@validate_app.command("events")
def validate_events_cmd(
    ctx: typer.Context,
    path: Path = typer.Argument(..., help="Canonical event log (.jsonl or .parquet)."),
    run: str | None = _RUN, max_age: int | None = _MAX_AGE, min_rows: int = _MIN_ROWS,
    max_rows: int = _MAX_ROWS,
) -> None:
    """Validate a raw event log; exit 1 if any expectation fails."""
    from features.validation import ValidationInputError, validate_events

    try:
        settings = cli_settings(ctx)
        bounds = _bounds(settings, max_age, min_rows, max_rows, 0.0, 1.0)
        report = validate_events(settings, path, run, bounds)
    except ValidationInputError as exc:
        raise usage_error(str(exc)) from None
    _report(report)


@validate_app.command("dataset")
def validate_dataset_cmd(
    ctx: typer.Context,
    name: str | None = typer.Argument(None, help="Dataset name; default LATEST."),
    run: str | None = _RUN, max_age: int | None = _MAX_AGE, min_rows: int = _MIN_ROWS,
    max_rows: int = _MAX_ROWS, min_label_rate: float = _MIN_RATE, max_label_rate: float = _MAX_RATE,
) -> None:
    """Validate a built training set; exit 1 if any expectation fails."""
    from features.datasets import DatasetError
    from features.validation import validate_dataset

    settings = cli_settings(ctx)
    bounds = _bounds(settings, max_age, min_rows, max_rows, min_label_rate, max_label_rate)
    try:
        with console.status("validating training set"):
            report = validate_dataset(settings, name, run, bounds)
    except DatasetError as exc:
        raise usage_error(str(exc)) from None
    _report(report)
