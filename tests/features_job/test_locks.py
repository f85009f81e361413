"""One writer per feature job: a second one is refused with the holder's pid and command; the kernel
frees the lock when the holder is killed; other resources (the registry) stay free meanwhile."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from orchestration.cli import app
from pipelines.beam.job import job_lock_name, reset_checkpoint, run_kafka
from pipelines.locks import LockHeld, resource_lock
from pipelines.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
HOLD = """
import sys, time
from pipelines.locks import resource_lock
from pipelines.settings import Settings
with resource_lock(Settings(home=sys.argv[1]), sys.argv[2]):
    print("held", flush=True)
    time.sleep(120)
"""


def test_a_second_writer_is_refused_until_the_holder_dies(settings: Settings, broker) -> None:
    kafka = settings.model_copy(update={"kafka_bootstrap": broker.bootstrap, "topic_partitions": 2})
    name = job_lock_name(kafka)
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD, str(kafka.home), name], cwd=ROOT, stdout=subprocess.PIPE, text=True
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        with pytest.raises(LockHeld, match=f"pid {holder.pid} "):
            run_kafka(kafka)
        with pytest.raises(LockHeld, match=f"pid {holder.pid} "):
            reset_checkpoint(kafka)
        env = {"CTRFLOW_TOPIC_PREFIX": kafka.topic_prefix}
        cli = CliRunner().invoke(
            app,
            [
                "--home",
                str(kafka.home),
                "--bootstrap",
                broker.bootstrap,
                "features",
                "build",
                "--from-kafka",
                "--no-online",
            ],
            env=env,
        )
        assert cli.exit_code == 2 and "Traceback" not in cli.output
        (line,) = cli.stderr.strip().splitlines()
        assert line.startswith("error: ") and f"pid {holder.pid} (-c {kafka.home} {name})" in line
        # Locks are per resource: training or promotion (the registry) is never blocked by a feature job.
        with resource_lock(kafka, "registry"):
            pass
    finally:
        holder.kill()  # SIGKILL: no cleanup code of the holder runs
        holder.wait()
    with resource_lock(kafka, name), resource_lock(kafka, name):  # freed by the kernel; re-entrant
        assert run_kafka(kafka).batches == []  # the job itself takes it again inside
    with pytest.raises(ValueError, match="bad lock name"), resource_lock(kafka, "../x"):
        pass
