"""Model-quality goals: every model against its own best input feature and the item-popularity score.

For each source the real pipeline builds the rows (adapter or simulator → Beam backfill → point-in-time
training set); each seed trains, on the same training part, the cohort (teacher + two students by
distillation and mutual learning, and every baseline, epochs chosen by validation) and the same student
alone. The test part (the simulator's last day; elsewhere the latest 20 % by event time) is scored by
every model and by the references of ``training.references``: each numeric warehouse feature used alone as
a score (the best one named) and the item's popularity.

The ranking metric is per-request gAUC where requests hold several candidates (simulator, Taobao's sampled
negatives) and per-user gAUC where a request is one impression (Avazu). The goals, each checked per source:
the distilled student above the best single feature and above every baseline; the distilled student above
the same student alone (mean of the seeds, spread shown); calibrated PCOC within [0.95, 1.05]. Beside
the two model-against-model goals stands a 95 % paired-bootstrap interval of the difference, from the
test rows' exported predictions (``ctrflow evaluate --predictions``'s use case): redrawing the test
requests (users; rows for AUC) and the seeds, it says whether the gap is larger than this window's noise.

``--probe-exposure`` is a what-if, not a goal run: it adds user x candidate-category exposure columns
(the user's earlier impressions and clicks in the candidate's category, and that category's share of the
user's earlier impressions) to the rows as dense features. They are computed here from the training
set's own rows, not by the pipeline, so no served model can read them; the run measures what such a
feature view would be worth before anyone builds it. Each source runs twice, without and then with
the columns, so the comparison is within one run.

``--probe-privileged`` is the same what-if with the columns given to the teacher alone (privileged-feature
distillation): every other model reads them as 0, their standardised training mean, so only the teacher
can use them, and the students can gain from them only through distillation. Each source runs without
and then with the teacher-only columns.

``--part scaling`` instead trains a few models on growing simulated logs and shows test AUC against the
oracle (the simulator's true click probability), so the gap is seen to shrink with data.

    .venv/bin/python -m benchmarks.bench_goals --sources simulator,taobao,avazu --seeds 3
    .venv/bin/python -m benchmarks.bench_goals --part scaling --scales 50000,200000
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from benchmarks.ctr_data import simulated_days
from benchmarks.machine import machine
from features.manifest import DatasetManifest
from pipelines.settings import Settings
from training.config import BASELINE_KINDS
from training.cycle import export_predictions, run_cycle
from training.inputs import Batch, group_ids
from training.metrics import METRIC_TITLES, MIN_MIXED_GROUPS, PairedDifference, mixed_groups, paired_bootstrap
from training.models.baselines import BASELINES as BASELINE_MODELS
from training.models.student import Student
from training.references import ReferenceScore
from training.trainer import TrainConfig, time_split

RESULTS = Path(__file__).parent / "results"
DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
TEST_FRACTION = 0.2
PCOC_BOUNDS = (0.95, 1.05)
DISTILLED, ALONE = "distilled student (served, chosen by validation)", "student alone"
BOOTSTRAP_ROUNDS = 1000
# The real slices and how their rows are built. The Taobao slice is windowed: its whole 2 h with four
# sampled negatives per view would be ~430k rows, too many for the 2-core budget. Its last 41 minutes
# (~162k rows, the simulator's size) give ~114 steps per epoch; the 11 minutes used before gave ~30, too
# few for validation-chosen stopping or the KD ramp-up to mean anything.
REAL = {
    "taobao": ("taobao-userbehavior/stream_slice_2017-11-26.csv",
               ["--start", "2017-11-26T02:15:00Z", "--end", "2017-11-26T02:56:00Z"]),
    "avazu": ("avazu-sample/train.csv", []),
}


@dataclass(frozen=True)
class Rows:
    """One source's training and test parts, from the real pipeline."""

    name: str
    train: pa.Table
    test: pa.Table
    manifest: DatasetManifest
    description: str


def _cli(home: Path, *args: str) -> None:
    ctrflow = Path(sys.executable).with_name("ctrflow")
    subprocess.run([str(ctrflow), "--home", str(home), *args], check=True, stdout=subprocess.DEVNULL)


def real_rows(name: str, home: Path, start: str | None = None) -> Rows:
    """convert → features build --from-file → dataset build, as a user would run them; ``start`` moves
    the window's start (the Taobao slice)."""
    from features.datasets import load_dataset

    relative, window = REAL[name]
    if start and window:
        window = ["--start", start, *window[2:]]
    source = DATA / relative
    if not source.exists():
        raise SystemExit(f"{source} is missing: the real samples are read from the shared data folder")
    log = home / "log.parquet"
    _cli(home, "convert", name, str(source), str(log))
    _cli(home, "features", "build", "--from-file", str(log), "--no-online")
    _cli(home, "dataset", "build", *window)
    table, manifest = load_dataset(Settings(home=home))
    train, test = time_split(table, manifest.columns.time, TEST_FRACTION)
    window_text = f" window {window[1]}..{window[3]}" if window else ""
    return Rows(name, train, test, manifest,
                f"{relative}{window_text}: {table.num_rows:,} rows, label rate "
                f"{np.mean(table.column(manifest.columns.label).to_numpy()):.3f}; test = latest 20 % by time")


def simulator_rows(home: Path, impressions: int, days: int = 5) -> Rows:
    split = simulated_days(Settings(home=home), days, impressions, seed=11,
                           users=max(3_000, impressions // 20), items=max(2_000, impressions // 40))
    return Rows("simulator", split.train, split.test, split.manifest,
                f"{split.source}; train days {split.train_days}, test day {split.test_day}")


EXPOSURE_COLUMNS = ("user_category__impressions_all", "user_category__clicks_all", "user_category__share_all")


def with_exposure(rows: Rows) -> Rows:
    """``rows`` plus EXPOSURE_COLUMNS, point-in-time: only impressions strictly before each row's time count
    (a request's candidates share a time, so they never count each other), over train and test in order."""
    import pandas as pd

    both = pa.concat_tables([rows.train, rows.test])
    cols = rows.manifest.columns
    frame = pd.DataFrame({
        "user": group_ids(both.column(cols.user)), "category": group_ids(both.column(cols.category)),
        "time": both.column(cols.time).to_numpy(), "label": both.column(cols.label).to_numpy(),
        "row": np.arange(both.num_rows),
    }).sort_values(["user", "category", "time", "row"])
    pair = frame.groupby(["user", "category"], sort=False)
    frame["impressions"] = pair["time"].rank(method="min") - 1
    # Clicks of earlier rows only: the exclusive running sum, taken at the first row of each time.
    frame["clicks"] = pair["label"].cumsum() - frame["label"]
    frame["clicks"] = frame.groupby(["user", "category", "time"], sort=False)["clicks"].transform("min")
    frame["user_impressions"] = frame.groupby("user", sort=False)["time"].rank(method="min") - 1
    frame = frame.sort_values("row")
    values = {
        EXPOSURE_COLUMNS[0]: frame["impressions"].to_numpy().astype(np.int64),
        EXPOSURE_COLUMNS[1]: frame["clicks"].to_numpy().astype(np.int64),
        EXPOSURE_COLUMNS[2]: ((frame["impressions"] + 0.1) / (frame["user_impressions"] + 1.0)).to_numpy(),
    }
    for name, column in values.items():
        both = both.append_column(name, pa.array(column))
    manifest = dataclasses.replace(rows.manifest, columns=dataclasses.replace(
        cols, dense=tuple(cols.dense) + EXPOSURE_COLUMNS))
    n = rows.train.num_rows
    return Rows(f"{rows.name} + exposure probe", both.slice(0, n), both.slice(n), manifest,
                rows.description + "; plus the benchmark's own user x category exposure columns "
                f"({', '.join(EXPOSURE_COLUMNS)}: a what-if, not pipeline features)")


@contextmanager
def teacher_only(columns: tuple[str, ...]) -> Iterator[None]:
    """While open, every model but the teacher sees ``columns`` of its dense input as 0 (what-if only: the
    benchmark swaps the students' and baselines' entry points, and puts them back on leaving)."""
    hidden = set(columns)

    def masked(method: Callable[..., Any]) -> Callable[..., Any]:
        def call(self: Any, batch: Batch, *args: Any, **kwargs: Any) -> Any:
            index = [j for j, name in enumerate(self.schema.dense) if name in hidden]
            if index:
                dense = batch.dense.clone()
                dense[..., index] = 0.0
                batch = dataclasses.replace(batch, dense=dense)
            return method(self, batch, *args, **kwargs)
        return call

    # Every path a student or baseline reads its input through (forward and prepare go through logits).
    entries = [(Student, name) for name in ("logits", "forward_train", "score_request")]
    entries += [(kind, "logits") for kind in BASELINE_MODELS.values()]
    saved = [(cls, name, cls.__dict__.get(name)) for cls, name in entries]
    for cls, name, _ in saved:
        setattr(cls, name, masked(getattr(cls, name)))
    try:
        yield
    finally:
        for cls, name, own in saved:
            if own is None:
                delattr(cls, name)
            else:
                setattr(cls, name, own)


def metric_for(rows: Rows) -> str:
    """Per-request gAUC where requests hold several candidates, else per-user gAUC; plain AUC where too few
    users hold both a click and a non-click in the test part for a grouped AUC to mean anything (the Avazu
    sample: one hour, a device stands in for the user)."""
    table = rows.test
    label = table.column(rows.manifest.columns.label).to_numpy()
    for metric in ("request_gauc", "gauc"):
        column = group_column(rows, metric)
        if column not in table.column_names:
            continue
        if mixed_groups(label, group_ids(table.column(column))) >= MIN_MIXED_GROUPS:
            return metric
    return "auc"


def group_column(rows: Rows, metric: str) -> str | None:
    """The column a grouped metric groups by (None for plain AUC)."""
    return {"request_gauc": "request_id", "gauc": rows.manifest.columns.user}.get(metric)


# TrainConfig fields set with --set for every run (the cohort's and the student alone's)
OVERRIDES: dict[str, Any] = {}


def config_for(seed: int, epochs: int, **overrides: Any) -> TrainConfig:
    return TrainConfig.from_dict({
        "teacher_grade": "auto", "students": 2, "baselines": BASELINE_KINDS, "epochs": epochs, "seed": seed,
        "threads": 1, "lr": 2e-3, "device": "auto",
    } | OVERRIDES | overrides)


def _override(text: str) -> tuple[str, Any]:
    key, _, value = text.partition("=")
    try:
        return key, json.loads(value)
    except json.JSONDecodeError:
        return key, value


def run_source(rows: Rows, seeds: int, epochs: int, home: Path) -> dict[str, Any]:
    settings = Settings(home=home)
    group = metric_for(rows)
    table: dict[str, list[dict[str, float]]] = {}
    served: list[str] = []
    scores: dict[str, list[np.ndarray]] = {}
    for seed in range(seeds):
        t0 = time.perf_counter()
        cohort = run_cycle(settings, rows.train, rows.manifest, config_for(seed, epochs),
                           holdout_table=rows.test, holdout_manifest=rows.manifest, report=False,
                           progress=False)
        alone = run_cycle(settings, rows.train, rows.manifest,
                          config_for(seed, epochs, teacher_grade=None, students=1, baselines=()),
                          holdout_table=rows.test, holdout_manifest=rows.manifest, report=False,
                          progress=False)
        serve = cohort.serve or "student_0"
        # The test rows' scores, through the prediction export a user would run, for the paired bootstrap.
        for arm, (result, model) in {DISTILLED: (cohort, serve), ALONE: (alone, "student_0"),
                                     **{k: (cohort, k) for k in BASELINE_KINDS}}.items():
            path = home / "predictions" / f"{result.version}.parquet"
            if not path.exists():
                export_predictions(settings, result.version, rows.test, path)
            scores.setdefault(arm, []).append(pq.read_table(path, columns=[model]).column(0).to_numpy())
        chosen_by = METRIC_TITLES["request_gauc" if "val_request_gauc" in cohort.metrics[serve] else "auc"]
        served.append(f"{serve} (by {chosen_by})")
        arms = {kind: cohort.metrics[kind] for kind in BASELINE_KINDS}
        arms |= {"teacher (in cohort)": cohort.metrics["teacher"], DISTILLED: cohort.metrics[serve],
                 ALONE: alone.metrics["student_0"]}
        for name, metrics in arms.items():
            table.setdefault(name, []).append(
                {"group": metrics[group], "auc": metrics["auc"], "pcoc": metrics["pcoc"],
                 "pcoc_raw": metrics.get("pcoc_raw", float("nan")),
                 "oracle": metrics.get("oracle_auc", float("nan")),
                 "epoch": metrics.get("best_epoch", float("nan"))})
        print(f"  {rows.name} seed {seed}: served {serve} "
              f"{METRIC_TITLES[group]} {cohort.metrics[serve][group]:.4f} in {time.perf_counter() - t0:.0f}s",
              flush=True)
    return {"group": group, "models": table, "references": cohort.references, "served": served,
            "scores": scores}


def _fmt(values: list[float]) -> str:
    values = [v for v in values if v == v]
    if not values:
        return "–"
    if len(values) == 1:
        return f"{values[0]:.4f}"
    return f"{statistics.mean(values):.4f} ± {statistics.stdev(values):.4f}"


def _mean(values: list[float]) -> float:
    return statistics.mean(values)


def _oracle_pcoc(test: pa.Table, label: str) -> float:
    """The true click probabilities' PCOC on the test rows (simulator only): how far the window's realised
    clicks fall from their expectation by chance, the floor for any model's calibration there."""
    if "p_click" not in test.column_names:
        return float("nan")
    labels = np.asarray(test.column(label).to_numpy(), dtype=float)
    return float(np.asarray(test.column("p_click").to_numpy(), dtype=float).mean() / labels.mean())


def _epochs(values: list[float]) -> str:
    """Each seed's validation-chosen checkpoint in epochs (0 = the start, before any step)."""
    return " / ".join(f"{v:.2f}" for v in values) if all(v == v for v in values) else "–"


def render_source(rows: Rows, result: dict[str, Any]) -> list[str]:
    group, models = result["group"], result["models"]
    refs: tuple[ReferenceScore, ...] = result["references"]
    title = METRIC_TITLES[group]
    second = "" if group == "auc" else " AUC |"
    lines = [f"## {rows.name}", "", f"- data: {rows.description}",
             f"- train {rows.train.num_rows:,} rows, test {rows.test.num_rows:,} rows; metric: {title}",
             f"- served student per seed (chosen on the validation slice): {', '.join(result['served'])}", "",
             f"| model | {title} |{second} PCOC (calibrated) | PCOC (raw) | kept at epoch |",
             "|---|---|---|---|---|" + ("" if group == "auc" else "---|")]
    for name, runs in models.items():
        auc_cell = "" if group == "auc" else f" {_fmt([r['auc'] for r in runs])} |"
        lines.append(f"| {name} | {_fmt([r['group'] for r in runs])} |{auc_cell} "
                     f"{_fmt([r['pcoc'] for r in runs])} | {_fmt([r['pcoc_raw'] for r in runs])} | "
                     f"{_epochs([r['epoch'] for r in runs])} |")
    for ref in refs:
        auc_cell = "" if group == "auc" else f" {ref.metrics['auc']:.4f} |"
        lines.append(f"| {ref.label} | {ref.metrics.get(group, float('nan')):.4f} |{auc_cell} – | – | – |")
    oracle = [r["oracle"] for r in models[ALONE]]
    oracle_pcoc = _oracle_pcoc(rows.test, rows.manifest.columns.label)
    if all(o == o for o in oracle):
        lines.append(f"| oracle (true p_click) | – |{'' if group == 'auc' else f' {_fmt(oracle)} |'} "
                     f"{oracle_pcoc:.4f} | – | – |")
    distilled = [r["group"] for r in models[DISTILLED]]
    alone = [r["group"] for r in models[ALONE]]
    best = next(r for r in refs if r.role == "dense")
    best_feature = best.metrics.get(group, float("nan"))
    best_baseline_name = max(BASELINE_KINDS, key=lambda k: _mean([r["group"] for r in models[k]]))
    best_baseline = _mean([r["group"] for r in models[best_baseline_name]])
    pcocs = [r["pcoc"] for r in models[DISTILLED]]

    def verdict(ok: bool) -> str:
        return "met" if ok else "**NOT met**"

    vs_baseline, vs_alone = (_paired(rows, result, other) for other in (best_baseline_name, ALONE))
    lines += ["", f"| goal | measured | verdict | {_interval_title(vs_alone)} |", "|---|---|---|---|",
              f"| distilled student > best single feature, {best.column} ({title}) | "
              f"{_mean(distilled):.4f} vs {best_feature:.4f} ({_mean(distilled) - best_feature:+.4f}) | "
              f"{verdict(_mean(distilled) > best_feature)} | – |",
              f"| distilled student > every baseline ({title}) | {_mean(distilled):.4f} vs best baseline "
              f"{best_baseline_name} {best_baseline:.4f} ({_mean(distilled) - best_baseline:+.4f}) | "
              f"{verdict(_mean(distilled) > best_baseline)} | {_interval(vs_baseline)} |",
              f"| distilled student > the same student alone (mean of {len(alone)} seeds) | "
              f"{_fmt(distilled)} vs {_fmt(alone)} ({_mean(distilled) - _mean(alone):+.4f}) | "
              f"{verdict(_mean(distilled) > _mean(alone))} | {_interval(vs_alone)} |",
              f"| calibrated PCOC in [{PCOC_BOUNDS[0]}, {PCOC_BOUNDS[1]}] on the test window | "
              f"{', '.join(f'{p:.3f}' for p in pcocs)}"
              + (f" (the oracle's own: {oracle_pcoc:.3f})" if oracle_pcoc == oracle_pcoc else "") + " | "
              f"{verdict(all(PCOC_BOUNDS[0] <= p <= PCOC_BOUNDS[1] for p in pcocs))} | – |", "",
              f"The interval is the paired bootstrap of the mean per-seed difference: {BOOTSTRAP_ROUNDS:,} "
              f"rounds, each redrawing the test {_unit(result)} (one redraw for both models and every seed) "
              "and the seeds (`training.metrics.paired_bootstrap`), so it holds the test window's sampling "
              "noise and the seeds' spread. \"tie\": it holds 0; this window and these seeds cannot tell "
              "the two apart.", ""]
    return lines


def _paired(rows: Rows, result: dict[str, Any], other: str) -> PairedDifference:
    """The distilled student minus ``other`` on the test rows, from the exported predictions."""
    label = rows.test.column(rows.manifest.columns.label).to_numpy()
    key = group_column(rows, result["group"])
    groups = group_ids(rows.test.column(key)) if key else None
    scores = result["scores"]
    paired = paired_bootstrap(label, scores[DISTILLED], scores[other], groups, BOOTSTRAP_ROUNDS)
    # The exported scores are the evaluated ones: the bootstrap's point is the table's difference.
    expected = _mean([r["group"] for r in result["models"][DISTILLED]]) - _mean(
        [r["group"] for r in result["models"][other]])
    if abs(paired.mean - expected) > 1e-6:
        raise RuntimeError(f"exported predictions disagree with the evaluation: {paired.mean} vs {expected}")
    return paired


def _unit(result: dict[str, Any]) -> str:
    return {"request_gauc": "requests", "gauc": "users"}.get(result["group"], "rows")


def _interval_title(paired: PairedDifference) -> str:
    return f"{paired.level:.0%} bootstrap interval of the difference"


def _interval(paired: PairedDifference) -> str:
    side = "tie" if not paired.resolved else "above" if paired.low > 0 else "below"
    return f"{paired.low:+.4f} .. {paired.high:+.4f} ({side})"


def scaling(scales: list[int], epochs: int, tmp: Path) -> list[str]:
    """Test AUC of a few models against the oracle as the simulated log grows (one seed)."""
    lines = ["## Data scaling (simulator, one seed)", "",
             "| impressions | train rows | lr | dnn | din | student alone | distilled student | oracle |",
             "|---|---|---|---|---|---|---|---|"]
    for n in scales:
        home = tmp / f"scale-{n}"
        rows = simulator_rows(home, n)
        settings = Settings(home=home)
        cohort = run_cycle(settings, rows.train, rows.manifest,
                           config_for(0, epochs, baselines=("lr", "dnn", "din"), students=1),
                           holdout_table=rows.test, holdout_manifest=rows.manifest, save=False, report=False,
                           progress=False)
        alone = run_cycle(settings, rows.train, rows.manifest,
                          config_for(0, epochs, teacher_grade=None, students=1, baselines=()),
                          holdout_table=rows.test, holdout_manifest=rows.manifest, save=False, report=False,
                          progress=False)
        m = cohort.metrics
        oracle = m["student_0"]["oracle_auc"]
        cells = [m["lr"]["auc"], m["dnn"]["auc"], m["din"]["auc"], alone.metrics["student_0"]["auc"],
                 m["student_0"]["auc"]]
        lines.append(f"| {n:,} | {rows.train.num_rows:,} | "
                     + " | ".join(f"{c:.4f} (gap {oracle - c:.4f})" for c in cells) + f" | {oracle:.4f} |")
        print(lines[-1], flush=True)
    return lines + [""]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--part", choices=("goals", "scaling"), default="goals")
    parser.add_argument("--sources", default="simulator,taobao,avazu")
    parser.add_argument("--impressions", type=int, default=200_000, help="simulator impressions, all days")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=3, help="at most; validation chooses the checkpoint")
    parser.add_argument("--scales", default="50000,200000")
    parser.add_argument("--set", action="append", default=[], type=_override, metavar="FIELD=VALUE",
                        help="a TrainConfig field for every run, e.g. --set temperature=1 (JSON values)")
    parser.add_argument("--taobao-start", metavar="ISO_TIME",
                        help=f"start of the Taobao window (default {REAL['taobao'][1][1]}; it ends at "
                        f"{REAL['taobao'][1][3]})")
    parser.add_argument("--probe-exposure", action="store_true",
                        help="run each source again with the benchmark's own user x category exposure "
                        "columns (a what-if)")
    parser.add_argument("--probe-privileged", action="store_true",
                        help="the same columns for the teacher alone (privileged-feature distillation; a "
                        "what-if)")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    OVERRIDES.update(dict(args.set))
    torch.set_num_threads(1)
    started = time.perf_counter()
    date = subprocess.run(["date", "-u"], capture_output=True, text=True).stdout.strip()
    with tempfile.TemporaryDirectory(prefix="ctrflow-bench-goals-") as tmp_name:
        tmp = Path(tmp_name)
        if args.part == "scaling":
            body = scaling([int(s) for s in args.scales.split(",")], args.epochs, tmp)
        else:
            body = []
            for source in args.sources.split(","):
                home = tmp / source
                rows = (simulator_rows(home, args.impressions) if source == "simulator"
                        else real_rows(source, home, args.taobao_start))
                print(f"{source}: train {rows.train.num_rows}, test {rows.test.num_rows}", flush=True)
                for variant in (rows, with_exposure(rows)) if args.probe_exposure else (rows,):
                    body += render_source(variant, run_source(variant, args.seeds, args.epochs, home))
                if args.probe_privileged:  # beside the plain arm the loop above ran
                    privileged = with_exposure(rows)
                    privileged = dataclasses.replace(
                        privileged, name=f"{rows.name} + teacher-only exposure columns",
                        description=privileged.description + "; only the teacher reads them (the other "
                        "models see 0)")
                    with teacher_only(EXPOSURE_COLUMNS):
                        result = run_source(privileged, args.seeds, args.epochs, home)
                    body += render_source(privileged, result)
    header = [
        "# Model-quality goals: models vs their best input feature" if args.part == "goals"
        else "# Data scaling: test AUC against the oracle",
        "",
        f"- command: `.venv/bin/python -m benchmarks.bench_goals {' '.join(sys.argv[1:])}`".rstrip(),
        f"- machine: {machine()} (shared with other work while it ran); Python {platform.python_version()}, "
        f"torch {torch.__version__}; date: {date}; total {(time.perf_counter() - started) / 60:.1f} min",
        "- models: TrainConfig defaults for this device (`auto` teacher grade and student size), every "
        f"baseline, at most {args.epochs} epochs with validation-chosen checkpoints (the last 10 % of the "
        "training part by time), Platt calibration on that validation slice, lr 2e-3, 1 CPU thread"
        + "".join(f", {k}={v}" for k, v in OVERRIDES.items()),
        "- references (training.references, as `ctrflow evaluate` shows them): the item's click rate, its "
        "popularity, and the best numeric warehouse feature alone as a score (chosen by AUC, in its better "
        "direction), on the same test rows",
        "",
    ]
    text = "\n".join(header + body)
    out = args.out or RESULTS / ("goals.md" if args.part == "goals" else "scaling.md")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
