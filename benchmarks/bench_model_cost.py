"""Model cost: student vs teacher inference latency for 100 candidates of one user, parameters, FLOPs,
and training samples/s for every model family.

The student scores the 100 candidates in one candidate-parallel pass (behaviours encoded once, the
candidate-isolation mask); the same student scoring them one at a time is printed as the reference for the
sharing gain. The teacher runs its own path: 100 rows in one batch, each row its own copy of the
sequence (the teacher is never served, so it has no request path to optimise). Goal: student >= 5x cheaper
than the teacher. Inputs are random but shaped like a real request: full behaviour sequences of each
model's length, hashed ids, normalised dense features.

    .venv/bin/python -m benchmarks.bench_model_cost                  # ~3-5 min on 2 busy CPU cores
    .venv/bin/python -m benchmarks.bench_model_cost --quick          # smaller repeat counts
    .venv/bin/python -m benchmarks.bench_model_cost --device cuda    # bf16 autocast on a GPU
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from rich.console import Console
from rich.progress import track
from rich.table import Table
from torch.utils.flop_counter import FlopCounterMode

from benchmarks.machine import machine
from features.manifest import SEQUENCE_COLUMNS, SEQUENCE_VIEW, DatasetManifest, ManifestColumns
from features.services import DEFAULT_SERVICE
from pipelines.tables import DEFAULT_HORIZONS
from training.config import StudentConfig, TeacherConfig
from training.inputs import Batch, InputSchema
from training.models import CTRModel, FeatureEmbedding, SequenceModel, build_model
from training.optim import SplitOptimizer
from training.trainer import autocast_context, autocast_dtype

RESULTS = Path(__file__).parent / "results" / "model_cost.md"
CANDIDATES = 100
DEFAULT_TEACHER_GRADE = "G2"  # what `ctrflow train` uses on CPU
SECOND_GRADE = "G3"
BASELINE = {"d_embed": 16, "hidden": [128, 64], "seq_len": 50}


def contract_schema(max_seq_len: int) -> InputSchema:
    """The input schema of a training set written under the dataset contract."""
    stats = [f"{view}__{stat}_{w}" for view in ("user_stats", "item_stats")
             for w in DEFAULT_HORIZONS.suffixes for stat in ("impressions", "clicks", "ctr")]  # fmt: skip
    sequence = [*SEQUENCE_COLUMNS.values(), f"{SEQUENCE_VIEW}__seq_length"]
    manifest = DatasetManifest(
        name="contract", feature_service=DEFAULT_SERVICE, window_start=None, window_end=None, rows=0,
        label_rate=0.0, content_hash="", columns=ManifestColumns.for_features(stats + sequence),
    )
    return InputSchema.from_manifest(manifest, max_seq_len=max_seq_len)


def random_batch(schema: InputSchema, rows: int, generator: torch.Generator, one_user: bool) -> Batch:
    """Rows with full sequences; with ``one_user`` every row is a candidate of the same request."""
    L = schema.max_seq_len

    def ids(n: int, cols: int, high: int) -> torch.Tensor:
        return torch.randint(1, high, (n, cols), generator=generator)

    categorical = torch.cat([ids(rows, 1, b) for b in schema.buckets], 1)
    now = 1_767_225_600 + torch.randint(0, 86_400, (rows,), generator=generator)
    gaps = torch.randint(60, 7200, (rows, L), generator=generator).flip(1).cumsum(1).flip(1)
    batch = Batch(
        categorical=categorical,
        dense=torch.rand(rows, len(schema.dense), generator=generator) * 3,
        seq_items=ids(rows, L, schema.buckets[schema.slot(schema.item)]),
        seq_categories=ids(rows, L, schema.buckets[schema.slot(schema.category)]),
        seq_times=now[:, None] - gaps,
        seq_mask=torch.ones(rows, L, dtype=torch.bool),
        cand_item=categorical[:, schema.slot(schema.item)],
        cand_category=categorical[:, schema.slot(schema.category)],
        cand_time=now,
        label=(torch.rand(rows, generator=generator) < 0.1).float(),
        user=categorical[:, schema.slot(schema.user)].clone(),
    )
    if one_user:  # one request: the user's sequence, profile and time are the same on every row
        share_context(batch, schema, torch.zeros(rows, dtype=torch.long))
    return batch


def share_context(batch: Batch, schema: InputSchema, first: torch.Tensor) -> None:
    """In place: row i takes row ``first[i]``'s user, behaviours, user-level dense features and time, as
    the candidates of one request share them."""
    for name in ("seq_items", "seq_categories", "seq_times", "seq_mask", "user", "cand_time"):
        getattr(batch, name)[:] = getattr(batch, name)[first]
    user, profile = schema.slot(schema.user), list(schema.profile_dense_index)
    batch.categorical[:, user] = batch.categorical[first, user]
    batch.dense[:, profile] = batch.dense[first][:, profile]


def timed_ms(fn: Callable[[], Any]) -> float:
    """Wall time of one call in ms; on CUDA it waits for the queued kernels, not just their launch."""
    cuda = torch.cuda.is_available() and torch.cuda.is_initialized()
    if cuda:
        torch.cuda.synchronize()
    start = time.perf_counter()
    fn()
    if cuda:
        torch.cuda.synchronize()
    return (time.perf_counter() - start) * 1000


def median_ms(fn: Callable[[], Any], repeats: int, warmup: int = 2) -> float:
    """Median wall time of ``fn`` in ms, after a warm-up."""
    for _ in range(warmup):
        fn()
    return statistics.median(timed_ms(fn) for _ in range(repeats))


def flops(fn: Callable[[], Any]) -> int:
    with FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops()


def autocast(device: torch.device) -> contextlib.AbstractContextManager:
    """What training and serving use: bf16 on CUDA, fp32 on CPU."""
    return autocast_context(device, autocast_dtype(device))


def non_embedding_params(model: CTRModel) -> int:
    table = {id(p) for m in model.modules() if isinstance(m, FeatureEmbedding) for p in m.parameters()}
    return sum(p.numel() for p in model.parameters() if id(p) not in table)


ScoringPath = tuple[str, str]  # (model, scoring path)


def interleaved_ms(
    paths: dict[ScoringPath, Callable[[], Any]], repeats: int
) -> dict[ScoringPath, list[float]]:
    """Time every path once per round, round after round: load from other processes on a shared machine
    then hits all paths alike, and per-round ratios cancel it."""
    for fn in paths.values():
        fn()
    times: dict[ScoringPath, list[float]] = {key: [] for key in paths}
    for _ in track(range(repeats), description="inference rounds"):
        for key, fn in paths.items():
            times[key].append(timed_ms(fn))
    return times


def inference_rows(models: dict[str, tuple[str, dict]], schema: InputSchema, request: Batch,
                   device: torch.device, repeats: int) -> tuple[list[dict[str, Any]], dict]:
    paths: dict[ScoringPath, Callable[[], Any]] = {}
    info: dict[str, CTRModel] = {}
    for name, (family, config) in models.items():
        torch.manual_seed(0)
        model = info[name] = build_model(family, config, schema).to(device).eval()
        if isinstance(model, SequenceModel):
            paths[(name, "candidate-parallel, 1 pass")] = lambda m=model: m.score_candidates(request)
        paths[(name, f"{CANDIDATES} rows in one batch")] = lambda m=model: m(request)
        if family == "student":
            paths[(name, "one candidate at a time")] = lambda m=model: [
                m.score_candidates(request.slice(i, i + 1)) for i in range(len(request))
            ]
    with torch.no_grad(), autocast(device):
        times = interleaved_ms(paths, repeats)
        rows = [{"model": name, "path": path, "ms": statistics.median(times[(name, path)]),
                 "min_ms": min(times[(name, path)]), "flops": flops(fn),
                 "params": info[name].num_parameters(), "dense_params": non_embedding_params(info[name])}
                for (name, path), fn in paths.items()]
    return rows, times


def training_rows(models: dict[str, tuple[str, dict, int]], schema: InputSchema,
                  generator: torch.Generator, device: torch.device, steps: int) -> list[dict[str, Any]]:
    rows = []
    for name, (family, config, rows_per_step) in track(list(models.items()), description="training"):
        batch = random_batch(schema, rows_per_step, generator, one_user=False).to(device)
        torch.manual_seed(0)
        model = build_model(family, config, schema).to(device).train()
        opt = SplitOptimizer([model], lr=1e-3)

        def step(m: CTRModel = model, o: SplitOptimizer = opt, batch: Batch = batch) -> None:
            o.zero_grad()
            with autocast(device):
                out = m.forward_train(batch)
                loss = sum(F.binary_cross_entropy_with_logits(z.float(), batch.label) for z in out.logits)
                loss = loss / len(out.logits) + out.aux_loss
            loss.backward()
            o.step()

        ms = median_ms(step, steps, warmup=1)
        rows.append({"model": name, "batch": len(batch), "samples_per_s": len(batch) / (ms / 1000),
                     "step_ms": ms,
                     "depths": len(model.forward_train(batch.slice(0, 2)).logits)})
    return rows


def _goal_sentence(ratios: dict[str, tuple[float, str]]) -> str:
    """Whether this run met the >= 5x goal against the teacher as it runs today (row-batched)."""
    batched = {k: v for k, (v, goal) in ratios.items() if goal == ">= 5x"}
    met = [k for k, v in batched.items() if v >= 5]
    if len(met) == len(batched):
        return "The >= 5x goal is met against every teacher grade as it runs (row-batched)."
    missed = ", ".join(f"{k} {v:.1f}x" for k, v in batched.items() if v < 5)
    return f"The >= 5x goal is NOT met for: {missed}."


def render(inference: list[dict], training: list[dict], ratios: dict[str, tuple[float, str]],
           min_ratios: dict[str, float], args: argparse.Namespace, device: torch.device) -> str:
    date = subprocess.run(["date", "-u"], capture_output=True, text=True).stdout.strip()
    lines = [
        "# Model cost: student vs teacher",
        "",
        f"Command: `.venv/bin/python -m benchmarks.bench_model_cost{' --quick' if args.quick else ''}`"
        + (f" `--device {args.device}`" if args.device != "cpu" else ""),
        f"Machine: {machine(device.type)} (torch {torch.__version__}, {torch.get_num_threads()} threads, "
        f"device {device}); "
        "shared with other work, so ratios from the same run are what to compare.",
        f"Date: {date}",
        "",
        f"## Inference: {CANDIDATES} candidates of one user ({args.repeats} interleaved rounds)",
        "",
        "| model | path | median ms | min ms | GFLOPs | params (all) | params (no embedding table) |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    for r in inference:
        lines.append(f"| {r['model']} | {r['path']} | {r['ms']:.2f} | {r['min_ms']:.2f} | "
                     f"{r['flops'] / 1e9:.3f} | "
                     f"{r['params']:,} | {r['dense_params']:,} |")
    lines += ["", "## Ratios (median over rounds of the per-round ratio: both sides timed back to back)", "",
              "| ratio | value | of minimum times | goal |", "|---|---:|---:|---|"]
    for label, (value, goal) in ratios.items():
        best = f"{min_ratios[label]:.1f}x" if label in min_ratios else ""
        lines.append(f"| {label} | {value:.1f}x | {best} | {goal} |")
    lines += ["", "## Training throughput (Adam, forward_train + per-depth BCE + backward, median step)", "",
              "| model | batch | supervised depths | step ms | samples/s |", "|---|---:|---:|---:|---:|"]
    for r in training:
        lines.append(f"| {r['model']} | {r['batch']} | {r['depths']} | {r['step_ms']:.0f} | "
                     f"{r['samples_per_s']:,.0f} |")
    lines += [
        "",
        "Notes: FLOPs are counted by `torch.utils.flop_counter` (matmuls and attention; embedding lookups, "
        "norms and masks are not counted). The sparse local+dilated pattern is applied as a mask to dense "
        "attention, so it changes what the student attends to, not its FLOPs; the student's saving comes "
        "from encoding the behaviours once per request and from being shallower. The 'teacher "
        "candidate-parallel' rows show a teacher that shares the behaviour encoding too (it can: the same "
        "mask and mask-aware DualAlign make it exact): against that, the student's edge is only its smaller "
        "depth/width (the FLOPs rows), and at a few ms per request fixed per-operator overhead on CPU "
        "shrinks it further. " + _goal_sentence(ratios) + (
            " The CUDA/bf16 path (`--device cuda`) was not measured in this run." if device.type == "cpu"
            else ""),
        "",
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer repeats (a smoke run)")
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--train-batch", type=int, default=256)
    parser.add_argument("--threads", type=int, default=1,
                        help="torch intra-op threads (1 is steadiest on a shared machine)")
    parser.add_argument("--output", type=Path, default=RESULTS)
    args = parser.parse_args()
    args.repeats = 4 if args.quick else 12
    train_steps = 2 if args.quick else 5
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda asked for, but torch sees no CUDA device")
    device = torch.device(args.device)
    torch.set_num_threads(args.threads)

    teacher = TeacherConfig.grade(DEFAULT_TEACHER_GRADE)
    teacher2 = TeacherConfig.grade(SECOND_GRADE)
    student = StudentConfig()
    student32 = StudentConfig(d_model=32)
    schema = contract_schema(max(teacher.seq_len, teacher2.seq_len, student.seq_len))
    generator = torch.Generator().manual_seed(0)
    request = random_batch(schema, CANDIDATES, generator, one_user=True).to(device)
    served = teacher.n_entry + teacher.n_shared + teacher.n_exit
    sequence_models = {
        f"student LightSUAN (D={student.d_model}, L={student.seq_len}, k={student.local_window}, "
        f"r={student.dilation})": ("student", student.to_dict()),
        f"student LightSUAN (D={student32.d_model})": ("student", student32.to_dict()),
        f"teacher {DEFAULT_TEACHER_GRADE} (D={teacher.d_model}, L={teacher.seq_len}, {teacher.depth} UABs "
        f"trained, {served} served)": ("teacher", teacher.to_dict()),
        f"teacher {SECOND_GRADE} (D={teacher2.d_model}, L={teacher2.seq_len})": (
            "teacher", teacher2.to_dict()),
    }
    inference, times = inference_rows(sequence_models, schema, request, device, args.repeats)

    def key(model_prefix: str, path_prefix: str) -> ScoringPath:
        return next(k for k in times if k[0].startswith(model_prefix) and k[1].startswith(path_prefix))

    def paired(slow: ScoringPath, fast: ScoringPath) -> float:
        """Median over rounds of the per-round ratio (both timed back to back under the same load)."""
        return statistics.median(a / b for a, b in zip(times[slow], times[fast], strict=True))

    student_name = next(iter(sequence_models))
    student_fast = key(student_name, "candidate")
    both = "(no goal: both on the request path)"
    timed_ratios = [  # (label, the slower path, goal); each against the student's one-pass scoring
        (f"teacher {DEFAULT_TEACHER_GRADE} batched / student parallel",
         key(f"teacher {DEFAULT_TEACHER_GRADE}", str(CANDIDATES)), ">= 5x"),
        (f"teacher {SECOND_GRADE} batched / student parallel",
         key(f"teacher {SECOND_GRADE}", str(CANDIDATES)), ">= 5x"),
        (f"teacher {DEFAULT_TEACHER_GRADE} candidate-parallel / student parallel",
         key(f"teacher {DEFAULT_TEACHER_GRADE}", "candidate"), both),
        (f"teacher {SECOND_GRADE} candidate-parallel / student parallel",
         key(f"teacher {SECOND_GRADE}", "candidate"), both),
        ("student one-at-a-time / student parallel", key(student_name, "one"), ">= 10x (serving target)"),
        ("student 100-row batch / student parallel", key(student_name, str(CANDIDATES)),
         "(no goal: sharing gain)"),
    ]  # fmt: skip
    ratios = {label: (paired(slow, student_fast), goal) for label, slow, goal in timed_ratios}
    # The ratio of best-case times too: a path with bimodal times (scheduler noise) moves the median.
    min_ratios = {label: min(times[slow]) / min(times[student_fast]) for label, slow, _ in timed_ratios}
    flops_of = {(r["model"], r["path"]): r["flops"] for r in inference}
    for grade in (DEFAULT_TEACHER_GRADE, SECOND_GRADE):
        ratios[f"FLOPs: teacher {grade} candidate-parallel / student parallel"] = (
            flops_of[key(f"teacher {grade}", "candidate")] / flops_of[student_fast],
            "(no goal: model size alone)")

    # The G3 teacher keeps per-layer attention maps of [batch, heads, 201, 201] for backward: a smaller
    # batch keeps it within a few GiB on a shared 24 GiB machine.
    train_models = {
        name.split(" (")[0] + (" D=32" if "D=32)" in name else ""):
            (family, config, args.train_batch // 8 if SECOND_GRADE in name else args.train_batch)
        for name, (family, config) in sequence_models.items()
    }
    for kind in ("lr", "dnn", "deepfm", "dcnv2", "din"):
        train_models[kind] = (kind, BASELINE, args.train_batch)
    training = training_rows(train_models, schema, generator, device, train_steps)

    console = Console()
    table = Table(title=f"{CANDIDATES} candidates, one user")
    for col in ("model", "path", "ms", "GFLOPs"):
        table.add_column(col)
    for r in inference:
        table.add_row(r["model"], r["path"], f"{r['ms']:.2f}", f"{r['flops'] / 1e9:.3f}")
    console.print(table)
    for label, (value, goal) in ratios.items():
        console.print(f"{label}: {value:.1f}x (goal {goal})")
    for r in training:
        console.print(f"train {r['model']}: {r['samples_per_s']:,.0f} samples/s")
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(render(inference, training, ratios, min_ratios, args, device))
    console.print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
