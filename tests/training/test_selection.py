"""Fitted input statistics, id admission, validation-based early stopping, calibration and cold starts."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch
from synthetic import make_dataset
from tiny import BASELINE, STUDENT, tiny_train_config

from training import artifacts
from training.artifacts import DataSlice, ModelRecord
from training.cycle import run_cycle, schema_for
from training.inputs import InputSchema, encode, fit_input_schema
from training.metrics import auc, gauc, pcoc
from training.models import build_model
from training.models.base import OPTIONAL_STATE
from training.models.sequence import MAX_GROUP_CANDIDATES
from training.trainer import (
    TrainConfig,
    _minibatches,
    build_cohort,
    drop_ids,
    evaluate_model,
    fit_calibration,
    predict,
    train_window,
)

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def data():
    return make_dataset(n_rows=600, seed=5)


def _config(**overrides) -> TrainConfig:
    return TrainConfig.from_dict(tiny_train_config(**overrides))


def _item_counts(table) -> dict[str, int]:
    items, counts = np.unique(np.asarray(table.column("item_id").to_pylist()), return_counts=True)
    return dict(zip(items.tolist(), counts.tolist(), strict=True))


def test_statistics_and_admission_are_fitted_on_the_window_and_round_trip(data) -> None:
    table, manifest = data
    base = InputSchema.from_manifest(manifest, max_seq_len=8)
    schema = fit_input_schema(base, table, min_id_count=12)
    assert schema.structure() == base.structure() and len(schema.dense_mean) == len(schema.dense)
    assert InputSchema.from_dict(json.loads(json.dumps(schema.to_dict()))) == schema

    dense = encode(table, schema).dense.numpy().astype(np.float64)
    np.testing.assert_allclose(dense.mean(0), 0.0, atol=1e-5)
    varying = np.asarray(schema.dense_std) != 1.0
    np.testing.assert_allclose(dense.std(0)[varying], 1.0, rtol=1e-4)

    counts = _item_counts(table)
    rare = {i for i, c in counts.items() if c < 12}
    assert rare and len(rare) < len(counts), "the fixture needs both rare and frequent items"
    batch = encode(table, schema)
    items = table.column("item_id").to_pylist()
    is_rare = torch.tensor([i in rare for i in items])
    assert (batch.cand_item[is_rare] == 0).all() and (batch.cand_item[~is_rare] > 0).all()
    # A rare item inside a behaviour sequence maps to the same OOV row as the candidate side.
    ok = schema.admitted_mask(schema.slot(schema.item))
    raw = encode(table, base)
    assert torch.equal(batch.seq_items, torch.where(torch.from_numpy(ok)[raw.seq_items], raw.seq_items, 0))
    # No admission below k=2, and a schema without statistics still encodes as before.
    assert fit_input_schema(base, table, min_id_count=1).admitted == ()
    assert torch.equal(encode(table, base).dense, raw.dense)


def test_a_warm_start_keeps_the_parent_statistics_and_only_widens_admission(data) -> None:
    table, manifest = data
    base = InputSchema.from_manifest(manifest, max_seq_len=8)
    parent = fit_input_schema(base, table.slice(0, 300), min_id_count=6)
    child = fit_input_schema(base, table.slice(300), min_id_count=6, parent=parent)
    assert child.dense_mean == parent.dense_mean and child.dense_std == parent.dense_std
    slot = base.slot(base.item)
    old, new = parent.admitted_mask(slot), child.admitted_mask(slot)
    assert (new | old).tolist() == new.tolist() and new.sum() > old.sum()
    with pytest.raises(ValueError, match="different structure"):
        fit_input_schema(dataclasses.replace(base, dense=base.dense[:-1], dense_kinds=base.dense_kinds[:-1]),
                         table, 6, parent=parent)


def test_id_dropout_replaces_user_and_item_ids_with_the_oov_bucket(data) -> None:
    table, manifest = data
    schema = InputSchema.from_manifest(manifest, max_seq_len=8)
    batch = encode(table.slice(0, 400), schema)
    gen = torch.Generator().manual_seed(0)
    assert drop_ids(batch, schema, 0.0, gen) is batch
    dropped = drop_ids(batch, schema, 0.5, gen)
    user, item = schema.slot(schema.user), schema.slot(schema.item)
    for slot in (user, item):
        gone = dropped.categorical[:, slot] == 0
        assert 100 < int(gone.sum()) < 300
    assert torch.equal(dropped.cand_item, dropped.categorical[:, item])
    others = [j for j in range(len(schema.categorical)) if j not in (user, item)]
    assert torch.equal(dropped.categorical[:, others], batch.categorical[:, others])
    assert (batch.categorical[:, item] > 0).all(), "the input batch is left untouched"


def test_rows_of_one_context_lose_their_user_id_together(data) -> None:
    table, manifest = data
    schema = InputSchema.from_manifest(manifest, max_seq_len=8)
    batch = encode(table.slice(0, 400), schema)
    grouped = dataclasses.replace(batch, group=torch.arange(400) // 5)  # contexts of 5 rows
    dropped = drop_ids(grouped, schema, 0.5, torch.Generator().manual_seed(0))
    gone = (dropped.categorical[:, schema.slot(schema.user)] == 0).view(80, 5)
    assert (gone.all(1) | ~gone.any(1)).all()  # all of a context's rows or none
    assert 20 < int(gone[:, 0].sum()) < 60
    items_gone = (dropped.cand_item == 0).view(80, 5)
    assert not (items_gone.all(1) | ~items_gone.any(1)).all()  # item ids still drop per row


def test_shuffle_keeps_a_context_together_in_chunks_of_one_pass(data) -> None:
    table, manifest = data
    schema = InputSchema.from_manifest(manifest, max_seq_len=8)
    batch = encode(table.slice(0, 400), schema)
    # one context of 100 rows (a device with many impressions in one hour), the others of 3 or 4
    group = torch.cat([torch.zeros(100, dtype=torch.long), 1 + torch.arange(300) // 4])
    rows = dataclasses.replace(batch, group=group, label=torch.arange(400).float())  # label = row index
    chunks = list(_minibatches(rows, 64, torch.Generator().manual_seed(0)))
    order = torch.cat([c.label for c in chunks]).long()
    assert sorted(order.tolist()) == list(range(400))  # every row once
    seen = group[order]
    runs = torch.unique_consecutive(seen, return_counts=True)
    big = runs[1][runs[0] == 0]
    assert big.max() <= MAX_GROUP_CANDIDATES and big.sum() == 100 and len(big) >= 7  # spread out in chunks
    assert runs[1][runs[0] > 0].max() == 4  # small contexts stay whole


def test_saved_version_reapplies_statistics_oov_and_calibration_bit_for_bit(settings, data) -> None:
    table, manifest = data
    schema = fit_input_schema(InputSchema.from_manifest(manifest, max_seq_len=8), table, min_id_count=12)
    torch.manual_seed(0)
    models = {"student_0": build_model("student", STUDENT, schema),
              "dnn": build_model("dnn", BASELINE, schema)}
    for model in models.values():
        model.calibration.scale.fill_(0.7)
        model.calibration.bias.fill_(-0.3)
        with torch.no_grad():
            model.wide.weight.normal_()
    version = artifacts.save_version(
        settings, models, {n: ModelRecord(m.family, m.config.to_dict()) for n, m in models.items()},
        schema.to_dict(), feature_service=None, train=DataSlice(dataset=None, rows=200), holdout=None,
        train_config={}).version
    rows = table.slice(0, 200)
    before = encode(rows, schema)
    for name, model in models.items():
        loaded, config = artifacts.load_model(settings, version, name)
        reloaded = InputSchema.from_dict(config.input_schema)
        assert reloaded == schema
        after = encode(rows, reloaded)
        for field in ("dense", "categorical", "seq_items", "cand_item"):
            assert torch.equal(getattr(before, field), getattr(after, field)), field
        assert float(loaded.calibration.scale) == pytest.approx(0.7)
        model.eval()
        with torch.no_grad():
            assert torch.equal(model(before), loaded(after)), name


def test_old_checkpoints_without_wide_or_calibration_load_unchanged(data) -> None:
    table, manifest = data
    schema = InputSchema.from_manifest(manifest, max_seq_len=8)
    torch.manual_seed(1)
    model = build_model("dnn", BASELINE, schema).eval()
    old_state = {k: v for k, v in model.state_dict().items() if k not in OPTIONAL_STATE}
    assert len(old_state) == len(model.state_dict()) - len(OPTIONAL_STATE)
    torch.manual_seed(2)
    fresh = build_model("dnn", BASELINE, schema).eval()
    fresh.load_state_dict(old_state)
    batch = encode(table.slice(0, 64), schema)
    with torch.no_grad():
        assert torch.equal(model(batch), fresh(batch))


def _student_and_dnn(data, cut: int, **overrides):
    """A one-student + DNN config evaluated every 2 steps, its schema, and the rows before/after ``cut``."""
    table, manifest = data
    config = _config(teacher_grade=None, students=1, baselines=("dnn",), lr=1e-2, eval_every_steps=2,
                     id_dropout=0.0, **overrides)
    schema = schema_for(manifest, config)
    return config, schema, encode(table.slice(0, cut), schema), encode(table.slice(cut), schema)


def test_early_stopping_keeps_the_best_checkpoint(data) -> None:
    config, schema, train, val = _student_and_dnn(data, 480, epochs=6, patience=2)
    # Flipped training labels: every step away from the start makes the validation AUC worse.
    flipped = dataclasses.replace(train, label=1.0 - train.label)
    cohort = build_cohort(config, schema)
    history = train_window(cohort, flipped, config, CPU, progress=False, validation=val)
    full = 6 * (480 // config.batch_size + 1)
    assert history.steps < full and set(history.stopped) == {"student_0", "dnn"}
    for name, model in cohort.models.items():
        curve = history.val_curve[name]
        assert curve[0]["step"] == 0 and [p["step"] for p in curve] == sorted(p["step"] for p in curve)
        best = history.best[name]
        assert best["auc"] == max(p["auc"] for p in curve)
        assert curve[-1]["auc"] < best["auc"] and best["step"] < history.steps
        kept = auc(val.label.numpy(), predict(model, val, CPU, calibrated=False))
        assert kept == pytest.approx(best["auc"], abs=1e-12), name


def test_checkpoints_are_chosen_by_request_gauc_where_requests_hold_several_candidates(data) -> None:
    config, schema, train, val = _student_and_dnn(data, 300, epochs=3, patience=0)
    # One impression per request: no request ranks anything, so the choice falls back to AUC.
    single = train_window(build_cohort(config, schema), train, config, CPU, progress=False, validation=val)
    assert single.select_by == "auc" and all("request_gauc" not in p for p in single.val_curve["dnn"])

    requests = torch.arange(len(val)) // 3  # three candidates per request
    grouped = dataclasses.replace(val, request=requests)
    cohort = build_cohort(config, schema)
    history = train_window(cohort, train, config, CPU, progress=False, validation=grouped)
    assert history.select_by == "request_gauc"
    labels = val.label.numpy()
    for name, model in cohort.models.items():
        curve, best = history.val_curve[name], history.best[name]
        assert best == max(curve, key=lambda p: p["request_gauc"]), name
        kept = predict(model, grouped, CPU, calibrated=False)
        assert gauc(labels, kept, requests.numpy()) == pytest.approx(best["request_gauc"], abs=1e-12), name


def test_calibration_moves_pcoc_toward_one_and_keeps_the_ranking(data) -> None:
    table, manifest = data
    config = _config(teacher_grade=None, students=0, baselines=("dnn",), id_dropout=0.0)
    schema = schema_for(manifest, config)
    train, val, test = (encode(t, schema) for t in (table.slice(0, 360), table.slice(360, 480),
                                                      table.slice(480)))
    cohort = build_cohort(config, schema)
    train_window(cohort, train, config, CPU, progress=False)
    model = cohort.models["dnn"]
    with torch.no_grad():
        model.mlp[-1].bias.add_(2.5)  # badly over-predicting
    raw = predict(model, test, CPU)
    assert pcoc(test.label.numpy(), raw) > 2
    fit_calibration(cohort, val, config, CPU)
    assert float(model.calibration.scale) != 1.0
    metrics, _ = evaluate_model(model, test, CPU)
    assert abs(metrics["pcoc"] - 1) < 0.5 * abs(metrics["pcoc_raw"] - 1)
    assert metrics["ece"] < metrics["ece_raw"]
    assert metrics["pcoc_raw"] == pytest.approx(pcoc(test.label.numpy(), raw))
    assert metrics["auc"] == pytest.approx(auc(test.label.numpy(), raw), abs=1e-6)


def test_cycle_cold_starts_on_a_schema_change_and_records_why(settings, data) -> None:
    table, manifest = data
    config = _config(students=1)
    first = run_cycle(settings, table.slice(0, 300), manifest, config, progress=False, report=False)
    dropped = "item_stats__ctr_1h"
    fewer = dataclasses.replace(manifest, columns=dataclasses.replace(
        manifest.columns, dense=tuple(d for d in manifest.columns.dense if d != dropped)))
    second = run_cycle(settings, table.slice(300).drop_columns([dropped]), fewer, config,
                       parent=first.version, progress=False, report=False)
    saved = artifacts.read_config(settings, second.version)
    assert saved.parent == first.version and second.warm_started == []
    assert f"removed ['{dropped}']" in saved.cold_start_reason
    assert set(saved.cold_start) == {"teacher", "student_0"}
    assert dropped not in saved.input_schema["dense"]
