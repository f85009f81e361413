"""What more statistics horizons cost the feature job: one simulated log backfilled under the default
horizons (the reference, in the same run) and under a heavier set, in interleaved rounds.

    .venv/bin/python -m benchmarks.bench_horizons --events 1000000 --rounds 3
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import tempfile
from datetime import UTC, datetime
from pathlib import Path

from benchmarks.bench_features import simulated_log
from benchmarks.machine import machine
from pipelines.beam.job import JobConfig, run_file
from pipelines.settings import Settings

RESULTS = Path(__file__).parent / "results" / "horizons.md"
DEFAULT = ("1h,24h,7d", "30d")
HEAVY = ("15m,1h,6h,24h,3d,7d", "30d,90d,365d")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=1_000_000, help="Impressions in the log.")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--heavy-windows", default=HEAVY[0])
    parser.add_argument("--heavy-decayed", default=HEAVY[1])
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    sets = {"default": DEFAULT, "heavy": (args.heavy_windows, args.heavy_decayed)}
    rates: dict[str, list[float]] = {name: [] for name in sets}
    work = Path(tempfile.mkdtemp(prefix="ctrflow-bench-horizons-"))
    try:
        log = simulated_log(work / "log.parquet", args.events, days=7)
        for i in range(args.rounds):
            for name, (windows, decayed) in sets.items():
                home = work / f"{name}-{i}"
                settings = Settings(home=home, stat_windows=windows, stat_decayed_windows=decayed)
                report = run_file(settings, log, config=JobConfig())
                rates[name].append(report.consumed / report.seconds)
                print(f"round {i + 1} {name}: {rates[name][-1]:,.0f} events/s", flush=True)
                shutil.rmtree(home, ignore_errors=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    median = {name: statistics.median(values) for name, values in rates.items()}
    lines = [
        "# Feature job: the cost of more statistics horizons", "",
        f"- command: `.venv/bin/python -m benchmarks.bench_horizons --events {args.events} "
        f"--rounds {args.rounds}`",
        f"- machine: {machine()}; date: {datetime.now(UTC):%Y-%m-%d %H:%M} UTC (another benchmark may "
        "share the cores: compare the two rows of one run)",
        "- what: one simulated log (7 days) backfilled by `run_file` with JobConfig defaults, the two "
        "horizon sets in turn each round; median of the rounds", "",
        "| horizons | sliding | decayed | statistics columns per table | events/s | vs default |",
        "|---|---|---|---:|---:|---:|",
    ]
    for name, (windows, decayed) in sets.items():
        columns = 3 * len(Settings(stat_windows=windows, stat_decayed_windows=decayed).horizons.suffixes)
        lines.append(f"| {name} | {windows} | {decayed} | {columns} | {median[name]:,.0f} "
                     f"| {median[name] / median['default']:.2f}x |")
    text = "\n".join(lines) + "\n"
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
