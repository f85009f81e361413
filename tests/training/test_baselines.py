"""The logistic-regression baseline is an honest floor: base-rate start, beats a click-rate score."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import torch

from tests.training.synthetic import make_dataset
from tests.training.tiny import BASELINE
from training.cycle import schema_for
from training.inputs import encode
from training.metrics import auc, logloss
from training.models import build_model
from training.trainer import TrainConfig, build_cohort, evaluate_model, time_split, train_window


def test_bias_starts_at_the_base_rate_and_a_trained_model_keeps_its_own() -> None:
    table, manifest = make_dataset(n_rows=256, seed=4)
    schema = schema_for(manifest, TrainConfig(teacher_grade=None, students=0, baselines=("lr",)))
    batch = encode(table, schema)
    model = build_model("lr", BASELINE, schema)
    model.prepare(batch)
    rate = float(batch.label.mean())
    probs = torch.sigmoid(model(batch)).detach().numpy()
    assert np.allclose(probs, rate, atol=1e-5)  # fresh weights: every row gets the base rate
    loaded = build_model("lr", BASELINE, schema)
    loaded.load_state_dict(model.state_dict())
    loaded.prepare(dataclasses.replace(batch, label=torch.zeros(len(batch))))  # a warm start keeps its bias
    assert math.isclose(float(torch.sigmoid(loaded(batch)).detach()[0]), rate, rel_tol=1e-5)


def test_lr_beats_the_item_click_rate_score_on_the_holdout() -> None:
    # Per-item quality makes the item's past click rate a real signal; LR sees it as a dense feature and
    # adds position and the hashed ids, so it must rank better than that feature alone.
    table, manifest = make_dataset(n_rows=16_000, seed=2, n_users=200, n_items=200, item_quality=1.0)
    config = TrainConfig(teacher_grade=None, students=0, baselines=("lr",), baseline=BASELINE,
                         batch_size=256, threads=1)
    schema = schema_for(manifest, config)
    train, holdout = time_split(table, "event_time", 0.25)
    cohort = build_cohort(config, schema)
    train_window(cohort, encode(train, schema), config, torch.device("cpu"), progress=False)
    metrics, _ = evaluate_model(cohort.models["lr"], encode(holdout, schema), torch.device("cpu"))
    labels = holdout.column("label").to_numpy()
    click_rate_auc = auc(labels, holdout.column("item_stats__ctr_7d").to_numpy())
    assert metrics["auc"] > click_rate_auc + 0.003
    base_rate = float(np.asarray(train.column("label").to_numpy()).mean())
    assert metrics["logloss"] < logloss(labels, np.full(len(labels), base_rate)) - 0.01


def test_every_deep_baseline_starts_from_the_click_rate_fit_not_from_one_half() -> None:
    # The wide path's prefit: before its first step a fresh deep model already scores like the logistic
    # regression on the click-rate features (the base rate and the ranking of those features). A model
    # without it starts near p = 0.5, far worse than a constant base rate; on a few-step window (the Avazu
    # sample) DeepFM never recovered from that.
    table, manifest = make_dataset(n_rows=4000, seed=2, n_users=200, n_items=200, item_quality=1.0)
    kinds = ("dnn", "deepfm", "dcnv2", "din")
    schema = schema_for(manifest, TrainConfig(teacher_grade=None, students=0, baselines=kinds))
    batch = encode(table, schema)
    labels = batch.label.numpy()
    constant = logloss(labels, np.full(len(labels), labels.mean()))
    click_rate_auc = auc(labels, table.column("item_stats__ctr_7d").to_numpy())
    for kind in kinds:
        torch.manual_seed(0)
        model = build_model(kind, BASELINE, schema).eval()
        model.prepare(batch)
        with torch.no_grad():
            probs = torch.sigmoid(model.logits(batch)).numpy()
        assert logloss(labels, probs) < constant - 0.01, kind
        assert auc(labels, probs) > click_rate_auc - 0.01, kind
