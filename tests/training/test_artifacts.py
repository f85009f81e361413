"""Model versions: safetensors + JSON round trip, shared tensors, atomic listing, bad ids refused."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from training import artifacts
from training.artifacts import ArtifactError, ModelRecord


def _cohort() -> dict[str, nn.Module]:
    shared = nn.Embedding(10, 4)
    a = nn.ModuleDict({"emb": shared, "head": nn.Linear(4, 1)})
    b = nn.ModuleDict({"emb": shared, "head": nn.Linear(4, 1)})
    return {"teacher": a, "student_0": b}


def _save(settings, models, parent=None) -> str:
    records = {n: ModelRecord(family="dnn", config={"d": 4}, metrics={"auc": 0.7}) for n in models}
    return artifacts.save_version(
        settings, models, records, {"categorical": ["user_id"]},
        feature_service="ctr_v1", window={"start": "a", "end": "b"}, train_config={"lambda_kd": 1.0},
        parent=parent, serve="student_0",
    )


def test_save_and_read_back_weights_and_config(settings) -> None:
    models = _cohort()
    version = _save(settings, models)
    path = settings.registry_dir / version
    assert sorted(p.name for p in path.iterdir()) == ["config.json", "model.safetensors"]
    config = artifacts.read_config(settings, version)
    assert config["feature_service"] == "ctr_v1" and config["serve"] == "student_0"
    assert config["models"]["teacher"]["metrics"] == {"auc": 0.7}
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
    listed = [v["version"] for v in artifacts.list_versions(settings)]
    assert listed == [first, second]
    assert artifacts.latest_version(settings) == second
    assert artifacts.read_config(settings, second)["parent"] == first


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
            feature_service=None, window={}, train_config={}, serve="ghost",
        )
    assert artifacts.list_versions(settings)[-1]["version"] == version
