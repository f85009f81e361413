"""The promotion gate: three blessings, each an explicit PASS/FAIL with the numbers it judged.

- ``data``: the version's training set passed the ``dataset`` Great Expectations suite;
- ``quality``: on the version's recorded holdout, the served model's scores are finite, its AUC beats the
  item-CTR, item-popularity and best single dense feature references, its PCOC is within
  ``[gate_pcoc_low, gate_pcoc_high]``; with a champion (scored on the same rows) its AUC and logloss do
  not regress beyond the tolerances, overall and on the new/light/heavy user slices;
- ``servability``: an injected ``ServabilityCheck`` (the serving code) says the artifact serves.

A missing threshold is an error, never a missing or implicit blessing: every check writes a record.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields
from datetime import UTC, datetime
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from pipelines.settings import Settings
from training import metrics
from training.artifacts import ArtifactError, VersionConfig, load_model
from training.inputs import InputSchema, encode
from training.references import ROLES, best_by_role, reference_aucs, reference_scores
from training.trainer import predict, select_device

GATE_FORMAT_VERSION = 1
GATE_RECORD_FILE = "gate.json"  # the newest gate record, also kept in the version's folder


@dataclass(frozen=True)
class Blessing:
    """One of the gate's three checks (``data``, ``quality``, ``servability``) with its evidence."""

    name: str
    passed: bool
    numbers: dict[str, Any] = field(default_factory=dict)
    thresholds: dict[str, Any] = field(default_factory=dict)
    reasons: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return asdict(self) | {"reasons": list(self.reasons)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Blessing:
        return cls(
            name=data["name"],
            passed=bool(data["passed"]),
            numbers=dict(data.get("numbers", {})),
            thresholds=dict(data.get("thresholds", {})),
            reasons=tuple(data.get("reasons", ())),
        )

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True, default=str)


DATA, QUALITY, SERVABILITY = "data", "quality", "servability"
BLESSINGS: tuple[str, ...] = (DATA, QUALITY, SERVABILITY)

# Given a version id, load it through the serving code and say whether it serves what offline scores.
ServabilityCheck = Callable[[Settings, str], Blessing]


class GateError(ValueError):
    """The gate cannot judge at all (a threshold is missing or inconsistent): an error, not a FAIL."""


@dataclass(frozen=True)
class GateThresholds:
    """The numbers the quality blessing judges against (``Settings.gate_*``)."""

    auc_tolerance: float
    logloss_tolerance: float
    pcoc_low: float
    pcoc_high: float
    min_slice_rows: int

    @classmethod
    def from_settings(cls, settings: Settings) -> GateThresholds:
        values = {f.name: getattr(settings, f"gate_{f.name}") for f in fields(cls)}
        missing = [f"gate_{k}" for k, v in values.items() if v is None]
        if missing:
            raise GateError(f"promotion gate threshold(s) not set: {', '.join(missing)}")
        if not values["pcoc_low"] < 1.0 < values["pcoc_high"]:
            raise GateError(
                f"gate_pcoc_low {values['pcoc_low']} and gate_pcoc_high {values['pcoc_high']} must enclose 1"
            )
        return cls(**values)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class GateRecord:
    """One gate run of ``version`` against ``against`` (the champion then; None = first champion)."""

    version: str
    against: str | None
    at: str
    blessings: tuple[Blessing, ...]
    format: int = GATE_FORMAT_VERSION

    @property
    def passed(self) -> bool:
        names = tuple(b.name for b in self.blessings)
        return names == BLESSINGS and all(b.passed for b in self.blessings)

    def blessing(self, name: str) -> Blessing:
        return next(b for b in self.blessings if b.name == name)

    def failures(self) -> list[str]:
        """``<blessing>: <reason>`` for every failed blessing."""
        return [f"{b.name}: {r}" for b in self.blessings if not b.passed for r in (b.reasons or ("failed",))]

    def to_dict(self) -> dict[str, Any]:
        return {"format": self.format, "version": self.version, "against": self.against, "at": self.at,
                "passed": self.passed, "blessings": [b.to_dict() for b in self.blessings]}

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True, default=str)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> GateRecord:
        if data.get("format") != GATE_FORMAT_VERSION:
            raise ValueError(f"gate record format {data.get('format')!r} != {GATE_FORMAT_VERSION}")
        return cls(version=data["version"], against=data.get("against"), at=data["at"],
                   blessings=tuple(Blessing.from_dict(b) for b in data["blessings"]))

    @classmethod
    def from_json(cls, text: str) -> GateRecord:
        return cls.from_dict(json.loads(text))


# --- the three blessings -----------------------------------------------------------------------------


def data_blessing(settings: Settings, config: VersionConfig) -> Blessing:
    """PASS when the version's training set passed the ``dataset`` suite (Great Expectations).

    The result is kept under ``runs/gate-<dataset>/validation/`` and reused for later versions trained
    on the same set (its name carries its content hash).
    """
    from features.datasets import DatasetError
    from features.validation import ValidationInputError, validate_dataset

    name = config.train.dataset
    if name is None:
        return Blessing(DATA, False, reasons=("the training rows were not recorded by training-set name",))
    results = settings.runs_dir / f"gate-{name}" / "validation" / "dataset-results.json"
    reused = results.is_file()
    try:
        if reused:
            saved = json.loads(results.read_text())
            success, failed = bool(saved["success"]), [f["message"] for f in saved.get("failed", [])]
        else:
            report = validate_dataset(settings, name, run=f"gate-{name}")
            success, failed = report.success, [f.message for f in report.failed]
    except (DatasetError, ValidationInputError, OSError, KeyError, ValueError) as exc:
        return Blessing(DATA, False, {"dataset": name}, reasons=(f"training set cannot be validated: {exc}",))
    numbers = {"dataset": name, "suite": "dataset", "success": success, "failed": len(failed),
               "results_path": str(results), "reused": reused}
    return Blessing(DATA, success, numbers, reasons=tuple(f"expectation failed: {m}" for m in failed))


def _score(settings: Settings, version: str, name: str | None, table: pa.Table) -> np.ndarray:
    model, config = load_model(settings, version, name)
    batch = encode(table, InputSchema.from_dict(config.input_schema))
    device = select_device("auto")
    return predict(model.to(device), batch, device).astype(np.float64)


def _metrics(labels: np.ndarray, probs: np.ndarray) -> dict[str, float]:
    return {"auc": metrics.auc(labels, probs), "logloss": metrics.logloss(labels, probs),
            "pcoc": metrics.pcoc(labels, probs)}


def _activity_slices(train: pa.Table, holdout: pa.Table, user: str) -> tuple[dict[str, np.ndarray], float]:
    """Row masks of the holdout by the user's impressions in the training rows, and their median."""
    counts = pc.value_counts(train.column(user).combine_chunks().cast(pa.string()))
    users, per_user = counts.field("values"), np.asarray(counts.field("counts").to_numpy(), np.int64)
    median = float(np.median(per_user)) if len(per_user) else 0.0
    index = pc.index_in(holdout.column(user).combine_chunks().cast(pa.string()), value_set=users)
    seen = np.asarray(index.is_valid().to_numpy(zero_copy_only=False), dtype=bool)
    n = np.zeros(holdout.num_rows, np.int64)
    n[seen] = per_user[np.asarray(index.drop_null().to_numpy(), np.int64)]
    return {"new": ~seen, "light": seen & (n < median), "heavy": seen & (n >= median)}, median


def _regressions(challenger: dict[str, float], champion: dict[str, float], t: GateThresholds,
                 where: str) -> list[str]:
    out = []
    if challenger["auc"] < champion["auc"] - t.auc_tolerance:
        out.append(f"{where}: AUC {challenger['auc']:.4f} < champion {champion['auc']:.4f} - "
                   f"{t.auc_tolerance}")
    if challenger["logloss"] > champion["logloss"] + t.logloss_tolerance:
        out.append(f"{where}: logloss {challenger['logloss']:.4f} > champion {champion['logloss']:.4f} + "
                   f"{t.logloss_tolerance}")
    return out


def quality_blessing(settings: Settings, config: VersionConfig, champion: VersionConfig | None,
                     thresholds: GateThresholds) -> Blessing:
    """Floors for every challenger, non-regression against the champion; all on the version's holdout."""
    from features.datasets import DatasetError
    from training.cycle import load_slice, recorded_holdout

    limits = thresholds.to_dict()

    def fail(reason: str, numbers: dict[str, Any] | None = None) -> Blessing:
        return Blessing(QUALITY, False, numbers or {}, limits, (reason,))

    try:
        holdout, train = recorded_holdout(settings, config), load_slice(settings, config.train)
    except (ArtifactError, DatasetError) as exc:
        return fail(f"holdout unavailable: {exc}")
    schema = InputSchema.from_dict(config.input_schema)
    labels = np.asarray(holdout.column(schema.label).cast(pa.float64()).to_numpy(), np.float64)
    numbers: dict[str, Any] = {"holdout": config.holdout.to_dict(), "rows": len(labels),
                               "clicks": int(labels.sum()), "model": config.serve}
    try:
        probs = _score(settings, config.version, config.serve, holdout)
    except (ArtifactError, RuntimeError, ValueError) as exc:
        return fail(f"challenger cannot be scored: {exc}", numbers)
    bad = int((~np.isfinite(probs)).sum())
    numbers["non_finite_scores"] = bad
    if bad:
        return fail(f"{bad} of {len(probs)} challenger scores are not finite", numbers)
    ours = numbers["challenger"] = _metrics(labels, probs)
    if not np.isfinite(ours["auc"]):
        return fail("the holdout has only one class: AUC is undefined", numbers)

    reasons: list[str] = []
    refs = reference_aucs(labels, reference_scores(holdout, schema))
    numbers["references"] = refs
    floors: dict[str, dict[str, Any]] = {}
    best = best_by_role(refs)
    for role in ROLES:
        if role not in best:
            reasons.append(f"no {role} reference column in the holdout: the floor cannot be checked")
            continue
        name = best[role]
        floors[role] = {"name": name, "auc": refs[name]}
        if not ours["auc"] > refs[name]:
            reasons.append(f"AUC {ours['auc']:.4f} not above the {name} reference {refs[name]:.4f}")
    numbers["floors"] = floors
    if not thresholds.pcoc_low <= ours["pcoc"] <= thresholds.pcoc_high:
        reasons.append(f"PCOC {ours['pcoc']:.4f} outside [{thresholds.pcoc_low}, {thresholds.pcoc_high}]")

    if champion is not None:
        try:
            theirs_probs = _score(settings, champion.version, champion.serve, holdout)
        except (ArtifactError, RuntimeError, ValueError) as exc:
            reasons.append(f"champion {champion.version} cannot be scored on this holdout: {exc}")
        else:
            theirs = numbers["champion"] = _metrics(labels, theirs_probs) | {"version": champion.version}
            reasons += _regressions(ours, theirs, thresholds, "overall")
            masks, median = _activity_slices(train, holdout, schema.user)
            numbers["train_median_impressions_per_user"] = median
            slices = numbers["slices"] = {}
            for name, mask in masks.items():
                rows, clicks = int(mask.sum()), int(labels[mask].sum())
                entry: dict[str, Any] = {"rows": rows, "clicks": clicks}
                entry["gated"] = rows >= thresholds.min_slice_rows and 0 < clicks < rows
                if entry["gated"]:
                    entry["challenger"] = _metrics(labels[mask], probs[mask])
                    entry["champion"] = _metrics(labels[mask], theirs_probs[mask])
                    reasons += _regressions(
                        entry["challenger"], entry["champion"], thresholds, f"{name} users"
                    )
                slices[name] = entry
    return Blessing(QUALITY, not reasons, numbers, limits, tuple(reasons))


def servability_blessing(settings: Settings, version: str, check: ServabilityCheck | None) -> Blessing:
    """The injected check's verdict; no check is an explicit FAIL ("not checked"), never a pass."""
    if check is None:
        return Blessing(SERVABILITY, False, reasons=("not checked",))
    try:
        blessing = check(settings, version)
    except Exception as exc:  # noqa: BLE001 -- any failure of the serving path is a FAIL, with its reason
        return Blessing(SERVABILITY, False, reasons=(f"check raised {type(exc).__name__}: {exc}",))
    if not isinstance(blessing, Blessing) or blessing.name != SERVABILITY:
        reason = f"check returned {blessing!r}, not a servability Blessing"
        return Blessing(SERVABILITY, False, reasons=(reason,))
    return blessing


def run_gate(settings: Settings, config: VersionConfig, champion: VersionConfig | None,
             servability: ServabilityCheck | None = None) -> GateRecord:
    """All three blessings of ``config`` against ``champion``; a missing threshold raises GateError first."""
    thresholds = GateThresholds.from_settings(settings)
    blessings = (
        data_blessing(settings, config),
        quality_blessing(settings, config, champion, thresholds),
        servability_blessing(settings, config.version, servability),
    )
    return GateRecord(version=config.version, against=champion.version if champion else None,
                      at=datetime.now(UTC).isoformat(), blessings=blessings)
