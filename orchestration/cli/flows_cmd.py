"""`ctrflow flows run | serve | deploy`: the Prefect flows, run once, served on their schedules from this
process, or registered to a work pool for workers to run."""

from __future__ import annotations

import json
from dataclasses import asdict
from enum import StrEnum
from typing import Any

import typer

from orchestration.cli.app import (
    VERBOSE,
    app,
    cli_settings,
    json_object_option,
    quiet_libraries,
    settings_for_flows,
    usage_error,
)

flows_app = typer.Typer(help="Prefect flows: run one now, or serve the scheduled deployments.",
                        no_args_is_help=True)
app.add_typer(flows_app, name="flows")


def train_config_overrides(text: str | None, base: dict[str, Any] | None = None) -> dict[str, Any]:
    """``--train-config`` on top of ``base``, checked before any flow starts: bad JSON, a non-object or
    an unknown TrainConfig field is a usage error (exit 2), not a traceback in the middle of a flow run."""
    from training.trainer import TrainConfig

    config = (base or {}) | json_object_option(text, "--train-config")
    try:
        TrainConfig.from_dict(config)
    except (ValueError, TypeError) as exc:
        raise usage_error(f"--train-config: {exc}") from None
    return config


class FlowName(StrEnum):
    end_to_end = "end-to-end"
    feature_refresh = "feature-refresh"
    continual_training = "continual-training"


@flows_app.command("run")
def flows_run(
    ctx: typer.Context,
    name: FlowName = typer.Argument(..., help="Which flow to run."),
    config_json: str | None = typer.Option(None, "--train-config", help="TrainConfig overrides (JSON)."),
    verbose: bool = VERBOSE,
) -> None:
    """Run one flow now (without a Prefect server, Prefect starts a temporary local one) and print its
    result as one JSON line."""
    from orchestration import flows

    if not verbose:
        quiet_libraries()
    train_config = train_config_overrides(config_json)
    settings = settings_for_flows(ctx)  # every flow, so that --home and --bootstrap reach it
    if name is FlowName.feature_refresh and not settings.kafka_bootstrap:
        raise usage_error(flows.NO_REFRESH_BROKER)
    if name is FlowName.end_to_end:
        result = flows.end_to_end_flow(train_config=train_config)
    elif name is FlowName.feature_refresh:
        result = flows.feature_refresh_flow()
    else:
        result = flows.continual_training_flow(train_config=train_config)
    print(json.dumps(result, default=str))


_ONLY_HELP = ("Only this deployment (repeatable); default all. The compose stack runs only "
              "continual-training: feature-refresh beside `features stream` would share its checkpoint.")


@flows_app.command("serve")
def flows_serve(
    ctx: typer.Context,
    only: list[str] | None = typer.Option(None, "--deployment", "-d", help=_ONLY_HELP),
) -> None:
    """Serve the scheduled deployments (feature refresh, continual training) until Ctrl-C. Without
    CTRFLOW_KAFKA_BOOTSTRAP, one embedded broker runs as long as this command, and every feature-refresh
    run reads from it (replay into the address printed on stderr)."""
    from prefect import serve

    from orchestration.deployments import FEATURE_REFRESH, build_deployments, select
    from pipelines.kafka import EmbeddedBroker

    settings = settings_for_flows(ctx)
    try:
        chosen = [d.name for d in select(build_deployments(settings), only)]
    except ValueError as exc:
        raise usage_error(str(exc)) from None
    if settings.kafka_bootstrap or FEATURE_REFRESH not in chosen:
        serve(*select(build_deployments(settings), chosen))
        return
    with EmbeddedBroker() as broker:
        typer.echo(f"embedded broker for this serve's lifetime at {broker.bootstrap} "
                   f"(replay into it with `ctrflow --bootstrap {broker.bootstrap} replay LOG`)", err=True)
        serve(*select(build_deployments(settings, bootstrap=broker.bootstrap), chosen))


@flows_app.command("deploy")
def flows_deploy(
    ctx: typer.Context,
    pool: str = typer.Option(..., "--pool", help="Work pool to register to (created as a process pool)."),
    only: list[str] | None = typer.Option(None, "--deployment", "-d", help=_ONLY_HELP),
) -> None:
    """Register the scheduled deployments to a work pool; `prefect worker start --pool NAME` runs them."""
    from orchestration.deployments import deploy_to_pool

    try:
        registered = deploy_to_pool(cli_settings(ctx), pool, only)
    except ValueError as exc:
        raise usage_error(str(exc)) from None
    for entry in registered:
        print(json.dumps(asdict(entry)))
