"""Continual training over daily cycles: warm start vs retrain from scratch vs a frozen model.

Day 0 trains the first cohort (teacher + 2 LightSUAN students, online distillation + mutual learning).
Each cycle c = 1..N then trains on day c and is evaluated progressively on day c+1:

- warm start: every model starts from the previous cycle's version (one pass over day c);
- scratch (newest day): a fresh cohort trained on day c only (same compute as the warm start);
- scratch (all days): a fresh cohort trained on days 0..c (more compute: the "retrain everything" arm);
- frozen: the day-0 cohort, never updated.

    .venv/bin/python -m benchmarks.bench_continual            # ~10-15 min on 2 busy CPU cores
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pyarrow as pa

from benchmarks.bench_quality import base_config, model_lines
from benchmarks.ctr_data import simulated_days
from benchmarks.machine import machine
from pipelines.settings import Settings
from training import artifacts
from training.cycle import evaluate_version, run_cycle

RESULTS = Path(__file__).parent / "results" / "continual.md"
STUDENTS = ("student_0", "student_1")


def _row(metrics: dict[str, dict[str, float]]) -> dict[str, float]:
    return {
        "student": statistics.mean(metrics[s]["auc"] for s in STUDENTS),
        "teacher": metrics["teacher"]["auc"],
        "oracle": metrics["teacher"].get("oracle_auc", float("nan")),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--cycles", type=int, default=4)
    parser.add_argument("--impressions-per-day", type=int, default=12_000)
    parser.add_argument("--users", type=int, default=3_000)
    parser.add_argument("--items", type=int, default=2_000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--cumulative", action=argparse.BooleanOptionalAction, default=True,
                        help="also retrain from scratch on all days so far")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    days = args.cycles + 2
    started = time.perf_counter()
    rows: dict[str, list[dict[str, float]]] = {"warm start": [], "scratch (newest day)": [], "frozen": []}
    if args.cumulative:
        rows["scratch (all days so far)"] = []
    with tempfile.TemporaryDirectory(prefix="ctrflow-bench-continual-") as tmp:
        settings = Settings(home=Path(tmp) / "home")
        split = simulated_days(settings, days, args.impressions_per_day * days, seed=12, users=args.users,
                               items=args.items)
        manifest = split.manifest
        print(f"data: {split.source}; rows per day {[t.num_rows for t in split.days]}", flush=True)

        def cycle(table: pa.Table, holdout: pa.Table, parent: str | None, save: bool):
            t0 = time.perf_counter()
            res = run_cycle(settings, table, manifest, base_config(args.seed), holdout_table=holdout,
                            parent=parent, save=save, report=False, progress=False)
            print(f"  trained {table.num_rows} rows (parent {parent}) in {time.perf_counter() - t0:.0f}s: "
                  f"{_row(res.metrics)}", flush=True)
            return res

        day0 = cycle(split.days[0], split.days[1], None, save=True)
        frozen = warm = day0.version
        for c in range(1, args.cycles + 1):
            train, test = split.days[c], split.days[c + 1]
            print(f"cycle {c}: train day {c}, test day {c + 1}", flush=True)
            warm_res = cycle(train, test, warm, save=True)
            warm = warm_res.version
            rows["warm start"].append(_row(warm_res.metrics))
            rows["scratch (newest day)"].append(_row(cycle(train, test, None, save=False).metrics))
            if args.cumulative:
                everything = pa.concat_tables(split.days[: c + 1])
                rows["scratch (all days so far)"].append(_row(cycle(everything, test, None, False).metrics))
            rows["frozen"].append(_row(evaluate_version(settings, frozen, test)))
        lineage = [v.parent for v in artifacts.list_versions(settings)]
    text = render(rows, args, split.source, time.perf_counter() - started, lineage)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)
    print(text)
    return 0


def _table_row(name: str, values: list[float]) -> str:
    return f"| {name} | " + " | ".join(f"{v:.4f}" for v in values) + f" | {statistics.mean(values):.4f} |"


def _auc_table(title: str, rows, key: str, cycles: range, extra: dict[str, list[float]]) -> list[str]:
    """One markdown table: a strategy per row, the AUC of ``key`` per cycle and its mean."""
    lines = [
        "",
        f"## {title}",
        "",
        "| strategy | " + " | ".join(f"cycle {c}" for c in cycles) + " | mean |",
        "|---|" + "---|" * (len(cycles) + 1),
    ]
    lines += [_table_row(name, [r[key] for r in per_cycle]) for name, per_cycle in rows.items()]
    return lines + [_table_row(name, values) for name, values in extra.items()]


def render(rows, args, source: str, seconds: float, lineage: list[str | None]) -> str:
    date = subprocess.run(["date", "-u"], capture_output=True, text=True).stdout.strip()
    cycles = range(1, args.cycles + 1)
    oracle = [rows["warm start"][c - 1]["oracle"] for c in cycles]
    lines = [
        "# Continual training benchmark (daily cycles, progressive validation)",
        "",
        f"- command: `.venv/bin/python -m benchmarks.bench_continual {' '.join(sys.argv[1:])}`".rstrip(),
        f"- machine: {machine()} (shared with other work while it ran); date: {date}",
        f"- data: {source}",
        f"- one pass per cycle, online distillation + mutual learning, single seed ({args.seed}); total "
        f"{seconds / 60:.1f} min",
        *model_lines(kd_rampup_steps=0, light=False),
        "- each cycle c trains on day c and is evaluated on day c+1 (progressive); the reference is the "
        "oracle AUC of the true p_click on that day and the frozen day-0 model",
        f"- warm-start lineage recorded in the registry: {sum(p is not None for p in lineage)} versions "
        "with a parent",
    ]
    lines += _auc_table("Student AUC (mean of the 2 students) on the next day", rows, "student", cycles,
                        {"oracle": oracle})  # fmt: skip
    lines += _auc_table("Teacher AUC on the next day", rows, "teacher", cycles, {})
    warm = statistics.mean(r["student"] for r in rows["warm start"])
    scratch = statistics.mean(r["student"] for r in rows["scratch (newest day)"])
    frozen = statistics.mean(r["student"] for r in rows["frozen"])
    wins = sum(w["student"] > s["student"] for w, s in zip(rows["warm start"], rows["scratch (newest day)"],
                                                          strict=True))
    lines += [
        "",
        "## Reading",
        "",
        f"- warm start − scratch (same compute): {warm - scratch:+.4f} mean student AUC; warm start better "
        f"in {wins}/{len(rows['warm start'])} cycles",
        f"- warm start − frozen: {warm - frozen:+.4f} (what retraining on fresh days buys under drift)",
    ]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    raise SystemExit(main())
