"""The `ctrflow` Typer application and its command groups; command modules register onto these."""

from __future__ import annotations

import json
import logging
import os
import sys
import traceback
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import typer
from pydantic import ValidationError
from typer.core import TyperGroup
from typer.exceptions import TyperException

from pipelines.settings import Settings, get_settings

# Keep Prefect on loopback: no telemetry or analytics calls out of the machine (before Prefect imports).
os.environ.setdefault("DO_NOT_TRACK", "1")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")

DEBUG_ENV = "CTRFLOW_DEBUG"
# Typer's own signals (exits, aborts, usage errors) are not errors to rephrase.
_PASS_THROUGH = (typer.Exit, typer.Abort, TyperException, EOFError)


_invocation = {"debug": False}


@dataclass(frozen=True)
class CliOptions:
    """The global flags of one invocation, held on Typer's context object (``ctx.obj``) so every command
    builds its settings from them explicitly instead of through the process environment."""

    home: Path | None = None
    bootstrap: str | None = None


def cli_settings(ctx: typer.Context, **overrides: object) -> Settings:
    """This invocation's settings: ``CTRFLOW_*`` variables, then the global flags (``ctx``'s), then
    ``overrides`` (a command's own flags; ``None`` values are ignored)."""
    options = ctx.find_object(CliOptions) or CliOptions()
    return get_settings(**{"home": options.home, "kafka_bootstrap": options.bootstrap} | overrides)


def debugging() -> bool:
    """Whether --debug (or CTRFLOW_DEBUG=1) asked for tracebacks instead of one-line errors."""
    return _invocation["debug"]


def validation_message(exc: ValidationError) -> str:
    """A pydantic error as one line: ``invalid settings: field: reason; ...``."""
    reasons = "; ".join(
        f"{'.'.join(map(str, e['loc'])) or 'settings'}: {e['msg']}" for e in exc.errors(include_url=False)
    )
    return f"invalid settings: {reasons}"


class _OneLineErrors(TyperGroup):
    """Every error a command lets escape becomes one ``error: ...`` line and exit 2, unless --debug:
    bad input and unreachable services are expected; a traceback is for whoever debugs the code."""

    def invoke(self, ctx: typer.Context) -> Any:
        try:
            return super().invoke(ctx)
        except _PASS_THROUGH:
            raise
        except Exception as exc:
            if debugging():
                raise
            if isinstance(exc, ValidationError):  # CTRFLOW_* settings (or a record) with a bad value
                raise usage_error(validation_message(exc)) from None
            lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
            message = lines[0] if lines else type(exc).__name__
            if not isinstance(exc, ValueError | OSError | RuntimeError):  # not a bad input: name it
                message = f"{type(exc).__name__}: {message} (--debug shows the traceback)"
            raise usage_error(message) from None


app = typer.Typer(
    name="ctrflow",
    cls=_OneLineErrors,
    help="Streaming CTR feature pipeline and continual training.",
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,
)
features_app = typer.Typer(help="Feature jobs, offline queries and online lookups.", no_args_is_help=True)
dataset_app = typer.Typer(help="Point-in-time training sets.", no_args_is_help=True)
app.add_typer(features_app, name="features")
app.add_typer(dataset_app, name="dataset")


@app.callback()
def _global_options(
    ctx: typer.Context,
    home: Path | None = typer.Option(None, "--home", help="State directory (env CTRFLOW_HOME)."),
    bootstrap: str | None = typer.Option(
        None, "--bootstrap", help="Kafka bootstrap host:port (env CTRFLOW_KAFKA_BOOTSTRAP); unset = embedded."
    ),
    debug: bool = typer.Option(
        False, "--debug", envvar=DEBUG_ENV, help="Show tracebacks instead of one-line errors."
    ),
) -> None:
    ctx.obj = CliOptions(home=home, bootstrap=bootstrap)
    # Per invocation (the option reads CTRFLOW_DEBUG too): an earlier --debug in the same process, a test
    # runner's say, must not leak into this one.
    _invocation["debug"] = debug
    state = (home or Path(os.environ.get("CTRFLOW_HOME", ".ctrflow"))).expanduser()
    if state.exists() and not state.is_dir():
        raise usage_error(f"--home {state} is a file, not a directory: give the state directory")


def settings_for_flows(ctx: typer.Context, **overrides: object) -> Settings:
    """``cli_settings`` for a command that runs Prefect flows. Flows read ``CTRFLOW_*`` like any process
    (a served deployment runs in a child process Prefect starts), so the global flags and ``overrides``
    are written into this process's environment here, the one place the CLI hands settings on that way."""
    settings = cli_settings(ctx, **overrides)
    os.environ["CTRFLOW_HOME"] = str(settings.home)
    if settings.kafka_bootstrap:
        os.environ["CTRFLOW_KAFKA_BOOTSTRAP"] = settings.kafka_bootstrap
    for name, value in overrides.items():
        if value is not None:
            os.environ[f"CTRFLOW_{name.upper()}"] = str(value)
    return settings


VERBOSE = typer.Option(False, "--verbose", help="Show Prefect's, Kafka's and the libraries' logs.")


def quiet_libraries() -> None:
    """A flow command's output is its own summary: Prefect's per-task INFO lines, kafka-python's selector
    warnings and the libraries' deprecation warnings (logged through ``py.warnings``) only with
    --verbose. A failed flow still ends in one `error:` line of the CLI's: Prefect's own copy of the
    traceback is for --verbose too."""
    for name in ("prefect", "kafka", "py.warnings"):
        logging.getLogger(name).setLevel(logging.CRITICAL)
    warnings.filterwarnings("ignore", category=DeprecationWarning)


def usage_error(message: str) -> typer.Exit:
    """Say ``error: <message>`` on stderr; raise the returned exit (code 2: bad usage or bad input)."""
    typer.secho(f"error: {message}", err=True, fg=typer.colors.RED)
    return typer.Exit(code=2)


def error_exit(exc: BaseException) -> typer.Exit:
    """``usage_error`` for a caught exception (the first line of its message); with --debug the
    traceback is printed first."""
    if debugging():
        traceback.print_exception(exc, file=sys.stderr)
    if isinstance(exc, ValidationError):  # a ValueError too, whose first line names no field
        return usage_error(validation_message(exc))
    lines = str(exc).strip().splitlines()
    return usage_error(lines[0] if lines else type(exc).__name__)


def json_object_option(text: str | None, option: str) -> dict[str, Any]:
    """An option holding a JSON object (``{}`` when unset); anything else is a usage error."""
    if not text:
        return {}
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise usage_error(f"{option} is not valid JSON: {exc}") from None
    if not isinstance(value, dict):
        raise usage_error(f"{option} must be a JSON object")
    return value
