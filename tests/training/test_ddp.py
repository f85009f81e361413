"""`torchrun` with 2 CPU workers (gloo, DistributedDataParallel) trains what one process trains.

The same training set, config and global batch, once by the use case in this process and once by
`torchrun --nproc-per-node 2 -m orchestration.cli train`: the two saved versions hold the same weights
(to float rounding) and the same holdout metrics. Early stopping is set to fire so the run also covers
models stopping at different steps (the wrapper is rebuilt around the ones still training).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from synthetic import make_dataset, write_dataset
from tiny import tiny_train_config

from training import artifacts
from training.distributed import Workers
from training.trainer import TrainConfig
from training.usecases import TrainRequest, train_version

ROOT = Path(__file__).resolve().parents[2]
# Several evaluations and a patience of one: some models stop before others.
CONFIG = tiny_train_config(baselines=("lr", "din"), epochs=4, eval_every_steps=2, patience=1)


def test_two_cpu_workers_match_one_process(settings, home) -> None:
    table, manifest = make_dataset(n_rows=400, seed=5, name="day1")
    write_dataset(settings, table, manifest)
    single = train_version(settings, TrainRequest(TrainConfig.from_dict(CONFIG)))
    stopped = {name: r["stopped_at"] for name, r in single.results.items()}
    assert len(set(stopped.values())) > 1, f"early stopping should stop models at different steps: {stopped}"

    env = {**os.environ, "CTRFLOW_HOME": str(home), "PYTHONPATH": str(ROOT)}
    flags = {k: v for k, v in CONFIG.items() if k not in ("teacher_grade", "students", "baselines", "epochs")}
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
         "-m", "orchestration.cli", "--home", str(home), "train", "--teacher-grade", "G1", "--students", "2",
         "--baselines", "lr,din", "--epochs", "4", "--config", json.dumps(flags), "--json"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    # One worker reports: exactly one JSON line, the version the main worker saved.
    lines = proc.stdout.strip().splitlines()
    assert len(lines) == 1, proc.stdout
    multi = json.loads(lines[0])
    assert single.workers == 1 and multi["workers"] == 2
    # Each worker stepped on half of every batch (not all of it twice).
    share = re.search(r"the main one stepped on (\d+) of the (\d+) rows", Path(multi["report"]).read_text())
    assert share and 2 * int(share[1]) == int(share[2]) > 0, share
    versions = [v.version for v in artifacts.list_versions(settings)]
    assert versions == [single.version, multi["version"]]

    for name in single.metrics:
        ours = artifacts.read_weights(settings, single.version, name)
        theirs = artifacts.read_weights(settings, multi["version"], name)
        assert ours.keys() == theirs.keys()
        for key in ours:
            torch.testing.assert_close(theirs[key], ours[key], rtol=1e-4, atol=1e-5, msg=f"{name}.{key}")
        for metric in ("auc", "logloss", "best_step"):
            assert multi["models"][name][metric] == pytest.approx(single.metrics[name][metric], abs=1e-5)


def test_each_worker_takes_a_contiguous_share_and_together_all_rows() -> None:
    for rows in (64, 7, 3):
        shares = [Workers(rank, rank, 3, "gloo").shard(rows) for rank in range(3)]
        covered = [i for share in shares for i in range(rows)[share]]
        assert covered == list(range(rows))
        assert max(s.stop - s.start for s in shares) - min(s.stop - s.start for s in shares) <= 1
