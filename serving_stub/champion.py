"""The served model and its hot reload from the champion pointer file.

``load_serving_model`` is the one way serving gets a model: the version's artifact loaded from disk
(safetensors + config, ``training.artifacts``) and smoke-scored on a cold-start request; a model whose
scores are not finite probabilities is refused. ``ChampionHolder`` polls the pointer file (never the
registry's DuckDB file) every ``reload_interval_s``, loads a changed champion in the background and
swaps it in with one reference assignment; any failure keeps the old model and is reported.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import numpy as np
import torch

from features.feature_repo.definitions import serving_feature_names
from pipelines.settings import Settings
from pipelines.tables import StatHorizons
from serving_stub.scoring import (
    RequestContext,
    cold_start_features,
    encode_request,
    now_ms,
    probabilities,
    service_of,
)
from training.artifacts import load_model, version_dir
from training.gate import GATE_RECORD_FILE
from training.inputs import InputSchema
from training.registry import ChampionPointer, read_champion_pointer

_LOG = logging.getLogger(__name__)
SMOKE_ITEMS = 8


class ModelRefused(RuntimeError):
    """A model version that cannot serve; ``kind`` is ``artifact`` (cannot be loaded) or ``smoke``
    (loads, but its scores are not finite probabilities or scoring fails)."""

    def __init__(self, message: str, kind: str) -> None:
        super().__init__(message)
        self.kind = kind


@dataclass(frozen=True)
class ServingModel:
    version: str
    name: str
    family: str
    model: torch.nn.Module
    schema: InputSchema
    feature_service: str
    gate: Any
    loaded_at: str
    horizons: StatHorizons  # the home's: the types of the statistics features it is given


    def score(self, user_id: str, items: list[str], context: RequestContext,
              features: dict[str, list]) -> np.ndarray:
        batch = encode_request(self.schema, user_id, items, context, features, self.horizons)
        return probabilities(self.model, batch, one_request=True)

    def describe(self) -> dict[str, Any]:
        return {"version": self.version, "model": self.name, "family": self.family,
                "feature_service": self.feature_service, "loaded_at": self.loaded_at, "gate": self.gate}


def read_gate_record(settings: Settings, version: str) -> Any:
    """The gate's record from the version folder (JSON as written), or None when there is none."""
    path = settings.registry_dir / version / GATE_RECORD_FILE
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        return {"unreadable": str(exc)}


def smoke_score(model: ServingModel) -> None:
    """Score a cold-start request (no features anywhere): every score must be a finite probability."""
    items = [f"__smoke_item_{k}" for k in range(SMOKE_ITEMS)]
    features = cold_start_features(model.feature_service, len(items), model.horizons)
    scores = model.score("__smoke_user", items, RequestContext(now_ms()), features)
    finite = np.isfinite(scores).all()
    if scores.shape != (len(items),) or not finite or (scores < 0).any() or (scores > 1).any():
        raise ModelRefused(f"{model.version}/{model.name} refused: smoke scoring gave non-finite or "
                           f"out-of-range scores: {scores.tolist()}", "smoke")


def load_serving_model(settings: Settings, version: str, name: str | None = None) -> ServingModel:
    """Load ``version``'s model ``name`` (default: the one it marks to serve) and smoke-score it."""
    try:
        version_dir(settings, version)
        model, config = load_model(settings, version, name)
        schema = model.schema
    except Exception as exc:  # any broken artifact (missing, truncated, mismatched) is one refusal
        raise ModelRefused(f"cannot load {version}/{name or 'serve'}: {type(exc).__name__}: {exc}",
                           "artifact") from exc
    name = name or config.serve
    _check_features(settings, version, name, schema)
    served = ServingModel(
        version=version, name=name, family=config.models[name].family, model=model, schema=schema,
        feature_service=service_of(schema), gate=read_gate_record(settings, version),
        loaded_at=datetime.now(UTC).isoformat(), horizons=settings.horizons,
    )
    try:
        smoke_score(served)
    except ModelRefused:
        raise
    except Exception as exc:
        raise ModelRefused(f"smoke scoring of {version}/{name} failed: {type(exc).__name__}: {exc}",
                           "smoke") from exc
    return served


def _check_features(settings: Settings, version: str, name: str, schema: InputSchema) -> None:
    """Refuse a model that reads feature columns this home does not serve, e.g. statistics over other
    horizons than ``CTRFLOW_STAT_WINDOWS`` / ``_DECAYED_WINDOWS`` name: every request would lack them."""
    served = set(serving_feature_names(service_of(schema), settings.horizons))
    wanted = [*schema.dense, schema.seq_item_ids, schema.seq_category_ids, schema.seq_event_times]
    missing = [c for c in wanted if "__" in c and c not in served]
    if missing:
        raise ModelRefused(
            f"{version}/{name} refused: it reads {len(missing)} feature(s) this home does not serve "
            f"(e.g. {', '.join(missing[:3])}); the statistics horizons here are "
            f"{','.join(settings.horizons.suffixes)}: set CTRFLOW_STAT_WINDOWS / "
            "CTRFLOW_STAT_DECAYED_WINDOWS to those it was trained with", "artifact")


@dataclass
class ReloadStatus:
    pointer: dict[str, Any] | None = None
    last_check: str | None = None
    last_error: str | None = None
    last_error_at: str | None = None
    reloads: int = 0
    failures: int = 0
    history: list[dict[str, Any]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in ("pointer", "last_check", "last_error", "last_error_at",
                                               "reloads", "failures")} | {"history": self.history[-10:]}


class ChampionHolder:
    """The current champion, replaced atomically by a background poller of the pointer file."""

    def __init__(self, settings: Settings, on_reload: Callable[[bool, str], None] | None = None) -> None:
        self.settings = settings
        self.current: ServingModel | None = None
        self.status = ReloadStatus()
        self._on_reload = on_reload or (lambda ok, why: None)
        self._tried: ChampionPointer | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def check(self) -> None:
        """One poll: load and swap in a changed champion, or record why not."""
        now = datetime.now(UTC).isoformat()
        self.status.last_check = now
        try:
            pointer = read_champion_pointer(self.settings)
        except Exception as exc:  # a half-edited or foreign file: keep serving, say why (once per cause)
            reason = f"champion pointer unreadable: {type(exc).__name__}: {exc}"
            if reason != self.status.last_error:
                self._fail(reason, None, "pointer")
            return
        self.status.pointer = None if pointer is None else json.loads(pointer.to_json())
        current = self.current
        if pointer is None or pointer == self._tried:
            return  # nothing promoted, or this pointer was already tried (it failed or serves)
        if current is not None and (current.version, current.name) == (pointer.version, pointer.model):
            self._tried = pointer
            return
        self._tried = pointer
        try:
            model = load_serving_model(self.settings, pointer.version, pointer.model)
        except ModelRefused as exc:
            self._fail(str(exc), pointer, exc.kind)
            return
        self.current = model  # one reference assignment: requests see the old or the new model, whole
        self.status.reloads += 1
        self.status.history.append({"at": now, "version": pointer.version, "model": pointer.model,
                                    "ok": True})
        _LOG.info("serving %s/%s (was %s)", pointer.version, pointer.model,
                  current.version if current else "nothing")
        self._on_reload(True, "")

    def _fail(self, reason: str, pointer: ChampionPointer | None, kind: str) -> None:
        self.status.failures += 1
        self.status.last_error = reason
        self.status.last_error_at = datetime.now(UTC).isoformat()
        self.status.history.append({"at": self.status.last_error_at, "ok": False, "reason": reason,
                                    "version": pointer.version if pointer else None})
        kept = self.current.version if self.current else "nothing"
        _LOG.error("champion reload refused (still serving %s): %s", kept, reason)
        self._on_reload(False, kind)

    def start(self) -> None:
        self.check()
        self._thread = threading.Thread(target=self._run, name="champion-reload", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self.settings.reload_interval_s):
            started = time.monotonic()
            try:
                self.check()
            except Exception:  # the poller must outlive any surprise; the next poll tries again
                _LOG.exception("champion poll failed after %.1fs", time.monotonic() - started)

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)

