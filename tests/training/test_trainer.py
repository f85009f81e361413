"""The cohort trainer with real (tiny) models: joint step, shared embedding, warm start, precision."""

from __future__ import annotations

import json

import pytest
import torch
from synthetic import make_dataset
from tiny import tiny_train_config

from training import artifacts
from training.cycle import run_cycle, schema_for
from training.inputs import encode
from training.trainer import (
    TrainConfig,
    autocast_context,
    autocast_dtype,
    build_cohort,
    cohort_step_losses,
    kd_weight,
    time_split,
    train_window,
    warm_start,
)


@pytest.fixture(scope="module")
def data():
    return make_dataset(n_rows=1000, seed=3)


def _config(**overrides) -> TrainConfig:
    return TrainConfig.from_dict(tiny_train_config(**overrides))


def test_train_config_round_trips_and_rejects_nonsense() -> None:
    config = _config(baselines=("lr", "din"), lambda_rev=0.1)
    assert TrainConfig.from_dict(config.to_dict()) == config
    with pytest.raises(ValueError, match="unknown baselines"):
        _config(baselines=("xgboost",))
    with pytest.raises(ValueError, match="unknown TrainConfig fields"):
        TrainConfig.from_dict({"lamda_kd": 1.0})
    with pytest.raises(ValueError, match="nothing to train"):
        _config(teacher_grade=None, students=0)


def test_autocast_selection() -> None:
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert autocast_dtype(cpu, "auto") is None
    assert autocast_dtype(cuda, "auto") is torch.bfloat16
    assert autocast_dtype(cuda, "fp32") is None
    assert autocast_dtype(cpu, "bf16") is torch.bfloat16
    with autocast_context(cpu, torch.bfloat16):
        assert (torch.ones(2, 2) @ torch.ones(2, 2)).dtype == torch.bfloat16
    with autocast_context(cpu, None):
        assert (torch.ones(2, 2) @ torch.ones(2, 2)).dtype == torch.float32


def test_one_joint_step_updates_every_model_and_shares_the_embedding(data) -> None:
    table, manifest = data
    config = _config(baselines=("dnn",))
    schema = schema_for(manifest, config)
    cohort = build_cohort(config, schema)
    assert cohort.teacher == "teacher" and cohort.students == ["student_0", "student_1"]
    assert cohort.baselines == ["dnn"]
    params = {n: {id(p) for p in m.parameters()} for n, m in cohort.models.items()}
    shared = params["teacher"] & params["student_0"] & params["student_1"]
    assert shared, "teacher and students should look up one embedding table"
    assert not params["dnn"] & params["teacher"], "a baseline trains alone, with its own embedding"
    before = {n: [p.detach().clone() for p in m.parameters()] for n, m in cohort.models.items()}
    batch = encode(table.slice(0, 200), schema)
    history = train_window(cohort, batch, _config(baselines=("dnn",), batch_size=200), torch.device("cpu"),
                           progress=False)
    assert history.steps == 1 and history.samples == 200
    for name, model in cohort.models.items():
        changed = [not torch.equal(b, p) for b, p in zip(before[name], model.parameters(), strict=True)]
        assert any(changed), f"{name} was not updated"
        assert len(history.losses[name]) == 1


def test_cpu_bf16_autocast_step_is_finite(data) -> None:
    table, manifest = data
    config = _config(students=1, precision="bf16")
    schema = schema_for(manifest, config)
    cohort = build_cohort(config, schema)
    batch = encode(table.slice(0, 64), schema)
    with autocast_context(torch.device("cpu"), autocast_dtype(torch.device("cpu"), config.precision)):
        out = cohort_step_losses(cohort, batch, config, step=0)
    assert all(torch.isfinite(v) for v in out.values())


def test_cycle_learns_saves_and_warm_starts(settings, data) -> None:
    table, manifest = data
    config = _config(baselines=("lr",), epochs=3, lr=1e-2)
    first = run_cycle(settings, table, manifest, config, progress=False)
    assert first.version is not None and first.serve in ("student_0", "student_1")
    for name, result in first.results.items():
        if name != "lr":
            # A student's objective holds KD and peer terms whose targets move as the teacher learns, and
            # a network's wide path starts at the click-rate regression (its loss starts low and need
            # not fall much): their learning shows on the holdout instead.
            assert first.metrics[name]["auc"] > 0.5, f"{name} did not learn"
        else:
            history = result["loss_history"]
            fifth = len(history) // 5
            assert sum(history[-fifth:]) < sum(history[:fifth]), f"{name} did not learn"
        assert first.metrics[name]["oracle_auc"] > first.metrics[name]["auc"]
    # The user x category signal of the synthetic log is visible to the sequence models (200 test rows).
    assert first.metrics["teacher"]["auc"] > 0.55
    assert first.metrics[first.serve]["auc"] > 0.55
    # Choice by validation: every model has a curve from step 0, the served student has the best
    # validation AUC, and the validation slice lies between the rows trained on and the holdout.
    for name, result in first.results.items():
        assert result["val_curve"][0]["step"] == 0 and len(result["val_curve"]) >= 2, name
        assert {"pcoc_raw", "ece_raw", "val_auc"} <= set(first.metrics[name])
        kept = first.metrics[name]
        # The chosen epoch is the kept step in epochs of the fit rows (800 train rows less the validation
        # slice, at the cohort's batch size), so 0 is the start and 3 the end of this 3-epoch run.
        steps_per_epoch = -(-round(800 * (1 - config.val_fraction)) // config.batch_size)
        assert kept["best_epoch"] == pytest.approx(kept["best_step"] / steps_per_epoch), name
        assert 0 <= kept["best_epoch"] <= config.epochs, name
    assert first.serve == max(("student_0", "student_1"), key=lambda s: first.metrics[s]["val_auc"])
    saved = artifacts.read_config(settings, first.version)
    # The recorded training rows include the validation slice (both shaped the model); the holdout follows.
    assert saved.train.rows == 800 and saved.train.end <= saved.holdout.start
    assert len(saved.input_schema["dense_mean"]) == len(saved.input_schema["dense"])
    assert saved.feature_service == manifest.feature_service
    assert saved.train_config["lambda_kd"] == config.lambda_kd
    assert (first.run_dir / "report.md").is_file() and (first.run_dir / "calibration.png").is_file()

    # Warm start: a fresh cohort carries the parent's weights by name before any training.
    cohort = build_cohort(config, schema_for(manifest, config))
    warm = warm_start(cohort, settings, first.version)
    assert sorted(warm.loaded) == ["lr", "student_0", "student_1", "teacher"] and warm.cold == {}
    # A table the cohort shares holds the served model's copy (it loads last); the rest are each model's.
    served = cohort.models[first.serve].state_dict()
    served_parent = artifacts.read_weights(settings, first.version, first.serve)
    shared = {v.data_ptr(): k for k, v in served.items()}
    for name, model in cohort.models.items():
        parent = artifacts.read_weights(settings, first.version, name)
        for key, value in model.state_dict().items():
            if name != first.serve and value.data_ptr() in shared:
                torch.testing.assert_close(value, served_parent[shared[value.data_ptr()]])
            else:
                torch.testing.assert_close(value, parent[key])

    later = make_dataset(n_rows=300, seed=4)[0]
    second = run_cycle(settings, later, manifest, _config(baselines=("lr",), kd_rampup_steps=50),
                       parent=first.version, progress=False)
    second_config = artifacts.read_config(settings, second.version)
    assert second_config.parent == first.version
    # A warm-started teacher is mature: no KD ramp-up again (the version records what ran).
    assert second_config.train_config["kd_rampup_steps"] == 0
    assert sorted(second.warm_started) == ["lr", "student_0", "student_1", "teacher"]


def test_a_changed_model_config_cold_starts_that_model_and_records_why(settings, data) -> None:
    table, manifest = data
    config = _config(students=1)
    first = run_cycle(settings, table.slice(0, 200), manifest, config, progress=False, report=False)
    wider = _config(students=1, student={**tiny_train_config()["student"], "d_model": 32})
    warm = warm_start(build_cohort(wider, schema_for(manifest, wider)), settings, first.version)
    assert warm.loaded == ["teacher"]
    assert "d_model: 16 -> 32" in warm.cold["student_0"]
    second = run_cycle(settings, table.slice(200, 400), manifest, wider, parent=first.version,
                       progress=False, report=False)
    saved = artifacts.read_config(settings, second.version)
    assert saved.parent == first.version and saved.cold_start_reason is None
    assert set(saved.cold_start) == {"student_0"} and second.warm_started == ["teacher"]


def test_a_version_saved_before_target_match_loads_as_it_was_and_a_warm_start_cold_starts(
    settings, data
) -> None:
    """config.json written by a release without the ``target_match`` field (simulated by removing it):
    the version rebuilds without the match inputs, so its weights fit and it scores as it did; a cohort
    of today's configs sees a config change and cold-starts those models with the reason."""
    table, manifest = data
    old = {**tiny_train_config()["student"], "target_match": False}
    config = _config(students=1, teacher_grade=None, student=old)
    first = run_cycle(settings, table.slice(0, 200), manifest, config, progress=False, report=False)
    before, _ = artifacts.load_model(settings, first.version, "student_0")
    path = settings.registry_dir / first.version / "config.json"
    stored = json.loads(path.read_text())
    del stored["models"]["student_0"]["config"]["target_match"]
    path.write_text(json.dumps(stored))
    after, _ = artifacts.load_model(settings, first.version, "student_0")
    assert not after.inputs.target_match
    batch = encode(table.slice(200, 300), schema_for(manifest, config))
    with torch.no_grad():
        torch.testing.assert_close(after(batch), before(batch), rtol=0, atol=0)
    today = _config(students=1, teacher_grade=None)
    warm = warm_start(build_cohort(today, schema_for(manifest, today)), settings, first.version)
    assert "target_match: False -> True" in warm.cold["student_0"] and "student_0" not in warm.loaded


def test_same_seed_same_result(settings, data) -> None:
    table, manifest = data
    small = table.slice(0, 240)
    config = _config(students=1, teacher_grade=None)
    a = run_cycle(settings, small, manifest, config, save=False, report=False, progress=False)
    b = run_cycle(settings, small, manifest, config, save=False, report=False, progress=False)
    assert a.metrics == b.metrics


def test_time_split_holds_out_the_latest_rows(data) -> None:
    table, _ = data
    train, holdout = time_split(table, "event_time", 0.25)
    assert train.num_rows + holdout.num_rows == table.num_rows
    assert holdout.num_rows == 250
    latest_train = max(train.column("event_time").to_pylist())
    assert min(holdout.column("event_time").to_pylist()) >= latest_train
    with pytest.raises(ValueError, match="holdout fraction"):
        time_split(table, "event_time", 1.5)


def test_kd_weight_ramps_up_and_the_student_loss_follows_it(data) -> None:
    config = _config(students=1, lambda_kd=2.0, lambda_ml=0.0, kd_rampup_steps=4)
    assert [kd_weight(config, s) for s in range(6)] == [0.5, 1.0, 1.5, 2.0, 2.0, 2.0]
    assert kd_weight(_config(lambda_kd=2.0, kd_rampup_steps=0), 0) == 2.0  # no ramp: full weight at once
    from orchestration.cli.train_cmd import _KD_RAMPUP_STEPS

    assert _KD_RAMPUP_STEPS.default == TrainConfig().kd_rampup_steps > 0  # `train`'s default is the config's
    table, manifest = data
    cohort = build_cohort(config, schema_for(manifest, config))
    batch = encode(table.slice(0, 64), schema_for(manifest, config))
    with torch.no_grad():
        early, full = (cohort_step_losses(cohort, batch, config, step=s)["student_0"] for s in (0, 10))
    assert early < full  # the soft-label term is positive: a quarter of its weight at step 0
