"""`ctrflow serve` as users run it: a subprocess on loopback, stopped by SIGINT, draining its log."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import duckdb
import httpx
import pytest

from serving_stub.server import free_port, serve

from .world import World, promote


def test_serve_scores_then_drains_the_prediction_log_on_shutdown(world: World) -> None:
    promote(world.settings, world.version, world.model)
    port = free_port()
    ctrflow = Path(sys.executable).with_name("ctrflow")
    env = {**os.environ, "CTRFLOW_HOME": str(world.settings.home_dir), "CTRFLOW_TOPIC_PREFIX": "cli"}
    env.pop("CTRFLOW_KAFKA_BOOTSTRAP", None)
    proc = subprocess.Popen([str(ctrflow), "serve", "--port", str(port)], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                if httpx.get(f"{url}/readyz", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            time.sleep(0.2)
        body = {"user_id": "u1", "items": ["i1", "i2"], "request_id": "cli-request"}
        response = httpx.post(f"{url}/v1/score", json=body, timeout=10)
        assert response.status_code == 200, response.text
    finally:
        proc.send_signal(signal.SIGINT)
        _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 0, stderr
    assert "prediction log: 2 rows written to the served table" in stderr
    with duckdb.connect(str(world.settings.warehouse_db), read_only=True) as con:
        rows = con.sql("SELECT item_id, model_version FROM served WHERE request_id = 'cli-request' "
                       "ORDER BY rank_in_request").fetchall()
    assert rows == [("i1", world.version), ("i2", world.version)]


def test_serve_refuses_a_taken_port_before_starting_anything(world: World) -> None:
    # The CLI turns this OSError into one "error: cannot serve on ..." line and exit 2.
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        with pytest.raises(OSError, match="in use"):
            serve(world.settings, "127.0.0.1", taken.getsockname()[1])
