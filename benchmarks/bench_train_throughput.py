"""Training throughput: samples/s of every ctrflow model family at the CPU sizes ``auto`` picks, side by
side in one run with deepctr-torch's DIN, DeepFM, DCN, DNN and LR on the same synthetic rows.

One training step = forward in training mode + backward + optimiser step, on one minibatch of random
rows shaped like the dataset contract (full behaviour sequences, hashed ids, normalised dense features),
grouped into requests of 1-10 candidates as the simulator draws them (the rows of a request share the
user's behaviours, profile and time, as in a real training set). Every model steps on the same rows. The
sequence models (student, teachers) run in two layouts: "requests", the trainer's (one encoding of the
user context per request, ``training.inputs.context_groups``), and "rows", one encoding per row -- what
a log with one impression per request (Avazu, Criteo) costs, and what ``auto`` budgets with.
ctrflow models step with their trainer's optimiser (SparseAdam on the id tables, AdamW elsewhere);
deepctr-torch models with ``torch.optim.Adam``, what its ``compile("adam")`` uses, and its L2 terms off
(its ``fit`` would add them over whole tables every step). Both sides read the same fields: every
categorical slot (item and category shared with the behaviour sequence), the behaviour sequence at the
same length and embedding size, and the dense features. Models are stepped round-robin (one step each,
round after round) so load from other processes hits all alike; each stops after ``--max-steps`` steps
or ``--budget-s`` seconds. FLOPs per sample (forward + backward, FlopCounterMode: matmuls and attention
only) stand beside each rate, so a shortfall reads as compute (more FLOPs) or overhead (fewer FLOP/s).
The teacher-grade step times printed at the end are the table ``training.config.CPU_MS_PER_1K_ROWS``
that ``auto`` chooses from.

deepctr-torch is never a ctrflow dependency; install it into the benchmark's environment only:

    .venv/bin/pip install --no-deps deepctr-torch==0.3.0 scikit-learn joblib threadpoolctl

    .venv/bin/python -m benchmarks.bench_train_throughput           # ~6-8 min on 2 busy CPU cores
    .venv/bin/python -m benchmarks.bench_train_throughput --quick   # a smoke run
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from benchmarks.bench_model_cost import contract_schema, random_batch, share_context
from benchmarks.machine import machine
from training.config import AUTO_BATCH_SIZE, CPU_STUDENT, BaselineConfig, TeacherConfig
from training.inputs import Batch, InputSchema, context_groups
from training.models import build_model
from training.optim import SplitOptimizer
from training.trainer import freed_memory_kept

RESULTS = Path(__file__).parent / "results" / "train_throughput.md"
DEEPCTR_VERSION = "0.3.0"
INSTALL = (f".venv/bin/pip install --no-deps deepctr-torch=={DEEPCTR_VERSION} scikit-learn joblib "
           "threadpoolctl  (never into pyproject.toml; --no-deps keeps pip away from torch)")
BASELINE = BaselineConfig()  # the baseline family defaults: d_embed 16, hidden (128, 64), 50 behaviours
FLOP_ROWS = 64  # FLOPs are counted on a slice this big and reported per sample
# (ctrflow model, deepctr-torch counterpart, goal on samples/s ours / theirs)
REQUEST_SIZES = (1, 10)  # candidates per request, uniform, as pipelines.simulator draws them
GOALS: list[tuple[str, str, float]] = [
    ("LightSUAN student", "deepctr DIN", 0.5),
    ("teacher G1", "deepctr DIN", 0.2),
    ("LightSUAN student (rows)", "deepctr DIN", 0.5),
    ("teacher G1 (rows)", "deepctr DIN", 0.2),
    ("lr", "deepctr LR", 1.0),
    ("dnn", "deepctr DNN", 1.0),
    ("deepfm", "deepctr DeepFM", 1.0),
    ("dcnv2", "deepctr DCN (matrix)", 1.0),
    ("din", "deepctr DIN", 1.0),
]
GRADE_ROWS = ("teacher G0 (rows)", "teacher G1 (rows)", "teacher G2 (rows)", "LightSUAN student (rows)")


def request_batch(schema: InputSchema, rows: int, generator: torch.Generator) -> Batch:
    """``random_batch`` rows cut into consecutive requests of REQUEST_SIZES candidates: each request's rows
    take its first row's user, behaviours, user-level dense features and time."""
    batch = random_batch(schema, rows, generator, one_user=False)
    sizes = torch.randint(REQUEST_SIZES[0], REQUEST_SIZES[1] + 1, (rows,), generator=generator)
    starts = torch.cumsum(sizes, 0) - sizes
    starts = starts[starts < rows]
    sizes = torch.diff(torch.cat([starts, torch.tensor([rows])]))  # the last request cut at `rows`
    share_context(batch, schema, torch.repeat_interleave(starts, sizes))
    return batch


@dataclass
class Runner:
    name: str
    side: str  # ctrflow | deepctr-torch
    step: Callable[[], None]
    rows: int
    flops_per_sample: float
    max_steps: int
    times: list[float] = field(default_factory=list)


def ctrflow_runner(name: str, family: str, config: dict[str, Any], schema: InputSchema, batch: Batch,
                   max_steps: int) -> Runner:
    torch.manual_seed(0)
    model = build_model(family, config, schema).train()
    opt = SplitOptimizer([model], lr=1e-3)

    def loss_of(rows: Batch) -> torch.Tensor:
        out = model.forward_train(rows)
        return sum(F.binary_cross_entropy_with_logits(z, rows.label) for z in out.logits) / len(
            out.logits) + out.aux_loss

    def step() -> None:
        opt.zero_grad()
        loss_of(batch).backward()
        opt.step()

    small = batch.slice(0, FLOP_ROWS)
    with FlopCounterMode(display=False) as counter:
        loss_of(small).backward()
    opt.zero_grad()
    return Runner(name, "ctrflow", step, len(batch), counter.get_total_flops() / FLOP_ROWS, max_steps)


def deepctr_inputs(schema: InputSchema, batch: Batch, d_embed: int) -> tuple[list, list, torch.Tensor]:
    """deepctr-torch feature columns for the contract's fields and the batch as its one float matrix."""
    from deepctr_torch.inputs import DenseFeat, SparseFeat, VarLenSparseFeat, build_input_features

    sparse = [SparseFeat(name, bucket, d_embed) for name, bucket in zip(schema.categorical, schema.buckets,
                                                                        strict=True)]
    L = BASELINE.seq_len
    hist = [VarLenSparseFeat(SparseFeat(f"hist_{name}", schema.buckets[schema.slot(name)], d_embed,
                                        embedding_name=name), maxlen=L, combiner="mean",
                             length_name="seq_length") for name in (schema.item, schema.category)]
    dense = [DenseFeat(f"dense_{j}", 1) for j in range(len(schema.dense))]
    columns = sparse + hist + dense
    index = build_input_features(columns)
    x = torch.zeros(len(batch), max(end for _, end in index.values()))
    for j in range(len(schema.categorical)):
        x[:, index[schema.categorical[j]][0]] = batch.categorical[:, j].float()
    for name, seq in ((schema.item, batch.seq_items), (schema.category, batch.seq_categories)):
        start, end = index[f"hist_{name}"]
        x[:, start:end] = seq[:, -L:].float()
    x[:, index["seq_length"][0]] = batch.seq_mask[:, -L:].sum(1).float()
    for j in range(len(schema.dense)):
        x[:, index[f"dense_{j}"][0]] = batch.dense[:, j]
    return columns, [c for c in columns if not isinstance(c, VarLenSparseFeat)], x


def deepctr_models(schema: InputSchema, batch: Batch) -> tuple[dict[str, nn.Module], torch.Tensor]:
    from deepctr_torch.models import DCN, DIN, WDL, DeepFM

    d = BASELINE.d_embed
    columns, flat_columns, x = deepctr_inputs(schema, batch, d)
    hidden = tuple(BASELINE.hidden)
    no_l2 = {"l2_reg_embedding": 0.0, "device": "cpu", "seed": 0}
    models = {
        "deepctr LR": WDL(flat_columns, [], dnn_hidden_units=(), l2_reg_linear=0.0, **no_l2),
        "deepctr DNN": DeepFM([], columns, use_fm=False, dnn_hidden_units=hidden, l2_reg_linear=0.0, **no_l2),
        "deepctr DeepFM": DeepFM(flat_columns, columns, dnn_hidden_units=hidden, l2_reg_linear=0.0, **no_l2),
        "deepctr DCN (matrix)": DCN(flat_columns, columns, cross_num=BASELINE.cross_layers,
                                    cross_parameterization="matrix", dnn_hidden_units=hidden,
                                    l2_reg_linear=0.0, l2_reg_cross=0.0, **no_l2),
        "deepctr DIN": DIN(columns, [schema.item, schema.category], dnn_hidden_units=hidden,
                           att_hidden_size=(BASELINE.attention_hidden,), att_activation="prelu", **no_l2),
    }
    return models, x


def deepctr_runner(name: str, model: nn.Module, x: torch.Tensor, y: torch.Tensor, max_steps: int) -> Runner:
    model.train()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)

    def loss_of(rows: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return F.binary_cross_entropy(model(rows).squeeze(-1), labels)

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        loss_of(x, y).backward()
        opt.step()

    with FlopCounterMode(display=False) as counter:
        loss_of(x[:FLOP_ROWS], y[:FLOP_ROWS]).backward()
    opt.zero_grad(set_to_none=True)
    return Runner(name, "deepctr-torch", step, len(x), counter.get_total_flops() / FLOP_ROWS, max_steps)


def run_rounds(runners: list[Runner], budget_s: float) -> int:
    """One step per active runner per round (the first untimed: it pays allocations)."""
    for r in runners:
        r.step()
    rounds = 0
    while any(len(r.times) < r.max_steps and sum(r.times) < budget_s for r in runners):
        rounds += 1
        for r in runners:
            if len(r.times) < r.max_steps and sum(r.times) < budget_s:
                start = time.perf_counter()
                r.step()
                r.times.append(time.perf_counter() - start)
        print(f"\rround {rounds}", end="", file=sys.stderr, flush=True)
    print(file=sys.stderr)
    return rounds


def summarise(r: Runner) -> dict[str, Any]:
    ms = statistics.median(r.times) * 1000
    rate = r.rows / (ms / 1000)
    return {"model": r.name, "side": r.side, "rows": r.rows, "steps": len(r.times), "step_ms": ms,
            "samples_per_s": rate, "mflops": r.flops_per_sample / 1e6,
            "gflops_per_s": r.flops_per_sample * rate / 1e9}


def render(rows: list[dict[str, Any]], args: argparse.Namespace, rounds: int, heap_kept: bool) -> str:
    date = subprocess.run(["date", "-u"], capture_output=True, text=True).stdout.strip()
    import deepctr_torch

    by = {r["model"]: r for r in rows}
    lines = [
        "# Training throughput: ctrflow models vs deepctr-torch (CPU)",
        "",
        "Command: `.venv/bin/python -m benchmarks.bench_train_throughput"
        + (" --quick" if args.quick else "") + "`",
        f"Machine: {machine('cpu')} (torch {torch.__version__}, {torch.get_num_threads()} thread(s)); "
        "shared with other work, so compare rates from the same run",
        f"Date: {date}",
        f"Reference: deepctr-torch {deepctr_torch.__version__} (separate install, `--no-deps`)",
        "Allocator: " + ("freed memory kept in the heap (`training.trainer.freed_memory_kept`, as "
                         "`ctrflow train` on CPU), for both sides" if heap_kept else "glibc defaults"),
        f"Rounds: {rounds} (round-robin, one step per model per round; each model at most "
        f"{args.max_steps} steps or {args.budget_s:.0f} s)",
        "",
        "| model | side | rows/step | steps | median step ms | samples/s | MFLOPs/sample (fwd+bwd) "
        "| GFLOP/s |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    lines += [f"| {r['model']} | {r['side']} | {r['rows']} | {r['steps']} | {r['step_ms']:.1f} | "
              f"{r['samples_per_s']:,.0f} | {r['mflops']:.2f} | {r['gflops_per_s']:.2f} |" for r in rows]
    lines += ["", "## Goals (samples/s, ctrflow / deepctr-torch)", "",
              "| ctrflow model | reference | ratio | goal | status |", "|---|---|---:|---:|---|"]
    for ours, theirs, goal in GOALS:
        ratio = by[ours]["samples_per_s"] / by[theirs]["samples_per_s"]
        lines.append(f"| {ours} | {theirs} | {ratio:.2f}x | >= {goal}x | "
                     f"{'met' if ratio >= goal else '**NOT met**'} |")
    lines += ["", "## Step times `auto` chooses from (`training.config.CPU_MS_PER_1K_ROWS`)", "",
              "| model | ms per step | rows/step | ms per 1k rows | one epoch of 100k rows (s) |",
              "|---|---:|---:|---:|---:|"]
    for name in GRADE_ROWS:
        r = by[name]
        per_1k = r["step_ms"] / r["rows"] * 1000
        epoch_s = per_1k * 100 / 1000
        lines.append(f"| {name} | {r['step_ms']:.0f} | {r['rows']} | {per_1k:.0f} | {epoch_s:.0f} |")
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a few steps per model (a smoke run)")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads (1: least contention)")
    parser.add_argument("--batch", type=int, default=AUTO_BATCH_SIZE["cpu"], help="rows per step")
    parser.add_argument("--max-steps", type=int, default=200)
    parser.add_argument("--budget-s", type=float, default=15.0, help="timed seconds per model at most")
    parser.add_argument("--output", type=Path, default=RESULTS)
    args = parser.parse_args()
    if importlib.util.find_spec("deepctr_torch") is None:
        print(f"error: deepctr_torch is not importable; install it into this environment only: {INSTALL}",
              file=sys.stderr)
        return 2
    if args.quick:
        args.max_steps, args.budget_s = 3, 2.0
    torch.set_num_threads(args.threads)
    schema = contract_schema(BASELINE.seq_len)
    generator = torch.Generator().manual_seed(0)
    batch = request_batch(schema, args.batch, generator)
    grouped = dataclasses.replace(batch, group=context_groups(batch, schema))  # as the trainer batches
    # The teacher rungs are compute-bound: a few steps say as much as many, and G2 runs on fewer rows.
    sequence_models = [
        ("LightSUAN student", "student", CPU_STUDENT, args.max_steps, args.batch),
        ("teacher G0", "teacher", TeacherConfig.grade("G0").to_dict(), 3, args.batch),
        ("teacher G1", "teacher", TeacherConfig.grade("G1").to_dict(), 2, args.batch),
        ("teacher G2", "teacher", TeacherConfig.grade("G2").to_dict(), 1, 128),
    ]
    ours: list[tuple[str, str, dict[str, Any], Batch, int]] = [
        *[(name + suffix, fam, cfg, rows.slice(0, n), steps) for name, fam, cfg, steps, n in sequence_models
          for suffix, rows in (("", grouped), (" (rows)", batch))],
        *[(kind, kind, BASELINE.to_dict() | {"kind": kind}, batch, args.max_steps)
          for kind in ("lr", "dnn", "deepfm", "dcnv2", "din")],
    ]
    runners = [ctrflow_runner(name, fam, cfg, schema, rows, min(steps, args.max_steps))
               for name, fam, cfg, rows, steps in ours]
    theirs, x = deepctr_models(schema, batch)
    runners += [deepctr_runner(name, model, x, batch.label, args.max_steps) for name, model in theirs.items()]
    with freed_memory_kept() as heap_kept:  # as `ctrflow train` on CPU; both sides share this process
        rounds = run_rounds(runners, args.budget_s)
    rows = [summarise(r) for r in runners]
    text = render(rows, args, rounds, heap_kept)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
