"""Run every benchmark in this folder in turn (`make bench`); each prints its own reference and ratio."""

from __future__ import annotations

import runpy
import sys
from pathlib import Path


def main() -> int:
    only = set(sys.argv[1:])
    scripts = sorted(Path(__file__).parent.glob("bench_*.py"))
    failed = []
    for script in scripts:
        if only and script.stem not in only:
            continue
        print(f"\n=== {script.stem} ===", flush=True)
        # Each script parses its own argv: give it none so it runs with its defaults.
        sys.argv = [str(script)]
        try:
            runpy.run_path(str(script), run_name="__main__")
        except SystemExit as exc:  # a script that ends itself (e.g. a missing reference) must not end the run
            if exc.code not in (None, 0):
                failed.append(script.stem)
    if failed:
        print(f"failed: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
