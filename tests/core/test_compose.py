"""The compose stack, read as data (no Docker engine here): the services exist, ports publish on loopback
only, every ctrflow service runs a command the CLI really has, every CTRFLOW_* variable is a Settings
field, and each service mounts a volume exactly where its settings put that kind of state."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from typer.testing import CliRunner

from orchestration.cli import app
from pipelines.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = ROOT / "docker-compose.yml"
GPU_OVERLAY = ROOT / "docker-compose.gpu.yml"
# Services that read or write ctrflow state (all of it); the serving stub reads only part (checked apart).
STATE_JOBS = ("init", "feature-stream", "trainer", "deploy-flows", "prefect-worker")
_DEFAULTED = re.compile(r"\$\{(\w+):-([^}]*)\}")


def _compose() -> dict:
    return yaml.safe_load(COMPOSE.read_text())


def _ctrflow_services() -> dict[str, dict]:
    return {n: s for n, s in _compose()["services"].items() if s.get("image") == "ctrflow:latest"}


def _env(service: dict) -> dict[str, str]:
    """The service's environment as a container sees it with no host overrides (``${X:-d}`` -> ``d``)."""
    return {k: _DEFAULTED.sub(lambda m: m.group(2), str(v)) for k, v in service["environment"].items()}


def _settings(service: dict) -> Settings:
    """The Settings the service's ctrflow process builds from its CTRFLOW_* environment."""
    fields = {k.removeprefix("CTRFLOW_").lower(): v for k, v in _env(service).items()
              if k.startswith("CTRFLOW_")}
    return Settings.model_validate(fields)


def _mounts(service: dict) -> dict[str, tuple[str, bool]]:
    """Container path -> (named volume, read-only)."""
    out = {}
    for entry in service.get("volumes", []):
        source, target, *mode = entry.split(":")
        out[target] = (source, mode == ["ro"])
    return out


def test_stack_has_kraft_kafka_redis_prefect_the_jobs_and_serving() -> None:
    services = _compose()["services"]
    assert {"kafka", "redis", "postgres", "prefect-server", "feature-stream", "trainer", "serving",
            "prefect-worker", "deploy-flows"} <= set(services)
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
    for name, service in _ctrflow_services().items():
        env = _env(service)
        assert env["CTRFLOW_KAFKA_BOOTSTRAP"] == "kafka:9092", name
        assert env["CTRFLOW_FEAST_PROFILE"] == "compose", name
        if "entrypoint" in service:
            continue  # not a ctrflow command (the Prefect worker; checked below)
        # `<command> --help` exits 0 only for a command the CLI really registers.
        result = runner.invoke(app, [*service["command"], "--help"])
        assert result.exit_code == 0, f"{name}: {service['command']} is not a ctrflow command"


def test_every_ctrflow_variable_is_a_settings_field_with_the_settings_default() -> None:
    for name, service in _ctrflow_services().items():
        for key, raw in service["environment"].items():
            if not key.startswith("CTRFLOW_"):
                continue
            field = key.removeprefix("CTRFLOW_").lower()
            assert field in Settings.model_fields, f"{name}: {key} is not a Settings field"
            defaulted = _DEFAULTED.fullmatch(str(raw))
            if defaulted:  # a tunable: the file's fallback must be the documented default
                assert defaulted.group(1) == key, f"{name}: {key} reads ${{{defaulted.group(1)}}}"
                assert str(Settings.model_fields[field].default) == defaulted.group(2), f"{name}: {key}"
        _settings(service)  # and the values are valid settings


def test_state_volumes_mount_where_the_settings_put_each_kind_of_state() -> None:
    named = set(_compose()["volumes"])
    for name in STATE_JOBS:
        service = _compose()["services"][name]
        settings, mounts = _settings(service), _mounts(service)
        paths = [settings.home_dir, settings.warehouse_dir, settings.registry_dir, settings.runs_dir]
        volumes = []
        for path in paths:
            assert str(path) in mounts, f"{name}: nothing mounted at {path}"
            volume, read_only = mounts[str(path)]
            assert volume in named and not read_only, f"{name}: {path} on {volume}"
            volumes.append(volume)
        assert len(set(volumes)) == 4, f"{name}: home, warehouse, registry and runs share a volume"
        assert settings.checkpoints_dir.parent == settings.home_dir  # checkpoints live on the home volume
    # Every job sees the same volume for the same kind of state.
    assert len({tuple(sorted(_mounts(_compose()["services"][n]).items())) for n in STATE_JOBS}) == 1


def test_serving_binds_where_its_settings_say_and_reads_the_registry_read_only() -> None:
    services = _compose()["services"]
    serving = services["serving"]
    settings = _settings(serving)
    port = str(settings.serving_port)
    assert serving["command"] == ["serve", "--host", settings.serving_host, "--port", port]
    assert serving["ports"] == [f"127.0.0.1:{settings.serving_port}:{settings.serving_port}"]
    assert f"127.0.0.1:{settings.serving_port}/readyz" in " ".join(serving["healthcheck"]["test"])
    mounts = _mounts(serving)
    assert mounts[str(settings.registry_dir)] == ("ctrflow-registry", True)
    assert str(settings.home_dir) in mounts
    # The online store it reads is the stack's Redis, which it waits for.
    assert settings.feast_profile == "compose" and settings.redis_connection.split(":")[0] == "redis"
    assert serving["depends_on"]["redis"]["condition"] == "service_healthy"


def test_prefect_dependants_wait_for_a_healthy_server() -> None:
    services = _compose()["services"]
    server = services["prefect-server"]
    assert "/api/health" in " ".join(server["healthcheck"]["test"])
    for name in ("trainer", "deploy-flows", "prefect-worker"):
        service = services[name]
        assert _env(service)["PREFECT_API_URL"] == "http://prefect-server:4200/api", name
        assert service["depends_on"]["prefect-server"]["condition"] == "service_healthy", name


def test_work_pool_variant_registers_and_works_the_same_pool() -> None:
    services = _compose()["services"]
    deploy, worker = services["deploy-flows"], services["prefect-worker"]
    assert deploy["command"][:2] == ["flows", "deploy"] and worker["entrypoint"] == ["prefect"]
    pool = deploy["command"][deploy["command"].index("--pool") + 1]
    assert worker["command"][:2] == ["worker", "start"]
    assert worker["command"][worker["command"].index("--pool") + 1] == pool
    assert worker["depends_on"]["deploy-flows"]["condition"] == "service_completed_successfully"
    # A variant: only with `--profile worker`, so by default only the trainer runs the retraining.
    assert deploy["profiles"] == worker["profiles"] == ["worker"]
    assert "profiles" not in services["trainer"]


def test_gpu_reservation_is_an_optional_overlay_for_the_training_services() -> None:
    overlay: dict[str, Any] = yaml.safe_load(GPU_OVERLAY.read_text())["services"]
    for name in ("trainer", "prefect-worker"):
        devices = overlay[name]["deploy"]["resources"]["reservations"]["devices"]
        assert devices[0]["capabilities"] == ["gpu"], name
    assert overlay["init"]["build"]["args"]["TORCH_INDEX"].startswith("https://download.pytorch.org/whl/cu")
    assert not any("deploy" in s for s in _compose()["services"].values())  # CPU-only hosts start as is


@pytest.mark.skipif(shutil.which("docker-compose") is None, reason="docker-compose is not installed")
def test_docker_compose_accepts_the_file_and_the_gpu_overlay() -> None:
    for files in (["-f", str(COMPOSE)], ["-f", str(COMPOSE), "-f", str(GPU_OVERLAY)]):
        done = subprocess.run(["docker-compose", *files, "--profile", "worker", "config", "-q"],
                              capture_output=True, text=True, cwd=ROOT, timeout=60)
        assert done.returncode == 0, done.stderr
