"""A tiny flow that test_schedules serves on an interval of a few seconds, in a process of its own
(``python tests/orchestration/tick_flow.py SECONDS``): the schedule, not the work, is under test."""

from __future__ import annotations

import sys
from datetime import timedelta

from prefect import flow, serve


@flow(name="ctrflow-test-tick")
def tick() -> int:
    return 1


if __name__ == "__main__":
    serve(tick.to_deployment(name="tick", interval=timedelta(seconds=float(sys.argv[1]))))
