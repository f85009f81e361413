"""`ctrflow broker | simulate | convert | replay`: getting click logs into files and into Kafka."""

from __future__ import annotations

import json
import signal
import threading
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path

import typer
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    SpinnerColumn,
    TextColumn,
    TimeElapsedColumn,
)

from orchestration.cli.app import app, cli_settings, usage_error
from pipelines.convert import convert_log
from pipelines.kafka import EmbeddedBroker, kafka_bootstrap
from pipelines.logfile import log_format
from pipelines.replay import FORMATS, ReplayError, ReplayStats, replay
from pipelines.simulator import SimulatorConfig, simulate

console = Console(stderr=True)


def _progress(total: int | None = None) -> Progress:
    columns = [SpinnerColumn(), TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn()]
    if total is None:
        columns = [
            SpinnerColumn(), TextColumn("{task.description}"), TextColumn("{task.completed:,} records")
        ]
    return Progress(*columns, TimeElapsedColumn(), console=console, transient=True)


def parse_speed(value: str) -> float | None:
    """``max`` = as fast as possible (None); otherwise a positive multiple of the recorded pace."""
    if value.lower() == "max":
        return None
    try:
        speed = float(value)
    except ValueError:
        raise typer.BadParameter(f"speed must be a positive number or 'max', got {value!r}") from None
    if not 0 < speed <= 1e9:
        raise typer.BadParameter(f"speed must be in (0, 1e9] or 'max', got {value!r}")
    return speed


def serve_broker(port: int | None, stop: threading.Event, on_ready: Callable[[str], None]) -> None:
    """Run the embedded broker until ``stop`` is set (or Ctrl-C); ``on_ready`` gets its bootstrap address."""
    with EmbeddedBroker(port=port) as embedded:
        on_ready(embedded.bootstrap)
        try:
            while not stop.wait(0.5):
                pass
        except KeyboardInterrupt:
            pass


@app.command("broker")
def broker(
    port: int | None = typer.Option(None, "--port", min=1, max=65535, help="Default: a free port."),
) -> None:
    """Run the embedded Kafka-protocol broker (in memory, loopback) in the foreground; Ctrl-C stops it."""
    stop = threading.Event()
    # Explicit handlers: a shell that starts us in the background sets SIGINT to "ignore".
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stop.set())

    def ready(bootstrap: str) -> None:
        print(bootstrap, flush=True)
        console.print(f"embedded broker listening on {bootstrap} (in memory); Ctrl-C stops it")

    serve_broker(port, stop, ready)
    console.print("broker stopped")


@app.command("simulate")
def simulate_cmd(
    out: Path = typer.Option(..., "--out", help="Output log: .jsonl or .parquet."),
    days: int = typer.Option(7, "--days", min=1, max=3650),
    users: int = typer.Option(10_000, "--users", min=1, max=100_000_000),
    items: int = typer.Option(5_000, "--items", min=1, max=100_000_000),
    impressions: int = typer.Option(1_000_000, "--impressions", min=1, max=10_000_000_000),
    seed: int = typer.Option(0, "--seed"),
    categories: int = typer.Option(40, "--categories", min=1, max=100_000),
    chunk_rows: int = typer.Option(100_000, "--chunk-rows", min=100, max=10_000_000),
    start: str = typer.Option("2026-01-05", "--start", help="First day (UTC ISO date)."),
    as_json: bool = typer.Option(False, "--json", help="Print the summary as one JSON object (last line)."),
) -> None:
    """Write a simulated click log whose impressions carry their true click probability."""
    try:
        log_format(out)
        config = SimulatorConfig(days=days, users=users, items=items, impressions=impressions, seed=seed,
                                 categories=min(categories, items), chunk_rows=chunk_rows, start=start)
    except ValueError as exc:
        raise usage_error(str(exc)) from None
    with _progress(impressions) as progress:
        task = progress.add_task("simulating", total=impressions)
        summary = simulate(config, out, on_chunk=lambda n: progress.advance(task, n))
    console.print(
        f"wrote {summary.impressions:,} impressions and {summary.clicks:,} clicks to {out} "
        f"(CTR {summary.ctr:.2%}); oracle AUC {summary.oracle_auc:.4f}, "
        f"oracle logloss {summary.oracle_logloss:.4f}"
    )
    if as_json:
        print(json.dumps(asdict(summary)))


# Side files a format's adapter can join (see pipelines.adapters.mind / movielens).
SIDE_FILES = {"news": "mind", "items": "movielens", "users": "movielens"}
NEWS_OPTION = typer.Option(None, "--news", exists=True, dir_okay=False,
                           help="MIND: the split's news.tsv (adds category, subcategory).")
ITEMS_OPTION = typer.Option(None, "--items", exists=True, dir_okay=False,
                            help="MovieLens: u.item or movies.dat (adds genres; the first is the category).")
USERS_OPTION = typer.Option(None, "--users", exists=True, dir_okay=False,
                            help="MovieLens: u.user or users.dat (adds user age, gender, occupation).")


def side_file_options(fmt: str, **files: Path | None) -> dict[str, Path]:
    """The adapter options for the side files given; one given for another format is a usage error."""
    given = {name: path for name, path in files.items() if path is not None}
    for name in given:
        if SIDE_FILES[name] != fmt:
            raise usage_error(f"--{name} is a {SIDE_FILES[name]} side file; the format is {fmt!r}")
    return given


@app.command("convert")
def convert_cmd(
    fmt: str = typer.Argument(..., metavar="FORMAT", help=f"One of: {', '.join(FORMATS)}."),
    source: Path = typer.Argument(..., exists=True, dir_okay=False, help="Input file in that format."),
    out: Path = typer.Argument(..., help="Canonical log to write: .jsonl or .parquet."),
    negatives: int = typer.Option(4, "--negatives", min=0, max=99, help="Taobao: sampled negatives per pv."),
    seed: int = typer.Option(0, "--seed", help="Taobao: negative-sampling seed."),
    news: Path | None = NEWS_OPTION,
    items: Path | None = ITEMS_OPTION,
    users: Path | None = USERS_OPTION,
    as_json: bool = typer.Option(False, "--json", help="Print the counts as one JSON object (last line)."),
) -> None:
    """Convert a public log format (or a canonical log) into a canonical, event-time-ordered log.

    Malformed lines are kept aside in OUT.deadletter.jsonl, with their line numbers and reasons.
    A .parquet OUT keeps only the canonical columns (side fields included); other extra fields (Criteo's
    I/C columns, MovieLens rating and zip code) need .jsonl."""
    options: dict[str, object] = {"negatives": negatives, "seed": seed} if fmt == "taobao" else {}
    options |= side_file_options(fmt, news=news, items=items, users=users)
    try:
        with _progress() as progress:
            task = progress.add_task(f"converting {source.name}")
            report = convert_log(fmt, source, out, options=options,
                                 on_progress=lambda n: progress.advance(task, n))
    except (ValueError, OSError) as exc:
        raise usage_error(str(exc)) from None
    kept = f" (kept in {report.dead_letter_path})" if report.dead_letter_path else ""
    console.print(f"wrote {report.events:,} events to {out}; {report.skipped:,} lines skipped by design, "
                  f"{report.dead_lettered:,} malformed{kept}")
    if report.extra_fields_dropped:
        console.print(
            f"[yellow]warning:[/yellow] {report.extra_fields_dropped:,} records carried fields beyond the "
            "canonical columns, which Parquet does not keep; write .jsonl to keep them"
        )
    if as_json:
        print(json.dumps(report.counts()))


@app.command("replay")
def replay_cmd(
    ctx: typer.Context,
    source: Path = typer.Argument(..., exists=True, dir_okay=False, help="Log file to replay."),
    fmt: str = typer.Option("canonical", "--format", help=f"One of: {', '.join(FORMATS)}."),
    news: Path | None = NEWS_OPTION,
    items: Path | None = ITEMS_OPTION,
    users: Path | None = USERS_OPTION,
    speed: str = typer.Option("max", "--speed", help="N = recorded pace x N; 'max' = as fast as possible."),
    topic_prefix: str | None = typer.Option(
        None, "--topic-prefix", help="Topic prefix (env CTRFLOW_TOPIC_PREFIX)."
    ),
    as_json: bool = typer.Option(False, "--json", help="Print the counts as one JSON object (last line)."),
) -> None:
    """Replay a log into <prefix>.impressions / .clicks in event-time order; bad records to .deadletter."""
    if fmt not in FORMATS:
        raise usage_error(f"unknown format {fmt!r}: expected one of {list(FORMATS)}")
    side_files = side_file_options(fmt, news=news, items=items, users=users)
    pace = parse_speed(speed)
    settings = cli_settings(ctx, topic_prefix=topic_prefix)
    with kafka_bootstrap(settings) as bootstrap, _progress() as progress:
        task = progress.add_task(f"replaying {source.name} to {settings.topic_prefix}.*")
        try:
            stats = replay(source, settings, bootstrap, fmt=fmt, speed=pace,
                           on_progress=lambda n: progress.advance(task, n), **side_files)
        except ReplayError as exc:
            console.print(f"[red]error:[/red] {exc}")
            print(json.dumps(exc.stats.as_dict()))
            raise typer.Exit(code=1) from None
        except (ValueError, FileNotFoundError) as exc:
            raise usage_error(str(exc)) from None
    _print_replay(stats)
    if as_json:
        print(json.dumps(stats.as_dict()))


def _print_replay(stats: ReplayStats) -> None:
    rate = stats.read / stats.seconds if stats.seconds else 0.0
    console.print(
        f"read {stats.read:,}: produced {stats.produced:,} ({stats.impressions:,} impressions, "
        f"{stats.clicks:,} clicks), dead-lettered {stats.dead_lettered:,}, skipped {stats.skipped:,} "
        f"in {stats.seconds:.1f} s ({rate:,.0f} records/s)"
        + (f"; {stats.blank_lines:,} blank lines skipped" if stats.blank_lines else "")
    )
    if stats.out_of_order:
        console.print(f"[yellow]warning:[/yellow] {stats.out_of_order:,} events went back in event time "
                      "(produced as read; sort the log with `ctrflow convert` first)")
