"""Model registry: every version, its gate records, which version serves, and how that changes.

Two stores, one direction of truth:

- ``registry.duckdb`` (``settings.registry_dir``) holds the tables ``versions``, ``version_models`` and
  ``champion_history`` beside the version folders. Every use case opens it, writes in one transaction and
  closes it again, so another process is never locked out for longer than one short write.
- The champion pointer (``champion.json``) is a small JSON file replaced by atomic rename AFTER the DuckDB
  commit of every champion change. The serving stub polls it and never opens the registry's DuckDB file,
  so CLI writers are never locked out by a running server; ``verify`` says when the two disagree.

Statuses: ``candidate`` (registered, not refused), ``champion`` (the one served), ``rejected`` (failed its
gate, or rolled back), ``archived`` (a former champion that was replaced). One champion at a time: the
served role is the version's serving student.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import duckdb

from pipelines.locks import LockHeld, resource_lock
from pipelines.settings import Settings
from training import artifacts
from training.artifacts import ArtifactError, DataSlice, VersionConfig
from training.gate import GATE_RECORD_FILE, GateRecord, ServabilityCheck, run_gate

POINTER_FILE = "champion.json"
POINTER_FORMAT_VERSION = 1
REGISTRY_LOCK = "registry"  # pipelines.locks resource: one registry writer at a time


@dataclass(frozen=True)
class ChampionPointer:
    """What serving reads: the version to serve, its served model's name and when it was promoted."""

    version: str
    model: str
    promoted_at: str
    feature_service: str | None = None
    format: int = POINTER_FORMAT_VERSION

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> ChampionPointer:
        data = json.loads(text)
        if data.get("format") != POINTER_FORMAT_VERSION:
            raise ValueError(f"champion pointer format {data.get('format')!r} != {POINTER_FORMAT_VERSION}")
        return cls(**data)


def pointer_path(settings: Settings) -> Path:
    return settings.registry_dir / POINTER_FILE


def read_champion_pointer(settings: Settings) -> ChampionPointer | None:
    """The current champion, or None when nothing was ever promoted."""
    path = pointer_path(settings)
    if not path.is_file():
        return None
    return ChampionPointer.from_json(path.read_text())


def write_champion_pointer(settings: Settings, pointer: ChampionPointer | None) -> None:
    """Replace the pointer atomically (temp file + rename); None removes it (no champion)."""
    path = pointer_path(settings)
    path.parent.mkdir(parents=True, exist_ok=True)
    if pointer is None:
        path.unlink(missing_ok=True)
        return
    _replace_file(path, pointer.to_json() + "\n")


def _replace_file(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` atomically: a synced temp file beside it, then ``os.replace``, so a
    reader (the polling server) sees the old file or the new one, never half of one."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}-", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


# --- the DuckDB tables ---------------------------------------------------------------------------------

DB_FILE = "registry.duckdb"
LOCK_WAIT_S = 10.0

_SCHEMA = (
    """CREATE TABLE IF NOT EXISTS versions (
        version VARCHAR PRIMARY KEY,
        status VARCHAR NOT NULL,
        status_reason VARCHAR,
        created_at TIMESTAMP NOT NULL,
        registered_at TIMESTAMP NOT NULL,
        updated_at TIMESTAMP NOT NULL,
        parent VARCHAR,
        feature_service VARCHAR,
        serve_model VARCHAR,
        train_dataset VARCHAR,
        train_start TIMESTAMP,
        train_end TIMESTAMP,
        train_rows BIGINT,
        train_part VARCHAR,
        holdout_dataset VARCHAR,
        holdout_start TIMESTAMP,
        holdout_end TIMESTAMP,
        holdout_rows BIGINT,
        holdout_part VARCHAR,
        dataset_hash VARCHAR,
        metrics JSON,
        train_config JSON,
        gate_passed BOOLEAN,
        gated_against VARCHAR,
        gated_at TIMESTAMP,
        gate JSON
    )""",
    """CREATE TABLE IF NOT EXISTS version_models (
        version VARCHAR NOT NULL,
        name VARCHAR NOT NULL,
        role VARCHAR NOT NULL,
        family VARCHAR NOT NULL,
        served BOOLEAN NOT NULL,
        config JSON,
        metrics JSON,
        PRIMARY KEY (version, name)
    )""",
    """CREATE TABLE IF NOT EXISTS champion_history (
        seq BIGINT PRIMARY KEY,
        changed_at TIMESTAMP NOT NULL,
        action VARCHAR NOT NULL,
        version VARCHAR NOT NULL,
        model VARCHAR,
        previous VARCHAR,
        forced BOOLEAN NOT NULL,
        reason VARCHAR,
        gate JSON
    )""",
)


class RegistryError(RuntimeError):
    """A registry request that cannot be done (unknown version, no champion to roll back to, ...)."""


class PromotionRefused(RegistryError):
    """``promote`` without a PASS gate record against the current champion; ``gate`` says why."""

    def __init__(self, message: str, gate: GateRecord | None) -> None:
        super().__init__(message)
        self.gate = gate


def db_path(settings: Settings) -> Path:
    return settings.registry_dir / DB_FILE


@contextmanager
def _connect(settings: Settings) -> Iterator[duckdb.DuckDBPyConnection]:
    """A short-lived connection; waits (briefly) for another process's write instead of failing at once."""
    path = db_path(settings)
    path.parent.mkdir(parents=True, exist_ok=True)
    deadline = time.monotonic() + LOCK_WAIT_S
    while True:
        try:
            con = duckdb.connect(str(path))
            break
        except duckdb.IOException as exc:
            if "lock" not in str(exc).lower() or time.monotonic() > deadline:
                raise RegistryError(f"cannot open the model registry {path}: {exc}") from exc
            time.sleep(0.05)
    try:
        for statement in _SCHEMA:
            con.execute(statement)
        yield con
    finally:
        con.close()


@contextmanager
def _transaction(settings: Settings) -> Iterator[duckdb.DuckDBPyConnection]:
    """One write transaction under the registry's lock (an flock, so two processes never interleave a
    read-check-write such as promote's; freed by the kernel even on kill -9). A writer waits up to
    ``LOCK_WAIT_S`` for another's short transaction, then gets the holder's pid and command."""
    with ExitStack() as stack:
        deadline = time.monotonic() + LOCK_WAIT_S
        while True:
            try:
                stack.enter_context(resource_lock(settings, REGISTRY_LOCK))
                break
            except LockHeld:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)
        with _transaction_unlocked(settings) as con:
            yield con


@contextmanager
def _transaction_unlocked(settings: Settings) -> Iterator[duckdb.DuckDBPyConnection]:
    with _connect(settings) as con:
        con.execute("BEGIN TRANSACTION")
        try:
            yield con
        except BaseException:
            con.execute("ROLLBACK")
            raise
        con.execute("COMMIT")


def _now() -> datetime:
    return datetime.now(UTC).replace(tzinfo=None)


def _ts(iso: str | None) -> datetime | None:
    """ISO time -> naive UTC (the tables' TIMESTAMP columns are UTC)."""
    if iso is None:
        return None
    parsed = datetime.fromisoformat(iso)
    return parsed.astimezone(UTC).replace(tzinfo=None) if parsed.tzinfo else parsed


def _iso(ts: datetime | None) -> str | None:
    return None if ts is None else ts.replace(tzinfo=UTC).isoformat()


# --- typed records out ------------------------------------------------------------------------------


@dataclass(frozen=True)
class ModelEntry:
    name: str
    role: str
    family: str
    served: bool
    metrics: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class VersionRecord:
    """One row of ``versions`` with its models and latest gate record."""

    version: str
    status: str
    status_reason: str | None
    created_at: str
    registered_at: str
    updated_at: str
    parent: str | None
    feature_service: str | None
    serve_model: str | None
    train: DataSlice
    holdout: DataSlice | None
    metrics: dict[str, float]
    models: tuple[ModelEntry, ...]
    gate: GateRecord | None

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["gate"] = None if self.gate is None else self.gate.to_dict()
        return out


@dataclass(frozen=True)
class HistoryEntry:
    """One row of ``champion_history``: the champion after ``action`` and the one before it."""

    seq: int
    at: str
    action: str
    version: str
    model: str | None
    previous: str | None
    forced: bool
    reason: str | None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class PromotionReport:
    version: str
    previous: str | None
    forced: bool
    reason: str | None
    gate: GateRecord | None
    pointer: ChampionPointer

    def to_dict(self) -> dict[str, Any]:
        return {"version": self.version, "previous": self.previous, "forced": self.forced,
                "reason": self.reason, "gate": None if self.gate is None else self.gate.to_dict(),
                "pointer": asdict(self.pointer)}


@dataclass(frozen=True)
class RollbackReport:
    restored: str
    demoted: str
    reason: str | None
    pointer: ChampionPointer

    def to_dict(self) -> dict[str, Any]:
        return {"restored": self.restored, "demoted": self.demoted, "reason": self.reason,
                "pointer": asdict(self.pointer)}


@dataclass(frozen=True)
class Check:
    name: str
    ok: bool
    detail: str


@dataclass(frozen=True)
class VerifyReport:
    champion: str | None
    checks: tuple[Check, ...]

    @property
    def ok(self) -> bool:
        return all(c.ok for c in self.checks)

    def to_dict(self) -> dict[str, Any]:
        return {"champion": self.champion, "ok": self.ok, "checks": [asdict(c) for c in self.checks]}


_VERSION_COLUMNS = (
    "version, status, status_reason, created_at, registered_at, updated_at, parent, feature_service, "
    "serve_model, train_dataset, train_start, train_end, train_rows, train_part, holdout_dataset, "
    "holdout_start, holdout_end, holdout_rows, holdout_part, dataset_hash, metrics, gate"
)


def _slice(dataset: str | None, start: datetime | None, end: datetime | None, rows: int | None,
           part: str | None, digest: str | None) -> DataSlice:
    return DataSlice(dataset=dataset, rows=int(rows or 0), start=_iso(start), end=_iso(end),
                     part=part or "all", content_hash=digest)


def _record(con: duckdb.DuckDBPyConnection, row: tuple) -> VersionRecord:
    (version, status, reason, created, registered, updated, parent, service, serve, t_ds, t_start, t_end,
     t_rows, t_part, h_ds, h_start, h_end, h_rows, h_part, digest, metrics, gate) = row
    models = con.execute(
        "SELECT name, role, family, served, metrics FROM version_models WHERE version = ? ORDER BY name",
        [version],
    ).fetchall()
    return VersionRecord(
        version=version, status=status, status_reason=reason, created_at=_iso(created),
        registered_at=_iso(registered), updated_at=_iso(updated), parent=parent, feature_service=service,
        serve_model=serve, train=_slice(t_ds, t_start, t_end, t_rows, t_part, digest),
        holdout=None if h_part is None else _slice(h_ds, h_start, h_end, h_rows, h_part, None),
        metrics=json.loads(metrics) if metrics else {},
        models=tuple(ModelEntry(n, r, f, bool(s), json.loads(m) if m else {}) for n, r, f, s, m in models),
        gate=None if gate is None else GateRecord.from_json(gate),
    )


def _fetch(con: duckdb.DuckDBPyConnection, version: str) -> VersionRecord | None:
    row = con.execute(f"SELECT {_VERSION_COLUMNS} FROM versions WHERE version = ?", [version]).fetchone()
    return None if row is None else _record(con, row)


def _insert(con: duckdb.DuckDBPyConnection, config: VersionConfig) -> None:
    now = _now()
    served = config.served
    holdout = config.holdout
    con.execute(
        "INSERT INTO versions (version, status, created_at, registered_at, updated_at, parent, "
        "feature_service, serve_model, train_dataset, train_start, train_end, train_rows, train_part, "
        "holdout_dataset, holdout_start, holdout_end, holdout_rows, holdout_part, dataset_hash, metrics, "
        "train_config) VALUES (?, 'candidate', ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        [config.version, _ts(config.created), now, now, config.parent, config.feature_service, config.serve,
         config.train.dataset, _ts(config.train.start), _ts(config.train.end), config.train.rows,
         config.train.part, holdout.dataset if holdout else None, _ts(holdout.start) if holdout else None,
         _ts(holdout.end) if holdout else None, holdout.rows if holdout else None,
         holdout.part if holdout else None, config.train.content_hash,
         json.dumps(served.metrics if served else {}), json.dumps(config.train_config)],
    )
    for name, model in config.models.items():
        con.execute(
            "INSERT INTO version_models VALUES (?, ?, ?, ?, ?, ?, ?)",
            [config.version, name, model.role, model.family, name == config.serve, json.dumps(model.config),
             json.dumps(model.metrics)],
        )


def _ensure(con: duckdb.DuckDBPyConnection, settings: Settings, version: str) -> VersionRecord:
    """The version's row, registering a version folder saved before the registry existed."""
    record = _fetch(con, version)
    if record is None:
        try:
            _insert(con, artifacts.read_config(settings, version))
        except ArtifactError as exc:
            raise RegistryError(str(exc)) from exc
        record = _fetch(con, version)
    return record


def _set_status(con: duckdb.DuckDBPyConnection, version: str, status: str, reason: str | None) -> None:
    con.execute("UPDATE versions SET status = ?, status_reason = ?, updated_at = ? WHERE version = ?",
                [status, reason, _now(), version])


def _history(con: duckdb.DuckDBPyConnection) -> list[HistoryEntry]:
    rows = con.execute(
        "SELECT seq, changed_at, action, version, model, previous, forced, reason FROM champion_history "
        "ORDER BY seq"
    ).fetchall()
    return [HistoryEntry(seq, _iso(at), action, version, model, previous, bool(forced), reason)
            for seq, at, action, version, model, previous, forced, reason in rows]


def _champion_stack(entries: list[HistoryEntry]) -> list[str]:
    """Champions in force, oldest first: a promotion pushes, a rollback pops (the last is serving)."""
    stack: list[str] = []
    for entry in entries:
        if entry.action == "rollback":
            stack.pop()
        else:
            stack.append(entry.version)
    return stack


def _add_history(con: duckdb.DuckDBPyConnection, action: str, version: str, model: str | None,
                 previous: str | None, forced: bool, reason: str | None, gate: GateRecord | None) -> datetime:
    at = _now()
    seq = con.execute("SELECT coalesce(max(seq), 0) + 1 FROM champion_history").fetchone()[0]
    con.execute("INSERT INTO champion_history VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                [seq, at, action, version, model, previous, forced, reason,
                 None if gate is None else gate.to_json()])
    return at


def _pointer_for(con: duckdb.DuckDBPyConnection, version: str, at: datetime) -> ChampionPointer:
    serve, service = con.execute(
        "SELECT serve_model, feature_service FROM versions WHERE version = ?", [version]
    ).fetchone()
    if serve is None:
        raise RegistryError(f"version {version} marks no model to serve")
    return ChampionPointer(version=version, model=serve, promoted_at=_iso(at), feature_service=service)


# --- use cases ----------------------------------------------------------------------------------------


def register_version(settings: Settings, config: VersionConfig) -> VersionRecord:
    """Add a saved version as a ``candidate`` (idempotent: a registered version is returned unchanged)."""
    with _transaction(settings) as con:
        if _fetch(con, config.version) is None:
            _insert(con, config)
        return _fetch(con, config.version)


@dataclass(frozen=True)
class Listing:
    """Every registered version, oldest first, and the version folders that cannot be read (why)."""

    versions: tuple[VersionRecord, ...]
    unreadable: dict[str, str] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"versions": [v.to_dict() for v in self.versions], "unreadable": dict(self.unreadable)}


def list_registered(settings: Settings) -> Listing:
    """Every registered version; version folders not registered yet (saved before the registry) are
    registered first, and a folder that cannot be read is listed with the reason instead."""
    folders = sorted(p.parent.name for p in settings.registry_dir.glob("*/" + artifacts.CONFIG_FILE)
                     if not p.parent.name.startswith("."))
    unreadable: dict[str, str] = {}
    with _transaction(settings) as con:
        for version in folders:
            try:
                _ensure(con, settings, version)
            except RegistryError as exc:
                unreadable[version] = str(exc)
        rows = con.execute(f"SELECT {_VERSION_COLUMNS} FROM versions ORDER BY created_at, version").fetchall()
        return Listing(tuple(_record(con, row) for row in rows), unreadable)


def show_version(settings: Settings, version: str) -> VersionRecord:
    with _transaction(settings) as con:
        return _ensure(con, settings, version)


def current_champion(settings: Settings) -> str | None:
    """The champion as the registry records it (the pointer file follows it)."""
    with _connect(settings) as con:
        stack = _champion_stack(_history(con))
    return stack[-1] if stack else None


def mark_pruned(settings: Settings, versions: list[str]) -> None:
    """Versions whose files retention removed stay listed, ``archived`` with that reason."""
    if not versions or not db_path(settings).exists():
        return
    with _transaction(settings) as con:
        for version in versions:
            _set_status(con, version, "archived", "files removed by retention (ctrflow gc)")


def history(settings: Settings) -> tuple[HistoryEntry, ...]:
    with _connect(settings) as con:
        return tuple(_history(con))


def gate_version(settings: Settings, version: str,
                 servability: ServabilityCheck | None = None) -> GateRecord:
    """Run the gate on ``version`` against the current champion and record it; a FAIL rejects it.

    The scoring runs outside any DuckDB connection: only the recording is a (short) write.
    """
    with _transaction(settings) as con:
        _ensure(con, settings, version)
        stack = _champion_stack(_history(con))
    champion = stack[-1] if stack else None
    if champion == version:
        raise RegistryError(f"version {version} is the champion: there is nothing to gate it against")
    try:
        config = artifacts.read_config(settings, version)
        champion_config = artifacts.read_config(settings, champion) if champion else None
    except ArtifactError as exc:
        raise RegistryError(str(exc)) from exc
    record = run_gate(settings, config, champion_config, servability)
    with _transaction(settings) as con:
        con.execute(
            "UPDATE versions SET gate = ?, gate_passed = ?, gated_against = ?, gated_at = ?, updated_at = ? "
            "WHERE version = ?",
            [record.to_json(), record.passed, record.against, _ts(record.at), _now(), version],
        )
        if not record.passed:
            _set_status(con, version, "rejected", "; ".join(record.failures()))
        elif _fetch(con, version).status == "rejected":
            _set_status(con, version, "candidate", None)
    _write_gate_file(settings, version, record)
    return record


def _write_gate_file(settings: Settings, version: str, record: GateRecord) -> None:
    """The newest gate record beside the artifacts too: the serving stub shows it in ``/v1/model``
    without opening the registry's DuckDB file."""
    _replace_file(artifacts.version_dir(settings, version) / GATE_RECORD_FILE, record.to_json() + "\n")


def promote(settings: Settings, version: str, force: bool = False, reason: str | None = None,
            servability: ServabilityCheck | None = None) -> PromotionReport:
    """Make ``version`` the champion: only with a PASS gate record against the current champion (re-gated
    here when there is none, or when the champion changed since), or ``force`` with a recorded reason."""
    if force and not (reason and reason.strip()):
        raise RegistryError("--force needs a --reason: a forced promotion is recorded with why")
    with _transaction(settings) as con:
        record = _ensure(con, settings, version)
        stack = _champion_stack(_history(con))
    champion = stack[-1] if stack else None
    if champion == version:
        raise RegistryError(f"version {version} is already the champion")
    gate = record.gate
    if not force and (gate is None or gate.against != champion):
        gate = gate_version(settings, version, servability)
    if not force and not gate.passed:
        raise PromotionRefused(
            f"version {version} did not pass the gate against "
            f"{champion or 'no champion'}: {'; '.join(gate.failures())}",
            gate,
        )
    with _transaction(settings) as con:
        if _champion_stack(_history(con))[-1:] != ([champion] if champion else []):
            raise RegistryError("the champion changed while promoting; run promote again")
        at = _add_history(con, "promote", version, record.serve_model, champion, force,
                          reason.strip() if reason else None, gate)
        if champion:
            _set_status(con, champion, "archived", f"replaced by {version}")
        _set_status(con, version, "champion", f"forced: {reason.strip()}" if force else None)
        pointer = _pointer_for(con, version, at)
    write_champion_pointer(settings, pointer)
    return PromotionReport(version, champion, force, reason.strip() if reason else None, gate, pointer)


def rollback(settings: Settings, reason: str | None = None) -> RollbackReport:
    """Step one entry back in the champion history: the champion before the current one serves again,
    and the demoted one is marked ``rejected``."""
    with _transaction(settings) as con:
        stack = _champion_stack(_history(con))
        if len(stack) < 2:
            raise RegistryError(
                "no earlier champion to roll back to" if stack else "no champion: nothing was promoted yet"
            )
        demoted, restored = stack[-1], stack[-2]
        at = _add_history(con, "rollback", restored, _fetch(con, restored).serve_model, demoted, False,
                          reason, None)
        _set_status(con, demoted, "rejected", f"rolled back{': ' + reason if reason else ''}")
        _set_status(con, restored, "champion", f"restored by rollback from {demoted}")
        pointer = _pointer_for(con, restored, at)
    write_champion_pointer(settings, pointer)
    return RollbackReport(restored, demoted, reason, pointer)


def verify(settings: Settings) -> VerifyReport:
    """The champion's files exist and load, the pointer agrees with the registry, and its feature
    service resolves in the Feast registry and answers from the online store."""
    champion = current_champion(settings)
    checks: list[Check] = []
    try:
        pointer = read_champion_pointer(settings)
    except (ValueError, TypeError, OSError) as exc:
        pointer, detail = None, f"unreadable: {exc}"
    else:
        detail = f"names {pointer.version if pointer else 'nothing'}"
    checks.append(Check("pointer", (pointer.version if pointer else None) == champion,
                        f"{pointer_path(settings)} {detail}; the registry's champion is {champion}"))
    if champion is None:
        return VerifyReport(None, tuple(checks))
    try:
        model, config = artifacts.load_model(settings, champion)
        checks.append(Check("artifact", True, f"{config.serve} of {champion} loads "
                            f"({model.num_parameters(trainable_only=False):,} parameters)"))
    except (ArtifactError, RuntimeError, ValueError, OSError) as exc:
        checks.append(Check("artifact", False, str(exc)))
        return VerifyReport(champion, tuple(checks))
    checks.append(_feature_service_check(settings, config.feature_service))
    return VerifyReport(champion, tuple(checks))


def _feature_service_check(settings: Settings, service: str | None) -> Check:
    if service is None:
        return Check("feature_service", False, "the champion records no feature service")
    from features.online import online_features
    from features.services import SERVICE_VIEWS
    from features.store import feature_store

    try:
        # Registered already (apply=False: verifying must not be what registers it) ...
        feature_store(settings, apply=False).get_feature_service(service)
        # ... and the online store answers: an entity that never existed reads every view's table.
        online_features(settings, "__verify__", ["__verify__"], service)
    except Exception as exc:  # noqa: BLE001 -- Feast raises many types; any of them fails the check
        return Check("feature_service", False, f"{service}: {type(exc).__name__}: {exc}")
    return Check("feature_service", True,
                 f"{service} ({', '.join(SERVICE_VIEWS.get(service, ()))}) is registered and answers online")
