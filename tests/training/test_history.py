"""The trainer records each model's BCE beside its whole objective (the run report plots the BCE)."""

from __future__ import annotations

import pytest
import torch
from synthetic import make_dataset
from tiny import tiny_train_config

from training.cycle import schema_for
from training.inputs import encode
from training.trainer import TrainConfig, build_cohort, train_window


def test_history_holds_the_bce_part_of_every_objective() -> None:
    table, manifest = make_dataset(n_rows=256, seed=8)
    config = TrainConfig.from_dict(tiny_train_config(baselines=("lr",), batch_size=128, lambda_kd=1.0))
    schema = schema_for(manifest, config)
    cohort = build_cohort(config, schema)
    history = train_window(cohort, encode(table, schema), config, torch.device("cpu"), progress=False)
    assert set(history.bce) == set(cohort.models)
    for name in cohort.models:
        assert len(history.bce[name]) == len(history.losses[name]) == history.steps == 2
    # A baseline's objective is its BCE; a student's adds non-negative KD and peer terms on top.
    assert history.bce["lr"] == pytest.approx(history.losses["lr"])
    for student in cohort.students:
        assert all(b < total for b, total in zip(history.bce[student], history.losses[student], strict=True))
    assert all(0.0 < b < 2.0 for b in history.bce["teacher"])
