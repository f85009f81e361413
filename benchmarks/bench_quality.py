"""Quality benchmark: baselines vs LightSUAN student alone / distilled / distilled + mutual vs teacher.

Trains on the first days of a simulated log with interest drift and tests on the last day, so every
number is progressive (future data). The oracle AUC of the simulator's true click probabilities on the
test day is the ceiling. Ablations: DeRes vs plain residual and loops vs none (teacher alone), KD on/off
(student), mutual learning when fine-tuning from a warm start vs from scratch. The `light` part repeats
KD on/off for a student much lighter than its long-sequence teacher (the regime distillation is for).

    .venv/bin/python -m benchmarks.bench_quality                 # defaults: ~10-15 min on 2 CPU cores
    .venv/bin/python -m benchmarks.bench_quality --part main --impressions 20000   # quick look
"""

from __future__ import annotations

import argparse
import functools
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pyarrow as pa
import torch

from benchmarks.ctr_data import DaySplit, simulated_days
from benchmarks.machine import machine
from pipelines.settings import Settings
from training.config import (
    BASELINE_KINDS,
    CPU_BASELINE,
    CPU_STUDENT,
    CPU_TEACHER,
    StudentConfig,
    TeacherConfig,
)
from training.cycle import run_cycle
from training.trainer import TrainConfig

RESULTS = Path(__file__).parent / "results" / "quality.md"

# Small enough for CPU: a few minutes per cohort pass over ~50k rows on 2 busy cores.
TEACHER, STUDENT, BASELINE = CPU_TEACHER, CPU_STUDENT, CPU_BASELINE
# The serving regime distillation is for: a student much lighter than its teacher (a third of its width,
# a fifth of its behaviour sequence), and a teacher that can afford the long sequence.
LIGHT_STUDENT = {"d_model": 16, "n_heads": 2, "seq_len": 10, "local_window": 4, "dilation": 4,
                 "d_embed": 16, "head_hidden": [32, 16]}
LONG_TEACHER = TEACHER | {"d_model": 48, "seq_len": 50}


def base_config(seed: int, **overrides: Any) -> TrainConfig:
    return TrainConfig.from_dict({
        "teacher_grade": "G1", "teacher": TEACHER, "students": 2, "student": STUDENT, "baseline": BASELINE,
        "batch_size": 128, "lr": 5e-3, "epochs": 1, "seed": seed, "device": "auto", "threads": 1,
        "lambda_kd": 1.0, "lambda_ml": 1.0, "temperature": 2.0,
    } | overrides)


ConfigMaker = Callable[..., TrainConfig]  # overrides -> the run's config (seed and objective bound)


def _auc(result, name: str) -> float:
    return result.metrics[name]["auc"]


def run_seed(
    settings: Settings, split: DaySplit, seed: int, part: str, kd_rampup_steps: int
) -> dict[str, float]:
    """AUC per table row for one seed (every arm trains on split.train, tests on split.test)."""
    make = functools.partial(base_config, seed, kd_rampup_steps=kd_rampup_steps)
    train, test, manifest = split.train, split.test, split.manifest

    def cycle(config: TrainConfig, table: pa.Table = train, parent: str | None = None, save: bool = False):
        t0 = time.perf_counter()
        res = run_cycle(settings, table, manifest, config, holdout_table=test, parent=parent, save=save,
                        report=False, progress=False)
        aucs = {n: round(m["auc"], 4) for n, m in res.metrics.items()}
        print(f"  seed {seed}: {aucs} in {time.perf_counter() - t0:.0f}s", flush=True)
        return res

    out: dict[str, float] = {}
    if part in ("main", "all"):
        out |= main_table(cycle, make)
    if part in ("ablations", "all"):
        out |= ablations(cycle, split, make)
    if part in ("light", "all"):
        out |= light_student_table(cycle, make)
    return out


def light_student_table(cycle, make: ConfigMaker) -> dict[str, float]:
    """KD on/off for a light student next to a teacher with 5x its sequence and 3x its width."""
    alone = cycle(make(teacher_grade=None, students=1, student=LIGHT_STUDENT))
    distilled = cycle(make(students=1, student=LIGHT_STUDENT, teacher=LONG_TEACHER))
    return {
        "oracle": alone.metrics["student_0"].get("oracle_auc", float("nan")),
        "light student alone (d=16, L=10)": _auc(alone, "student_0"),
        "light student distilled from a long-sequence teacher": _auc(distilled, "student_0"),
        "long-sequence teacher (d=48, L=50, in cohort)": _auc(distilled, "teacher"),
    }


def main_table(cycle, make: ConfigMaker) -> dict[str, float]:
    out: dict[str, float] = {}
    cohort = cycle(make(baselines=BASELINE_KINDS))
    for kind in BASELINE_KINDS:
        out[kind] = _auc(cohort, kind)
    out["teacher (in cohort)"] = _auc(cohort, "teacher")
    out["distilled + mutual student (mean of 2)"] = statistics.mean(
        _auc(cohort, s) for s in ("student_0", "student_1"))
    out["oracle"] = cohort.metrics["teacher"].get("oracle_auc", float("nan"))
    alone = cycle(make(teacher_grade=None, students=1))
    out["student alone"] = _auc(alone, "student_0")
    distilled = cycle(make(students=1))
    out["distilled student (KD, no peers)"] = _auc(distilled, "student_0")
    return out


def ablations(cycle, split: DaySplit, make: ConfigMaker) -> dict[str, float]:
    out: dict[str, float] = {}
    teacher_only = {"students": 0}
    reference = cycle(make(**teacher_only))
    out["oracle"] = reference.metrics["teacher"].get("oracle_auc", float("nan"))
    out["teacher alone: DeRes, loops 2"] = _auc(reference, "teacher")
    out["teacher alone: plain residual"] = _auc(
        cycle(make(**teacher_only, teacher=TEACHER | {"connector": "residual"})), "teacher")
    out["teacher alone: no loops"] = _auc(
        cycle(make(**teacher_only, teacher=TEACHER | {"loops": 0})), "teacher")

    # Mutual learning, paper-4 protocol: pre-train without peers, then fine-tune on the next day with
    # vs without the peer term; the from-scratch pair trains on the same rows in one go.
    pre, fine = split.pretrain, split.finetune
    parent = cycle(make(lambda_ml=0.0), table=pre, save=True).version
    for ml in (1.0, 0.0):
        res = cycle(make(lambda_ml=ml), table=fine, parent=parent)
        out[f"warm start, mutual {'on' if ml else 'off'} (student mean)"] = statistics.mean(
            _auc(res, s) for s in ("student_0", "student_1"))
    both = pa.concat_tables([pre, fine])
    for ml in (1.0, 0.0):
        res = cycle(make(lambda_ml=ml), table=both)
        out[f"scratch, mutual {'on' if ml else 'off'} (student mean)"] = statistics.mean(
            _auc(res, s) for s in ("student_0", "student_1"))
    return out


def _fmt(values: list[float]) -> str:
    if len(values) == 1:
        return f"{values[0]:.4f}"
    return f"{statistics.mean(values):.4f} ± {statistics.stdev(values):.4f}"


def model_lines(kd_rampup_steps: int, light: bool) -> list[str]:
    """What was trained, from the configs themselves (so the header cannot disagree with the run)."""
    config = base_config(0, kd_rampup_steps=kd_rampup_steps)
    t, st = TeacherConfig.from_dict(config.teacher), StudentConfig.from_dict(config.student)
    lines = [
        f"- models: teacher {config.teacher_grade} rung shrunk for CPU (d={t.d_model}, L={t.seq_len}, entry "
        f"{t.n_entry} / shared {t.n_shared} looped ×{t.loops} / exit {t.n_exit}, {t.connector}), LightSUAN "
        f"students (d={st.d_model}, L={st.seq_len}, {st.n_layers} UABs, local {st.local_window} + dilation "
        f"{st.dilation}), baselines d_embed {config.baseline['d_embed']}; one epoch, "
        f"batch {config.batch_size}, AdamW lr {config.lr}, {config.threads} CPU thread; "
        f"λ_kd={config.lambda_kd}, λ_ml={config.lambda_ml}, t={config.temperature}, "
        f"KD ramp-up {config.kd_rampup_steps} steps",
    ]
    if light:
        lt, ls = LONG_TEACHER, LIGHT_STUDENT
        lines.append(f"- light part: student d={ls['d_model']}, L={ls['seq_len']} distilled from a teacher "
                     f"d={lt['d_model']}, L={lt['seq_len']} (otherwise as above)")
    return lines


def render(rows: dict[str, list[float]], split: DaySplit, args: argparse.Namespace, seconds: float) -> str:
    date = subprocess.run(["date", "-u"], capture_output=True, text=True).stdout.strip()
    main_rows = ["lr", "dnn", "deepfm", "dcnv2", "din", "student alone", "distilled student (KD, no peers)",
                 "distilled + mutual student (mean of 2)", "teacher (in cohort)", "oracle"]
    ablation_rows = [r for r in rows if r not in main_rows]
    main_rows = [r for r in main_rows if r in rows]
    lines = [
        "# Quality benchmark (simulated log with drift)",
        "",
        f"- command: `.venv/bin/python -m benchmarks.bench_quality {' '.join(sys.argv[1:])}`".rstrip(),
        f"- machine: {machine()} (shared with other work while it ran); Python {platform.python_version()}, "
        f"torch {torch.__version__}; date: {date}",
        f"- data: {split.source}; train {split.train.num_rows} rows (days {split.train_days}), "
        f"test {split.test.num_rows} rows (day {split.test_day}); seeds: {args.seeds} "
        f"({'mean ± std' if args.seeds > 1 else 'single seed'}); total {seconds / 60:.1f} min",
        *model_lines(args.kd_rampup_steps, light=args.part in ("light", "all")),
        "- reference: the oracle AUC of the true p_click on the test day (the ceiling); the goal is "
        "distilled student > student alone",
        "",
    ]
    oracle = statistics.mean(rows["oracle"])
    if len(main_rows) > 1:
        lines += ["| model | test AUC | gap to oracle |", "|---|---|---|"]
        for name in main_rows:
            gap = "" if name == "oracle" else f"{oracle - statistics.mean(rows[name]):.4f}"
            lines.append(f"| {name} | {_fmt(rows[name])} | {gap} |")
    if ablation_rows:
        lines += ["", f"## Ablations (same train/test days; oracle {oracle:.4f})", "",
                  "| arm | test AUC |", "|---|---|"]
        lines += [f"| {name} | {_fmt(rows[name])} |" for name in ablation_rows]
    if len(main_rows) > 1:
        lines += _reading(rows)
    light = [r for r in ablation_rows if r.startswith("light student")]
    if len(light) == 2:
        alone, distilled = (statistics.mean(rows[r]) for r in light)
        lines += ["", "## Reading", "",
                  f"- light student: distilled − alone = {distilled - alone:+.4f} AUC "
                  f"({'goal met' if distilled > alone else 'goal NOT met'}), per seed: "
                  + ", ".join(f"{d - a:+.4f}" for a, d in zip(rows[light[0]], rows[light[1]], strict=True))]
    return "\n".join(lines) + "\n"


def _reading(rows: dict[str, list[float]]) -> list[str]:
    best_baseline = max(statistics.mean(rows[k]) for k in BASELINE_KINDS)
    alone = statistics.mean(rows["student alone"])
    distilled = statistics.mean(rows["distilled student (KD, no peers)"])
    mutual = statistics.mean(rows["distilled + mutual student (mean of 2)"])
    return [
        "",
        "## Reading",
        "",
        f"- distilled student − student alone: {distilled - alone:+.4f} AUC "
        f"({'goal met' if distilled > alone else 'goal NOT met'}); with mutual peers: {mutual - alone:+.4f}",
        f"- best baseline {best_baseline:.4f}; distilled + mutual student {mutual:.4f} "
        f"({mutual - best_baseline:+.4f})",
    ]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--impressions", type=int, default=40_000, help="simulated impressions, all days")
    parser.add_argument("--users", type=int, default=3_000)
    parser.add_argument("--items", type=int, default=2_000)
    parser.add_argument("--days", type=int, default=5)
    parser.add_argument("--seeds", type=int, default=1)
    parser.add_argument("--part", choices=("main", "ablations", "light", "all"), default="all",
                        help="the model table, the ablations, or both (run the two in parallel to save time)")
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--kd-rampup-steps", type=int, default=0,
                        help="λ_kd grows from 0 over this many steps (immature teacher: docs/models.md)")
    args = parser.parse_args()
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="ctrflow-bench-quality-") as tmp:
        settings = Settings(home=Path(tmp) / "home")
        split = simulated_days(settings, args.days, args.impressions, seed=11, users=args.users,
                               items=args.items)
        print(f"data: {split.source}; train {split.train.num_rows}, test {split.test.num_rows}", flush=True)
        rows: dict[str, list[float]] = {}
        for seed in range(args.seeds):
            for name, value in run_seed(settings, split, seed, args.part, args.kd_rampup_steps).items():
                rows.setdefault(name, []).append(value)
    text = render(rows, split, args, time.perf_counter() - started)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
