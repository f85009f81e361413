"""Run every benchmark in this folder in turn (`make bench`); each prints its own reference and ratio."""

from __future__ import annotations

import runpy
import sys
from pathlib import Path


def main() -> int:
    only = set(sys.argv[1:])
    scripts = sorted(Path(__file__).parent.glob("bench_*.py"))
    for script in scripts:
        if only and script.stem not in only:
            continue
        print(f"\n=== {script.stem} ===", flush=True)
        # Each script parses its own argv: give it none so it runs with its defaults.
        sys.argv = [str(script)]
        runpy.run_path(str(script), run_name="__main__")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
