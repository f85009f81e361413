"""`ctrflow flows run | serve`: the Prefect flows, run once or served on their schedules."""

from __future__ import annotations

import json
from enum import StrEnum

import typer

from orchestration.cli.app import app
from pipelines.settings import get_settings

flows_app = typer.Typer(help="Prefect flows: run one now, or serve the scheduled deployments.",
                        no_args_is_help=True)
app.add_typer(flows_app, name="flows")


class FlowName(StrEnum):
    end_to_end = "end-to-end"
    feature_refresh = "feature-refresh"
    continual_training = "continual-training"


@flows_app.command("run")
def flows_run(
    name: FlowName = typer.Argument(..., help="Which flow to run."),
    config_json: str | None = typer.Option(None, "--train-config", help="TrainConfig overrides (JSON)."),
) -> None:
    """Run one flow now (without a Prefect server, Prefect starts a temporary local one)."""
    from orchestration import flows

    train_config = json.loads(config_json) if config_json else None
    if name is FlowName.end_to_end:
        result = flows.end_to_end_flow(train_config=train_config)
    elif name is FlowName.feature_refresh:
        result = flows.feature_refresh_flow()
    else:
        result = flows.continual_training_flow(train_config=train_config)
    print(json.dumps(result, default=str))


@flows_app.command("serve")
def flows_serve(
    only: list[str] | None = typer.Option(
        None, "--deployment", "-d",
        help="Serve only this deployment (repeatable); default all. The compose stack serves only "
             "continual-training: feature-refresh beside `features stream` would share its checkpoint."),
) -> None:
    """Serve the scheduled deployments (feature refresh, continual training) until Ctrl-C."""
    from prefect import serve

    from orchestration.deployments import build_deployments

    deployments = build_deployments(get_settings())
    known = [d.name for d in deployments]
    unknown = sorted(set(only or ()) - set(known))
    if unknown:
        typer.echo(f"error: unknown deployment(s) {unknown}; expected some of {known}", err=True)
        raise typer.Exit(code=2)
    serve(*[d for d in deployments if not only or d.name in only])
