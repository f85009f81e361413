"""The compose stack, read as data (no Docker engine here): the services DESIGN.md promises exist,
ports publish on loopback only, and every ctrflow service runs a command the CLI really has."""

from __future__ import annotations

from pathlib import Path

import yaml
from typer.testing import CliRunner

from orchestration.cli import app

COMPOSE = Path(__file__).resolve().parents[2] / "docker-compose.yml"


def _compose() -> dict:
    return yaml.safe_load(COMPOSE.read_text())


def test_stack_has_kraft_kafka_redis_prefect_and_the_feature_job() -> None:
    services = _compose()["services"]
    assert {"kafka", "redis", "postgres", "prefect-server", "feature-stream"} <= set(services)
    kafka_env = services["kafka"]["environment"]
    assert "controller" in kafka_env["KAFKA_PROCESS_ROLES"]  # KRaft mode, no ZooKeeper service
    assert not any("zookeeper" in name for name in services)
    assert services["prefect-server"]["image"].startswith("prefecthq/prefect:3.8")


def test_published_ports_bind_to_loopback() -> None:
    for name, service in _compose()["services"].items():
        for port in service.get("ports", []):
            assert str(port).startswith("127.0.0.1:"), f"{name} publishes {port} beyond loopback"


def test_ctrflow_services_use_the_compose_profile_and_existing_commands() -> None:
    runner = CliRunner()
    for name, service in _compose()["services"].items():
        if service.get("image") != "ctrflow:latest":
            continue
        env = service["environment"]
        assert env["CTRFLOW_KAFKA_BOOTSTRAP"] == "kafka:9092", name
        assert env["CTRFLOW_FEAST_PROFILE"] == "compose", name
        # `<command> --help` exits 0 only for a command the CLI really registers.
        result = runner.invoke(app, [*service["command"], "--help"])
        assert result.exit_code == 0, f"{name}: {service['command']} is not a ctrflow command"
