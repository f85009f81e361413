"""A smoke probe of the whole serving path: one real request scored over HTTP by a freshly started stub.

The end-to-end flow ends with it: the newest request of the warehouse (its user and its candidates in the
order they were shown) goes to ``POST /v1/score`` of a serving stub started on a free loopback port,
against whatever champion the registry points to. It proves the champion loads, the online features
resolve and the HTTP contract holds, with no port or service configured beforehand.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from typing import Any

import duckdb
import httpx

from pipelines.settings import Settings
from serving_stub.server import ServerThread


@dataclass(frozen=True)
class ServedProbe:
    url: str  # where the stub listened (gone once the probe returns)
    user_id: str
    items: list[str]
    model_version: str
    scores: list[float]  # one per item, in the items' order

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def newest_request(settings: Settings) -> tuple[str, list[str]]:
    """The user and the candidates (in display order) of the warehouse's newest request."""
    with duckdb.connect(str(settings.warehouse_db), read_only=True) as con:
        row = con.execute(
            "SELECT user_id, list(item_id ORDER BY position) FROM labelled_samples "
            "WHERE request_id = (SELECT request_id FROM labelled_samples ORDER BY event_time DESC LIMIT 1) "
            "GROUP BY user_id LIMIT 1"
        ).fetchone()
    if row is None:
        raise RuntimeError(f"the warehouse {settings.warehouse_db} holds no labelled samples to score")
    return row[0], list(row[1])


def score_newest_request(settings: Settings, bootstrap: str | None, ready_timeout_s: float = 60.0,
                         ) -> ServedProbe:
    """Start the stub (its prediction log on ``bootstrap``), wait until ``/readyz`` says a champion is
    loaded, score the newest request once and stop the stub."""
    user, items = newest_request(settings)
    with ServerThread(settings, bootstrap) as server, httpx.Client(base_url=server.url, timeout=30) as client:
        deadline = time.monotonic() + ready_timeout_s
        while client.get("/readyz").status_code != 200:
            if time.monotonic() > deadline:
                raise RuntimeError(f"the serving stub loaded no champion within {ready_timeout_s:.0f} s")
            time.sleep(0.1)
        response = client.post("/v1/score", json={"user_id": user, "items": items})
        response.raise_for_status()
        body = response.json()
    return ServedProbe(server.url, user, items, body["model_version"], body["scores"])
