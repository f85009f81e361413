"""The scoring service: FastAPI over the champion holder, the online reader and the prediction log.

Endpoints: ``POST /v1/score``, ``GET /healthz`` (the process answers), ``GET /readyz`` (a champion is
loaded), ``GET /v1/model`` (what serves, its gate record, the last reload and why it failed, if it did),
``GET /metrics`` (Prometheus text). Bad requests get a 4xx with a message, never a 5xx: types, ranges
and lengths are validated, bodies over ``serving_max_body_bytes`` get 413 before they are parsed.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Annotated, Any

import torch
from fastapi import FastAPI, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, StrictInt, StrictStr

from pipelines.events import MAX_EVENT_TIME_MS, MAX_POSITION, MIN_EVENT_TIME_MS
from pipelines.served import ServedRecord
from pipelines.settings import Settings
from serving_stub.champion import ChampionHolder
from serving_stub.online_reader import OnlineReader, OnlineReadError
from serving_stub.predlog import PredictionLog
from serving_stub.scoring import FeatureFetcher, RequestContext, now_ms, utc_hour

# Hard caps of the schema itself; the Settings bounds (checked per request) are at most these.
SCHEMA_MAX_ITEMS = 10_000
SCHEMA_MAX_ID = 4096
LATENCY_BUCKETS = (0.001, 0.002, 0.005, 0.01, 0.015, 0.02, 0.03, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)


def _utf8(value: str) -> str:
    # JSON may carry lone surrogates ("\ud800"): valid Python text that no store, hash or Kafka key takes.
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise ValueError("text must be valid Unicode (no lone surrogates)") from exc
    return value


Text = Annotated[StrictStr, Field(min_length=1, max_length=SCHEMA_MAX_ID), AfterValidator(_utf8)]


class ScoreContext(BaseModel):
    model_config = ConfigDict(extra="forbid")

    event_time: Annotated[StrictInt, Field(ge=MIN_EVENT_TIME_MS, lt=MAX_EVENT_TIME_MS)] | None = Field(
        None, description="Request time in ms UTC; missing = now."
    )
    hour: Annotated[StrictInt, Field(ge=0, le=23)] | None = Field(
        None, description="Hour of day; missing = the UTC hour of event_time."
    )
    device: Text | None = None
    page: Text | None = None
    positions: list[Annotated[StrictInt, Field(ge=0, le=MAX_POSITION)]] | None = Field(
        None, max_length=SCHEMA_MAX_ITEMS, description="Slot of each item (same order); missing = 0."
    )


class ScoreRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    user_id: Text
    items: list[Text] = Field(min_length=1, max_length=SCHEMA_MAX_ITEMS)
    context: ScoreContext = Field(default_factory=ScoreContext)
    request_id: Text | None = Field(None, description="Joins the prediction log to impressions; "
                                    "missing = a new UUID.")


class ScoreResponse(BaseModel):
    request_id: str
    model_version: str
    scores: list[float]


@dataclass
class Metrics:
    registry: CollectorRegistry
    requests: Counter
    latency: Histogram
    scored: Counter
    feature_read: Histogram
    scoring: Histogram
    reloads: Counter
    reload_failures: Counter
    serving_version: Gauge
    log_events: Counter

    @classmethod
    def create(cls) -> Metrics:
        r = CollectorRegistry()
        by_status = ["endpoint", "status"]
        return cls(
            registry=r,
            requests=Counter("ctrflow_serving_requests", "HTTP requests", by_status, registry=r),
            latency=Histogram("ctrflow_serving_request_seconds", "HTTP request latency", by_status,
                              buckets=LATENCY_BUCKETS, registry=r),
            scored=Counter("ctrflow_serving_scored_requests", "Scored requests", ["model_version"],
                           registry=r),
            feature_read=Histogram("ctrflow_serving_feature_read_seconds", "Online feature reads per request",
                                   buckets=LATENCY_BUCKETS, registry=r),
            scoring=Histogram("ctrflow_serving_scoring_seconds", "Encoding + model pass per request",
                              buckets=LATENCY_BUCKETS, registry=r),
            reloads=Counter("ctrflow_serving_reloads", "Champion models swapped in", registry=r),
            reload_failures=Counter("ctrflow_serving_reload_failures", "Champion reloads refused",
                                    ["reason"], registry=r),
            serving_version=Gauge("ctrflow_serving_model_info", "1 for the version now serving, 0 before",
                                  ["version"], registry=r),
            log_events=Counter("ctrflow_serving_prediction_log", "Prediction log records", ["outcome"],
                               registry=r),
        )


ENDPOINTS = ("/v1/score", "/v1/model", "/healthz", "/readyz", "/metrics")


class GuardMiddleware:
    """Pure ASGI: refuses bodies over the limit with 413 (header or streamed count) and times every
    request by endpoint and status."""

    def __init__(self, app: Callable, max_body: int, metrics: Metrics) -> None:
        self.app, self.max_body, self.metrics = app, max_body, metrics

    async def __call__(self, scope: dict, receive: Callable[[], Awaitable[dict]], send: Callable) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        endpoint = scope["path"] if scope["path"] in ENDPOINTS else "other"
        status = {"code": 500}

        async def send_status(message: dict) -> None:
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
            await send(message)

        try:
            declared = dict(scope.get("headers") or []).get(b"content-length")
            too_big = declared is not None and (not declared.isdigit() or int(declared) > self.max_body)
            body, more = b"", True
            while not too_big and more:
                message = await receive()
                if message["type"] == "http.disconnect":
                    status["code"] = 499  # the client went away before sending its body
                    return
                body += message.get("body", b"")
                more = message.get("more_body", False)
                too_big = len(body) > self.max_body
            if too_big:
                await _send_json(send_status, 413, {"detail": f"request body over {self.max_body} bytes"})
                return
            replayed = False

            async def replay() -> dict:
                nonlocal replayed
                if not replayed:
                    replayed = True
                    return {"type": "http.request", "body": body, "more_body": False}
                return await receive()

            await self.app(scope, replay, send_status)
        finally:
            code = str(status["code"])
            self.metrics.requests.labels(endpoint, code).inc()
            self.metrics.latency.labels(endpoint, code).observe(time.perf_counter() - started)


async def _send_json(send: Callable, status: int, payload: dict) -> None:
    body = json.dumps(payload).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


class ScoringService:
    """What the endpoints call; also the in-process path the servability check and benchmarks time."""

    def __init__(self, settings: Settings, holder: ChampionHolder, metrics: Metrics,
                 prediction_log: PredictionLog | None = None) -> None:
        self.settings = settings
        self.holder = holder
        self.metrics = metrics
        self.reader = OnlineReader(settings)
        self.fetcher = FeatureFetcher(settings, self.reader)
        self.prediction_log = prediction_log

    def check_bounds(self, req: ScoreRequest) -> None:
        s = self.settings
        if len(req.items) > s.serving_max_items:
            raise HTTPException(422, f"at most {s.serving_max_items} items per request, got {len(req.items)}")
        longest = max([len(req.user_id), *map(len, req.items)])
        if longest > s.serving_max_id_length:
            raise HTTPException(422, f"ids must be at most {s.serving_max_id_length} characters")
        positions = req.context.positions
        if positions is not None and len(positions) != len(req.items):
            raise HTTPException(422, f"{len(positions)} positions for {len(req.items)} items")

    def score(self, req: ScoreRequest) -> ScoreResponse:
        self.check_bounds(req)
        model = self.holder.current  # one snapshot: the whole request is scored by one version
        if model is None:
            raise HTTPException(503, "no champion model loaded yet")
        ctx = req.context
        context = RequestContext(
            event_time_ms=ctx.event_time if ctx.event_time is not None else now_ms(), hour=ctx.hour,
            device=ctx.device, page=ctx.page, positions=tuple(ctx.positions) if ctx.positions else None,
        )
        started = time.perf_counter()
        try:
            features = self.fetcher.fetch(
                model.feature_service, req.user_id, req.items, context.event_time_ms
            )
        except OnlineReadError as exc:
            raise HTTPException(503, f"online feature store unavailable: {exc}") from exc
        read = time.perf_counter()
        scores = model.score(req.user_id, list(req.items), context, features).tolist()
        self.metrics.feature_read.observe(read - started)
        self.metrics.scoring.observe(time.perf_counter() - read)
        self.metrics.scored.labels(model.version).inc()
        request_id = req.request_id or uuid.uuid4().hex
        if self.prediction_log is not None:
            self.prediction_log.log(ServedRecord(
                request_id=request_id, user_id=req.user_id, items=tuple(req.items), scores=tuple(scores),
                model_version=model.version, event_time=context.event_time_ms, served_at=now_ms(),
                positions=context.positions, device=ctx.device, page=ctx.page,
                hour=utc_hour(context.event_time_ms) if ctx.hour is None else ctx.hour,
            ))
        return ScoreResponse(request_id=request_id, model_version=model.version, scores=scores)


def create_app(settings: Settings, bootstrap: str | None = None) -> FastAPI:
    """The service for ``settings``; ``bootstrap`` (Kafka host:port) enables the prediction log."""
    metrics = Metrics.create()
    if settings.serving_torch_threads:
        torch.set_num_threads(settings.serving_torch_threads)

    def on_reload(ok: bool, reason: str) -> None:
        if ok:
            metrics.reloads.inc()
            for sample in metrics.serving_version.collect()[0].samples:  # earlier versions drop to 0
                metrics.serving_version.labels(sample.labels["version"]).set(0)
            if holder.current is not None:
                metrics.serving_version.labels(holder.current.version).set(1)
        else:
            metrics.reload_failures.labels(reason).inc()

    holder = ChampionHolder(settings, on_reload)
    prediction_log = None
    if bootstrap is not None and settings.serving_prediction_log:
        prediction_log = PredictionLog(
            settings, bootstrap, lambda kind: metrics.log_events.labels(kind).inc()
        )
    service = ScoringService(settings, holder, metrics, prediction_log)

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        if prediction_log is not None:
            prediction_log.start()
        holder.start()
        try:
            yield
        finally:
            holder.stop()
            if prediction_log is not None:
                prediction_log.stop()
            service.reader.close()

    app = FastAPI(title="ctrflow serving stub", version="1", lifespan=lifespan)
    app.state.service = service

    @app.exception_handler(RequestValidationError)
    async def invalid_request(_: Request, exc: RequestValidationError) -> Response:
        # Without the echoed input (it may be megabytes, or text no encoder takes, e.g. lone surrogates),
        # and ASCII-escaped: field names come from the client too.
        errors = [{"loc": list(e.get("loc", ())), "msg": e.get("msg", ""), "type": e.get("type", "")}
                  for e in exc.errors()]
        body = json.dumps({"detail": errors}, ensure_ascii=True, default=str)
        return Response(body, 422, media_type="application/json")

    @app.post("/v1/score", response_model=ScoreResponse)
    def score(req: ScoreRequest) -> ScoreResponse:
        """Score every item for the user in one pass of the champion; scores in request order."""
        return service.score(req)

    @app.get("/healthz")
    def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/readyz")
    def readyz() -> JSONResponse:
        current = holder.current
        if current is None:
            return JSONResponse({"ready": False, "reason": holder.status.last_error or "no champion"}, 503)
        return JSONResponse({"ready": True, "model_version": current.version})

    @app.get("/v1/model")
    def model_info() -> dict[str, Any]:
        current = holder.current
        return {"serving": current.describe() if current else None, "reload": holder.status.to_dict()}

    @app.get("/metrics")
    def prometheus() -> Response:
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    app.add_middleware(GuardMiddleware, max_body=settings.serving_max_body_bytes, metrics=metrics)
    return app
