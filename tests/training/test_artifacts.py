"""Model versions: safetensors + JSON round trip, shared tensors, atomic listing, bad ids refused."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from training import artifacts
from training.artifacts import ArtifactError, DataSlice, ModelRecord


def _cohort() -> dict[str, nn.Module]:
    shared = nn.Embedding(10, 4)
    a = nn.ModuleDict({"emb": shared, "head": nn.Linear(4, 1)})
    b = nn.ModuleDict({"emb": shared, "head": nn.Linear(4, 1)})
    return {"teacher": a, "student_0": b}


def _save(settings, models, parent=None) -> str:
    records = {n: ModelRecord(family="dnn", config={"d": 4}, metrics={"auc": 0.7}) for n in models}
    return artifacts.save_version(
        settings, models, records, {"categorical": ["user_id"]},
        feature_service="ctr_v1", train=DataSlice("ds-a", 10, part="head"),
        holdout=DataSlice("ds-a", 5, part="tail"), train_config={"lambda_kd": 1.0},
        parent=parent, serve="student_0",
    ).version


def test_save_and_read_back_weights_and_config(settings) -> None:
    models = _cohort()
    version = _save(settings, models)
    path = settings.registry_dir / version
    assert sorted(p.name for p in path.iterdir()) == ["config.json", "model.safetensors"]
    config = artifacts.read_config(settings, version)
    assert config.feature_service == "ctr_v1" and config.serve == "student_0"
    assert config.models["teacher"].metrics == {"auc": 0.7} and config.models["teacher"].role == "baseline"
    assert config.holdout == DataSlice("ds-a", 5, part="tail")
    for name, model in models.items():
        state = artifacts.read_weights(settings, version, name)
        assert state.keys() == model.state_dict().keys()
        for key, value in model.state_dict().items():
            torch.testing.assert_close(state[key], value)
    # No pickle anywhere: the weights file is safetensors (8-byte header length + JSON header).
    raw = (path / "model.safetensors").read_bytes()
    header = json.loads(raw[8 : 8 + int.from_bytes(raw[:8], "little")])
    assert "teacher.emb.weight" in header


def test_list_versions_tracks_lineage_and_ignores_partial_writes(settings) -> None:
    first = _save(settings, _cohort())
    second = _save(settings, _cohort(), parent=first)
    (settings.registry_dir / ".tmp-crashed").mkdir()
    listed = [v.version for v in artifacts.list_versions(settings)]
    assert listed == [first, second]
    assert artifacts.latest_version(settings) == second
    assert artifacts.read_config(settings, second).parent == first


def test_bad_requests_fail_clearly(settings) -> None:
    version = _save(settings, _cohort())
    with pytest.raises(ArtifactError, match="invalid version"):
        artifacts.read_config(settings, "../etc")
    with pytest.raises(ArtifactError, match="no complete model version"):
        artifacts.read_config(settings, "v-missing")
    with pytest.raises(ArtifactError, match="no weights for model"):
        artifacts.read_weights(settings, version, "nobody")
    with pytest.raises(ValueError, match="serve="):
        artifacts.save_version(
            settings, _cohort(), {n: ModelRecord("dnn", {}) for n in _cohort()}, {},
            feature_service=None, train=DataSlice(None, 0), holdout=None, train_config={}, serve="ghost",
        )
    assert artifacts.list_versions(settings)[-1].version == version


def _rewrite_config(settings, version: str, change) -> None:
    path = settings.registry_dir / version / "config.json"
    data = json.loads(path.read_text())
    change(data)
    path.write_text(json.dumps(data))


def test_format_1_folder_loads_without_a_holdout_and_an_unknown_format_is_refused(settings) -> None:
    version = _save(settings, _cohort())

    def to_format_1(data: dict) -> None:
        # What versions looked like before the typed record: one untyped "window" block.
        data.pop("train"), data.pop("holdout")
        data["format"] = 1
        data["window"] = {"dataset": "ds-old", "content_hash": "abc", "dataset_window": {"start": None},
                          "train": {"start": "2026-01-01 00:00:00+00:00", "end": "2026-01-01 12:00:00+00:00",
                                    "rows": 10},
                          "holdout": {"start": "2026-01-01 12:00:00+00:00", "end": None, "rows": 5}}

    _rewrite_config(settings, version, to_format_1)
    old = artifacts.read_config(settings, version)
    assert old.train == DataSlice("ds-old", 10, "2026-01-01 00:00:00+00:00", "2026-01-01 12:00:00+00:00",
                                  "head", "abc")
    assert old.holdout is None  # format 1 never said which rows were held out
    assert old.models["student_0"].metrics == {"auc": 0.7}

    _rewrite_config(settings, version, lambda d: d.update(format=99))
    with pytest.raises(ArtifactError, match=r"config format 99; this ctrflow reads formats 1 and 2"):
        artifacts.read_config(settings, version)
    _rewrite_config(settings, version, lambda d: d.update(format=2, models=None))
    with pytest.raises(ArtifactError, match="incomplete config.json"):
        artifacts.read_config(settings, version)
