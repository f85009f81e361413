"""The gate record as a person reads it in the Prefect UI (the flow tests publish and read back real ones)."""

from __future__ import annotations

from orchestration.artifacts import gate_markdown
from training.gate import Blessing, GateRecord


def test_gate_markdown_shows_the_verdict_and_every_number_of_every_blessing() -> None:
    quality = Blessing(
        "quality", False,
        numbers={"rows": 800, "challenger": {"auc": 0.51234, "pcoc": 1.31}, "slices": {"new": {
            "rows": 40, "gated": False}}, "model": "student_0", "note": "a|b"},
        thresholds={"auc_tolerance": 0.002, "pcoc_low": 0.8},
        reasons=("PCOC 1.3100 outside [0.8, 1.25]",),
    )
    record = GateRecord("v2", "v1", "2026-01-01T00:00:00+00:00", (
        Blessing("data", True, {"dataset": "ds-1", "failed": 0}), quality,
        Blessing("servability", True, {"max_abs_diff": 1e-7})))
    text = gate_markdown("v2", record, "rejected")
    lines = text.splitlines()

    assert lines[0] == "# Gate of v2 against v1: FAIL"
    assert "registry status: **rejected**; judged at 2026-01-01T00:00:00+00:00" in lines
    for heading in ("## data: PASS", "## quality: FAIL", "## servability: PASS"):
        assert heading in lines
    for row in ("| rows | 800 |", "| challenger.auc | 0.5123 |", "| challenger.pcoc | 1.3100 |",
                "| slices.new.rows | 40 |", "| slices.new.gated | no |", "| model | student_0 |",
                "| note | a\\|b |",  # a pipe in a value does not break the table
                "| auc_tolerance | 0.0020 |", "| dataset | ds-1 |", "| max_abs_diff | 1.000e-07 |"):
        assert row in lines, row
    assert "- PCOC 1.3100 outside [0.8, 1.25]" in lines
    # Each blessing's rows sit under its own heading.
    assert lines.index("## quality: FAIL") < lines.index("| challenger.auc | 0.5123 |") < lines.index(
        "## servability: PASS")

    passed = GateRecord("v1", None, "2026-01-01T00:00:00+00:00",
                        tuple(Blessing(n, True) for n in ("data", "quality", "servability")))
    assert gate_markdown("v1", passed, "champion").splitlines()[0] == "# Gate of v1 against no champion: PASS"
    assert gate_markdown("v3", None, "candidate").startswith("# Gate of v3: no gate record")
