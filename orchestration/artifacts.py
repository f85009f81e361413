"""What a continual-training cycle shows a person in the Prefect UI: three artifacts per cycle.

- ``ctrflow-cycle-metrics``: the new version's holdout metrics, one row per model (Markdown);
- ``ctrflow-cycle-gate``: the promotion gate's verdict, PASS or FAIL, with every blessing's numbers,
  thresholds and reasons, as the registry recorded them (Markdown);
- ``ctrflow-cycle-report``: a link to the run report (``report.html`` with its plots, ``file://``: the
  report is on the machine that trained; a browser may refuse to open it from the UI's page, the text of
  the link is the path to open instead).

The keys are fixed, so the UI's Artifacts page keeps one history per key across runs (the newest cycle
first); each artifact also belongs to its flow run. Everything is rendered from the registry's record of
the version, so the UI shows what the registry decided, not a second account of it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from uuid import UUID

from training.gate import GateRecord
from training.registry import VersionRecord
from training.report import metrics_table

METRICS_KEY = "ctrflow-cycle-metrics"
GATE_KEY = "ctrflow-cycle-gate"
REPORT_KEY = "ctrflow-cycle-report"


@dataclass(frozen=True)
class CycleArtifacts:
    metrics: UUID
    gate: UUID
    report: UUID


def metrics_markdown(record: VersionRecord) -> str:
    """Every model's holdout metrics (AUC, gAUC per user and per request, logloss, PCOC, ECE, ...)."""
    rows = {(f"{m.name} (served)" if m.served else m.name): {"family": m.family, "metrics": m.metrics}
            for m in record.models}
    held_out = record.holdout
    where = (f"holdout: {held_out.dataset or '-'} ({held_out.rows} rows, {held_out.part})"
             if held_out else "holdout: not recorded")
    return "\n".join([
        f"# Version {record.version}: holdout metrics", "",
        f"trained on {record.train.dataset or '-'} ({record.train.rows} rows); {where}; "
        f"parent: {record.parent or 'none'}", "",
        metrics_table(rows), "",
    ])


def _value(value: Any) -> str:
    if isinstance(value, bool) or value is None:
        return {True: "yes", False: "no", None: "-"}[value]
    if isinstance(value, float):
        # Metrics to four places, as everywhere; a tiny difference (servability's score gap) stays visible.
        return f"{value:.4f}" if value == 0 or 1e-3 <= abs(value) < 1e6 else f"{value:.3e}"
    if isinstance(value, list | tuple):
        return ", ".join(_value(v) for v in value) or "-"
    return str(value).replace("|", "\\|")


def _flatten(numbers: Mapping[str, Any], prefix: str = "") -> list[tuple[str, str]]:
    """Nested numbers as ``a.b.c`` rows (a slice's challenger AUC: ``slices.new.challenger.auc``)."""
    rows = []
    for key, value in numbers.items():
        if isinstance(value, Mapping) and value:
            rows += _flatten(value, f"{prefix}{key}.")
        else:
            rows.append((f"{prefix}{key}", _value(value)))
    return rows


def _table(header: str, rows: list[tuple[str, str]]) -> list[str]:
    return [f"| {header} | value |", "|---|---|", *(f"| {k} | {v} |" for k, v in rows), ""]


def gate_markdown(version: str, gate: GateRecord | None, status: str) -> str:
    """The gate's verdict with each blessing's numbers, thresholds and reasons; ``status`` is the
    registry's status of the version after the gate (champion, rejected, ...)."""
    if gate is None:
        return f"# Gate of {version}: no gate record\n\nregistry status: {status}\n"
    verdict = "PASS" if gate.passed else "FAIL"
    lines = [f"# Gate of {version} against {gate.against or 'no champion'}: {verdict}", "",
             f"registry status: **{status}**; judged at {gate.at}", ""]
    for blessing in gate.blessings:
        lines += [f"## {blessing.name}: {'PASS' if blessing.passed else 'FAIL'}", ""]
        lines += [f"- {reason}" for reason in blessing.reasons] + ([""] if blessing.reasons else [])
        if blessing.numbers:
            lines += _table("number", _flatten(blessing.numbers))
        if blessing.thresholds:
            lines += _table("threshold", _flatten(blessing.thresholds))
    return "\n".join(lines)


def publish_cycle(record: VersionRecord, run_dir: Path) -> CycleArtifacts:
    """Create the cycle's three artifacts in the current Prefect flow (or task) run."""
    from prefect.artifacts import create_link_artifact, create_markdown_artifact

    gate = record.gate
    verdict = "no gate record" if gate is None else ("PASS" if gate.passed else "FAIL")
    report = run_dir / "report.html"
    return CycleArtifacts(
        metrics=create_markdown_artifact(metrics_markdown(record), key=METRICS_KEY,
                                         description=f"holdout metrics of version {record.version}"),
        gate=create_markdown_artifact(gate_markdown(record.version, gate, record.status), key=GATE_KEY,
                                      description=f"promotion gate of version {record.version}: {verdict}"),
        report=create_link_artifact(report.resolve().as_uri(), link_text=str(report), key=REPORT_KEY,
                                    description=f"run report of version {record.version}"),
    )
