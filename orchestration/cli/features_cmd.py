"""`ctrflow features build | stream | query`: the Beam feature jobs and ad-hoc SQL over the warehouse."""

from __future__ import annotations

import json
import signal
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from features.refresh import FeatureJobReport, RecordsLost, run_feature_job
from orchestration.cli.app import cli_settings, error_exit, features_app, usage_error
from pipelines.beam.job import BatchReport, JobConfig, verify_warehouse
from pipelines.beam.options import RUNNING_MODES
from pipelines.locks import LockHeld

console = Console(stderr=True, soft_wrap=True)
MAX_QUERY_ROWS_SHOWN = 200
# What a feature run reports as a one-line error (a bad checkpoint, a missing part file, a held lock).
JOB_ERRORS = (FileNotFoundError, ValueError, LockHeld)


def _job_config(
    shards: int, batch_records: int, piece_records: int, workers: int, mode: str | None, beam_args
):
    if mode is not None and mode not in RUNNING_MODES:
        raise usage_error(f"--running-mode must be one of {', '.join(RUNNING_MODES)}")
    return JobConfig(
        num_shards=shards,
        max_records_per_partition=batch_records,
        piece_size=piece_records,
        num_workers=workers,
        running_mode=mode,
        beam_args=list(beam_args or ()),
    )


def _print_report(report: FeatureJobReport, as_json: bool) -> None:
    if as_json:
        typer.echo(json.dumps(report.to_dict(), indent=1))
        return
    run = report.run
    if report.reset_parts_removed is not None:
        console.print(f"reset: checkpoint dropped, {report.reset_parts_removed} part files of it removed")
    table = Table(title="Accounting per source partition (consumed = accepted + dead-lettered)")
    for col in ("partition", "consumed", "accepted", "dead-lettered"):
        table.add_column(col, justify="right" if col != "partition" else "left")
    for key, counts in run.accounting.items():
        table.add_row(key, *(str(counts[k]) for k in ("consumed", "accepted", "dead_lettered")))
    console.print(table)
    rows = Table(title="Rows written")
    rows.add_column("table")
    rows.add_column("rows", justify="right")
    for name, n in sorted(run.rows.items()):
        rows.add_row(name, str(n))
    console.print(rows)
    rate = run.consumed / run.seconds if run.seconds else 0.0
    console.print(
        f"{len(run.batches)} micro-batch(es), {run.consumed} records in {run.seconds:.1f}s "
        f"({rate:,.0f}/s); balanced: {run.balanced}"
    )
    served = report.prediction_log
    if served is not None and served.records:
        console.print(f"prediction log: {served.records} requests, {served.rows} rows into 'served'"
                      + (f" ({served.skipped} invalid records skipped)" if served.skipped else ""))


def _run_job(job: Callable[[Callable[[BatchReport], None]], FeatureJobReport], as_json: bool) -> None:
    """Run ``job`` (given the live progress line's per-batch callback) and print its report. The job's
    errors are one line and exit 2; records lost are the report, that line on stderr and exit 1."""
    try:
        with _BatchProgress(as_json) as on_batch:
            report = job(on_batch)
    except RecordsLost as lost:
        _print_report(lost.report, as_json)
        console.print(f"[red]error:[/red] {lost}")
        raise typer.Exit(code=1) from None
    except JOB_ERRORS as exc:
        raise error_exit(exc) from None
    _print_report(report, as_json)


# Options shared by build and stream.
_SHARDS = typer.Option(
    JobConfig.num_shards, "--shards", min=1, max=1024, help="Entity shards (parallel feature tasks)."
)
_BATCH = typer.Option(
    JobConfig.max_records_per_partition,
    "--batch-records",
    min=1,
    help="Max records per partition per micro-batch.",
)
_PIECE = typer.Option(
    JobConfig.piece_size, "--piece-records", min=1, help="Records per parallel read (range piece)."
)
_WORKERS = typer.Option(
    JobConfig.num_workers, "--direct-num-workers", min=1, max=64, help="Local Beam workers (threads)."
)
_MODE = typer.Option(None, "--running-mode", help="in_memory | multi_threading | multi_processing.")
_BEAM = typer.Option(
    None, "--beam-arg", help="Pass-through Beam option, e.g. --beam-arg=--runner=FlinkRunner."
)
_ONLINE = typer.Option(
    True, "--online/--no-online", help="Push each batch's newest rows to the Feast online store."
)


@features_app.command("build")
def features_build(
    ctx: typer.Context,
    from_kafka: bool = typer.Option(
        False, "--from-kafka", help="Read the impression/click topics (bounded)."),
    from_file: Path | None = typer.Option(
        None, "--from-file", help="Backfill from a canonical log (.parquet/.jsonl)."),
    final: bool | None = typer.Option(None, "--final/--no-final", help=(
        "Label all pending impressions at the end (finished log). Default: on for files, off for Kafka.")),
    reset: bool = typer.Option(False, "--reset", help=(
        "Forget the Kafka checkpoint, delete the part files it produced, rebuild from offset 0.")),
    as_json: bool = typer.Option(False, "--json", help="Print the run report as JSON."),
    shards: int = _SHARDS,
    batch_records: int = _BATCH,
    piece_records: int = _PIECE,
    workers: int = _WORKERS,
    mode: str | None = _MODE,
    beam_args: list[str] | None = _BEAM,
    online: bool = _ONLINE,
) -> None:
    """Bounded feature build: Kafka up to the current high-water marks, or a log-file backfill.

    Exit 1 when a partition's records do not add up (consumed != accepted + dead-lettered)."""
    if from_kafka == (from_file is not None):
        raise usage_error("give exactly one of --from-kafka or --from-file PATH")
    settings = cli_settings(ctx)
    config = _job_config(shards, batch_records, piece_records, workers, mode, beam_args)
    if from_kafka and settings.kafka_bootstrap is None:
        console.print("[yellow]no Kafka configured (--bootstrap / CTRFLOW_KAFKA_BOOTSTRAP): reading a fresh, "
                      "empty embedded broker[/yellow]")
    _run_job(lambda on_batch: run_feature_job(
        settings, from_file=from_file, final=final, reset=reset, online=online, prediction_log=from_kafka,
        config=config, on_batch=on_batch), as_json)


class _BatchProgress:
    """A live line per micro-batch on stderr (silent with --json so stdout stays machine-readable)."""

    def __init__(self, quiet: bool) -> None:
        self.quiet = quiet
        self.progress = Progress(
            TextColumn("[bold]features"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.description}"),
            TimeElapsedColumn(),
            console=console,
            disable=quiet,
        )

    def __enter__(self):
        task = None

        def on_batch(batch: BatchReport) -> None:
            nonlocal task
            if task is None:  # started by the first batch: an error before it prints just its line
                self.progress.start()
                task = self.progress.add_task("micro-batches", total=None)
            consumed = sum(v["consumed"] for v in batch.accounting.values())
            self.progress.update(task, advance=1, description=f"batch {batch.batch_seq}: {consumed} records")

        return on_batch

    def __exit__(self, *exc: object) -> None:
        self.progress.stop()


@features_app.command("stream")
def features_stream(
    ctx: typer.Context,
    poll_interval: float = typer.Option(
        1.0, "--poll-interval", min=0.05, help="Seconds between polls when idle."
    ),
    max_batches: int | None = typer.Option(
        None, "--max-batches", min=1, help="Stop after this many batches."
    ),
    as_json: bool = typer.Option(False, "--json", help="Print the run report as JSON at the end."),
    shards: int = _SHARDS,
    batch_records: int = _BATCH,
    piece_records: int = _PIECE,
    workers: int = _WORKERS,
    mode: str | None = _MODE,
    beam_args: list[str] | None = _BEAM,
    online: bool = _ONLINE,
) -> None:
    """Continuous micro-batches from Kafka. Ctrl-C (or SIGTERM) stops after the current batch;
    a second Ctrl-C stops at once, which is safe too: the next run resumes from the last commit.

    Exit 1 when a partition's records do not add up (consumed != accepted + dead-lettered)."""
    settings = cli_settings(ctx)
    config = _job_config(shards, batch_records, piece_records, workers, mode, beam_args)
    with _stop_on_signals() as stop:
        _run_job(lambda on_batch: run_feature_job(
            settings, continuous=True, online=online, config=config, on_batch=on_batch, stop=stop,
            poll_interval_s=poll_interval, max_batches=max_batches), as_json)


@contextmanager
def _stop_on_signals() -> Iterator[threading.Event]:
    """An event the first Ctrl-C or SIGTERM sets (stop after the current micro-batch); a second one stops
    at once. The previous handlers are back afterwards."""
    stop = threading.Event()

    def request_stop(signum, frame) -> None:
        if stop.is_set():
            raise KeyboardInterrupt
        console.print("[yellow]stopping after the current micro-batch (Ctrl-C again to stop now)[/yellow]")
        stop.set()

    previous = {s: signal.signal(s, request_stop) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield stop
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


@features_app.command("verify")
def features_verify(
    ctx: typer.Context,
    as_json: bool = typer.Option(False, "--json", help="Print the verification report as JSON."),
) -> None:
    """Check the Kafka feature job's checkpoint, its state and every warehouse part file it vouches for.

    Exit 2 with a one-line error (naming the rebuild command) when something is missing or unusable."""
    try:
        report = verify_warehouse(cli_settings(ctx))
    except JOB_ERRORS as exc:
        raise error_exit(exc) from None
    if as_json:
        typer.echo(json.dumps(report.to_dict(), indent=1))
    if not report.ok:
        raise usage_error(report.message())
    if not as_json:
        console.print(report.message())


@features_app.command("query")
def features_query(
    ctx: typer.Context,
    sql: str = typer.Argument(
        ..., help='SQL over the warehouse views, e.g. "SELECT count(*) FROM user_stats".'
    ),
    as_json: bool = typer.Option(False, "--json", help="Print rows as a JSON array."),
    as_csv: bool = typer.Option(False, "--csv", help="Print rows as CSV with a header."),
    limit: int = typer.Option(MAX_QUERY_ROWS_SHOWN, "--limit", min=1, help="Rows shown in the table view."),
) -> None:
    """Ad-hoc DuckDB SQL over the offline tables: one SELECT/WITH query (anything else is refused)."""
    from features.query import QueryError, rows_as_json, run_query, write_csv

    if as_json and as_csv:
        raise usage_error("choose one of --json or --csv")
    try:
        table = run_query(cli_settings(ctx), sql)
    except QueryError as exc:
        raise usage_error(str(exc)) from None
    if as_json:
        typer.echo(rows_as_json(table))
    elif as_csv:
        sys.stdout.flush()
        write_csv(table, sys.stdout.buffer)
        sys.stdout.buffer.flush()
    else:
        # Only the shown rows become Python objects; a large result stays columnar.
        view = Table(*table.column_names)
        for row in table.slice(0, limit).to_pylist():
            view.add_row(*(str(row[c]) for c in table.column_names))
        Console().print(view)
        if table.num_rows > limit:
            console.print(f"({table.num_rows - limit} more rows; use --limit, --json or --csv)")
