"""Running the service: ``serve`` for the CLI (blocking) and ``ServerThread`` for tests and benchmarks.

Both run the real uvicorn server on loopback unless told otherwise. With no Kafka configured, the server
starts the embedded broker for its prediction log and, on shutdown, drains the log into the warehouse
(``pipelines.served.sink_served``): the embedded broker's topics live only as long as the server.
"""

from __future__ import annotations

import logging
import socket
import threading
import time
from dataclasses import dataclass

import uvicorn

from pipelines.kafka import kafka_bootstrap
from pipelines.served import ServedSinkReport, sink_served
from pipelines.settings import Settings
from serving_stub.app import create_app

_LOG = logging.getLogger(__name__)


@dataclass(frozen=True)
class ServeReport:
    host: str
    port: int
    served_sink: ServedSinkReport | None


def serve(settings: Settings, host: str | None = None, port: int | None = None) -> ServeReport:
    """Serve until interrupted (SIGINT/SIGTERM); returns what the shutdown drained."""
    host = host or settings.serving_host
    port = settings.serving_port if port is None else port
    # uvicorn reports a bind failure by exiting the process; fail first, as an OSError the CLI can word.
    with socket.socket() as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        probe.bind((host, port))
    with kafka_bootstrap(settings) as bootstrap:
        app = create_app(settings, bootstrap)
        uvicorn.run(app, host=host, port=port, log_level="info", access_log=False)
        drained = None
        if not settings.kafka_bootstrap and settings.serving_prediction_log:
            drained = sink_served(settings, bootstrap)
            _LOG.info("prediction log drained into the warehouse: %s", drained)
    return ServeReport(host, port, drained)


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


class ServerThread:
    """uvicorn in a background thread on a free loopback port (``with ServerThread(...) as url:``)."""

    def __init__(self, settings: Settings, bootstrap: str | None = None, host: str = "127.0.0.1") -> None:
        self.app = create_app(settings, bootstrap)
        self.host, self.port = host, free_port(host)
        config = uvicorn.Config(self.app, host=host, port=self.port, log_level="warning", access_log=False,
                                lifespan="on")
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, name="uvicorn", daemon=True)

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def __enter__(self) -> ServerThread:
        self.thread.start()
        deadline = time.monotonic() + 60
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("uvicorn did not start")
            time.sleep(0.02)
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=30)
