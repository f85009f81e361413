"""The servability check the promotion gate is given, looked up where the serving code is reachable.

training never imports serving_stub (it sits above it); orchestration does, lazily, so a missing serving
package makes the servability blessing an explicit FAIL ("not checked") instead of an import error.
"""

from __future__ import annotations

from collections.abc import Callable

from training.gate import ServabilityCheck


def servability_check(warn: Callable[[str], None] | None = None) -> ServabilityCheck | None:
    """``serving_stub.servability.check_servability``; None (said to ``warn``) when it cannot be imported."""
    try:
        from serving_stub.servability import check_servability
    except ImportError as exc:
        if warn is not None:
            warn(f"no servability check ({exc}): the servability blessing will FAIL")
        return None
    return check_servability
