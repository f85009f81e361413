"""Data-parallel training: 2 torchrun workers (gloo, DistributedDataParallel) against one process.

The same training set (simulated, built by the real pipeline), the same cohort and the same global
batch, trained three ways through ``training.usecases.train_version``: one process with 1 thread (the
reference), one process with 2 threads (what the 2 cores give a single process), and
``torchrun --nproc-per-node 2`` with 1 thread per worker. It prints each run's training samples/s (no
validation slice, so the rate is stepping alone), the ratios, and the holdout AUC of the served student,
which must be the same in all three (the workers compute what one process computes).

    .venv/bin/python -m benchmarks.bench_ddp              # ~2 min on 2 idle cores
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from benchmarks.ctr_data import simulated_days
from benchmarks.machine import machine
from features.datasets import list_datasets
from pipelines.settings import Settings
from training.trainer import TrainConfig
from training.usecases import TrainRequest, train_version

RESULTS = Path(__file__).parent / "results" / "ddp.md"
ROOT = Path(__file__).resolve().parents[1]


def _config(threads: int, batch_size: int) -> TrainConfig:
    # No validation slice and no early stopping: the rate measured is the step loop's.
    return TrainConfig(teacher_grade="auto", students=2, batch_size=batch_size, threads=threads, seed=0,
                       val_fraction=0.0, patience=0, calibrate=False, device="cpu")


def _summary(result) -> dict:
    serve = result.serve
    return {"samples_per_s": result.results[serve]["train_samples_per_s"],
            "auc": result.metrics[serve]["auc"], "serve": serve, "workers": result.workers}


def worker(home: Path, dataset: str, batch_size: int) -> None:
    """One torchrun worker: train, and on the main worker print the summary as one JSON line."""
    result = train_version(Settings(home=home), TrainRequest(_config(1, batch_size), dataset=dataset))
    if result.main:
        print(json.dumps(_summary(result)), flush=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--impressions", type=int, default=60_000)
    parser.add_argument("--batch-size", type=int, default=1024)
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--worker", nargs=2, metavar=("HOME", "DATASET"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(Path(args.worker[0]), args.worker[1], args.batch_size)
        return 0
    started = time.perf_counter()
    date = subprocess.run(["date", "-u"], capture_output=True, text=True).stdout.strip()
    with tempfile.TemporaryDirectory(prefix="ctrflow-bench-ddp-") as tmp:
        home = Path(tmp) / "home"
        settings = Settings(home=home)
        split = simulated_days(settings, days=3, impressions=args.impressions, seed=5)
        dataset = list_datasets(settings)[1]  # the middle day; the holdout is its latest 20 %
        rows = {}
        for label, threads in (("1 process, 1 thread", 1), ("1 process, 2 threads", 2)):
            result = train_version(settings, TrainRequest(_config(threads, args.batch_size), dataset=dataset))
            rows[label] = _summary(result)
            print(label, rows[label], flush=True)
        proc = subprocess.run(
            [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
             "-m", "benchmarks.bench_ddp", "--batch-size", str(args.batch_size),
             "--worker", str(home), dataset],
            cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)}, capture_output=True, text=True,
            check=True,
        )
        rows["torchrun, 2 workers x 1 thread"] = json.loads(proc.stdout.strip().splitlines()[-1])
        print("torchrun", rows["torchrun, 2 workers x 1 thread"], flush=True)
    reference = rows["1 process, 1 thread"]["samples_per_s"]
    lines = [
        "# Data-parallel training: torchrun workers vs one process",
        "",
        f"- command: `.venv/bin/python -m benchmarks.bench_ddp {' '.join(sys.argv[1:])}`".rstrip(),
        f"- machine: {machine()}; Python {sys.version.split()[0]}, torch {torch.__version__}; date: {date}; "
        f"total {(time.perf_counter() - started) / 60:.1f} min",
        f"- data: {split.source}; trained on one day's training set ({split.days[1].num_rows:,} rows, the "
        "latest 20 % by time held out)",
        f"- cohort: `auto` teacher + 2 small students, global batch {args.batch_size}, 1 epoch, no "
        "validation slice (the rate is the step loop's); reference: the same run in one process, 1 thread",
        "",
        "| run | training samples/s | ratio to 1 process, 1 thread | served student | holdout AUC |",
        "|---|---|---|---|---|",
    ]
    for label, row in rows.items():
        lines.append(f"| {label} | {row['samples_per_s']:,.0f} | {row['samples_per_s'] / reference:.2f}x | "
                     f"{row['serve']} | {row['auc']:.6f} |")
    text = "\n".join(lines + [""])
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
