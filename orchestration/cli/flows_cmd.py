"""`ctrflow flows run | serve`: the Prefect flows, run once or served on their schedules."""

from __future__ import annotations

import json
from enum import StrEnum
from typing import Any

import typer

from orchestration.cli.app import app, json_object_option, usage_error
from pipelines.settings import get_settings

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
    name: FlowName = typer.Argument(..., help="Which flow to run."),
    config_json: str | None = typer.Option(None, "--train-config", help="TrainConfig overrides (JSON)."),
) -> None:
    """Run one flow now (without a Prefect server, Prefect starts a temporary local one)."""
    from orchestration import flows

    train_config = train_config_overrides(config_json)
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
        raise usage_error(f"unknown deployment(s) {unknown}; expected some of {known}")
    serve(*[d for d in deployments if not only or d.name in only])
