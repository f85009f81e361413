"""`ctrflow demo`: simulate a small click log, replay it into Kafka (embedded broker) and report counts.

``run_demo(settings)`` is the function the integrator extends with feature building and training.
"""

from __future__ import annotations

import json
from typing import Any

import typer
from rich.console import Console

from orchestration.cli.app import app
from pipelines.kafka import kafka_bootstrap
from pipelines.replay import replay
from pipelines.settings import Settings, get_settings
from pipelines.simulator import SimulatorConfig, simulate

console = Console(stderr=True)

DEMO_SIMULATION = SimulatorConfig(days=3, users=500, items=300, impressions=5_000, categories=12, seed=7)


def run_demo(settings: Settings, simulation: SimulatorConfig = DEMO_SIMULATION) -> dict[str, Any]:
    """Simulate a small log under ``settings.home_dir``, replay it to Kafka and return the counts."""
    log_path = settings.datasets_dir / "demo_log.jsonl"
    console.print(f"[bold]1/2[/bold] simulating {simulation.impressions:,} impressions -> {log_path}")
    summary = simulate(simulation, log_path)
    console.print(
        f"    {summary.clicks:,} clicks (CTR {summary.ctr:.2%}), oracle AUC {summary.oracle_auc:.4f}, "
        f"oracle logloss {summary.oracle_logloss:.4f}"
    )
    with kafka_bootstrap(settings) as bootstrap:
        topics = f"{settings.topic_prefix}.*"
        console.print(f"[bold]2/2[/bold] replaying into Kafka at {bootstrap} (topics {topics})")
        stats = replay(log_path, settings, bootstrap)
        console.print(
            f"    read {stats.read:,}: produced {stats.produced:,} ({stats.impressions:,} impressions, "
            f"{stats.clicks:,} clicks), dead-lettered {stats.dead_lettered:,}"
        )
    return {"simulation": {"impressions": summary.impressions, "clicks": summary.clicks,
                           "oracle_auc": summary.oracle_auc, "oracle_logloss": summary.oracle_logloss},
            "replay": stats.as_dict()}


@app.command("demo")
def demo(as_json: bool = typer.Option(False, "--json", help="Print the results as one JSON object.")) -> None:
    """End-to-end demo on one machine with no services: simulate a log and replay it into Kafka."""
    result = run_demo(get_settings())
    if as_json:
        print(json.dumps(result))
