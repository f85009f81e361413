"""The promotion gate's records: each blessing is an explicit PASS/FAIL with the numbers it judged.

A missing threshold is an error, never a missing or implicit blessing: every check writes a record.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any

GATE_FORMAT_VERSION = 1


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
