"""The promotion gate and the registry's use cases on real trained versions (see conftest.py)."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file

from serving_stub.champion import read_gate_record
from training import registry
from training.gate import GateError
from training.registry import PromotionRefused, RegistryError, read_champion_pointer

from .conftest import offline_servability


def _status(settings, version: str) -> str:
    return registry.show_version(settings, version).status


def test_first_version_passes_the_floors_and_is_promoted(trained) -> None:
    settings, v = trained
    gate = registry.gate_version(settings, v.good, offline_servability)
    assert gate.passed and gate.against is None, gate.failures()
    quality = gate.blessing("quality")
    floors = quality.numbers["floors"]
    assert set(floors) == {"item_ctr", "item_popularity", "dense"}
    assert floors["item_ctr"]["name"] == "item_ctr:item_stats__ctr_24h"
    assert floors["item_popularity"]["name"] == "item_popularity:item_stats__impressions_all"
    assert all(quality.numbers["challenger"]["auc"] > f["auc"] for f in floors.values())
    assert "champion" not in quality.numbers  # no champion: floors only
    assert quality.thresholds["pcoc_low"] == settings.gate_pcoc_low
    assert gate.blessing("data").numbers["results_path"].endswith("dataset-results.json")
    assert gate.blessing("servability").numbers["bad_scores"] == 0
    # Mirrored beside the artifacts, where the serving stub's /v1/model reads it (no DuckDB open).
    assert read_gate_record(settings, v.good) == json.loads(gate.to_json())

    report = registry.promote(settings, v.good, servability=offline_servability)
    assert report.previous is None and not report.forced
    pointer = read_champion_pointer(settings)
    assert (pointer.version, pointer.model, pointer.feature_service) == (v.good, "student_0", "sequence_ctr")
    assert _status(settings, v.good) == "champion"
    assert [(e.action, e.version) for e in registry.history(settings)] == [("promote", v.good)]
    with pytest.raises(RegistryError, match="already the champion"):
        registry.promote(settings, v.good, servability=offline_servability)


def test_better_challenger_is_promoted_and_a_worse_one_rejected_with_its_numbers(trained) -> None:
    settings, v = trained
    registry.promote(settings, v.weak, force=True, reason="bootstrap before any real model")
    gate = registry.gate_version(settings, v.good, offline_servability)
    assert gate.passed and gate.against == v.weak, gate.failures()
    numbers = gate.blessing("quality").numbers
    assert numbers["champion"]["version"] == v.weak
    assert numbers["challenger"]["auc"] > numbers["champion"]["auc"]
    registry.promote(settings, v.good, servability=offline_servability)
    assert read_champion_pointer(settings).version == v.good
    assert (_status(settings, v.good), _status(settings, v.weak)) == ("champion", "archived")

    # Small slices are gated too here: the light and heavy users' numbers are judged.
    strict = settings.model_copy(update={"gate_min_slice_rows": 20})
    gate = registry.gate_version(strict, v.weak2, offline_servability)
    assert not gate.passed
    quality = gate.blessing("quality")
    assert not quality.passed and gate.blessing("data").passed and gate.blessing("servability").passed
    text = "\n".join(quality.reasons)
    # (Its PCOC passes: the validation-fitted calibration repairs even a barely trained model's level.)
    assert "overall: AUC" in text and "not above the" in text
    assert "heavy users: AUC" in text and quality.numbers["challenger"]["pcoc"] > 0
    slices = quality.numbers["slices"]
    assert slices["new"] == {"rows": 0, "clicks": 0, "gated": False}  # every holdout user trained
    assert slices["light"]["gated"] and slices["heavy"]["gated"]
    assert slices["light"]["rows"] + slices["heavy"]["rows"] == quality.numbers["rows"]
    record = registry.show_version(settings, v.weak2)
    assert record.status == "rejected" and "overall: AUC" in record.status_reason
    assert record.gate == gate

    with pytest.raises(PromotionRefused, match="did not pass the gate") as refused:
        registry.promote(settings, v.weak2, servability=offline_servability)
    assert refused.value.gate.against == v.good
    assert read_champion_pointer(settings).version == v.good


def test_a_gate_against_an_older_champion_is_redone_before_promotion(trained) -> None:
    settings, v = trained
    assert registry.gate_version(settings, v.good, offline_servability).against is None
    registry.promote(settings, v.weak, force=True, reason="hotfix")
    report = registry.promote(settings, v.good, servability=offline_servability)
    assert report.gate.against == v.weak and report.gate.passed  # re-gated against the new champion


def test_a_missing_or_inconsistent_threshold_is_an_error_not_a_blessing(trained) -> None:
    settings, v = trained
    with pytest.raises(GateError, match="gate_auc_tolerance"):
        registry.gate_version(settings.model_copy(update={"gate_auc_tolerance": None}), v.good,
                              offline_servability)
    with pytest.raises(GateError, match="must enclose 1"):
        registry.gate_version(settings.model_copy(update={"gate_pcoc_low": 1.1}), v.good, offline_servability)
    record = registry.show_version(settings, v.good)
    assert record.gate is None and record.status == "candidate"


def test_no_servability_check_is_an_explicit_fail(trained) -> None:
    settings, v = trained
    gate = registry.gate_version(settings, v.good)
    assert gate.blessing("quality").passed and gate.blessing("data").passed
    assert gate.blessing("servability").reasons == ("not checked",) and not gate.passed
    with pytest.raises(PromotionRefused, match="servability: not checked"):
        registry.promote(settings, v.good)
    assert read_champion_pointer(settings) is None


def test_a_nan_model_and_a_corrupt_artifact_fail_the_gate(trained) -> None:
    settings, v = trained
    weights = settings.registry_dir / v.good / "model.safetensors"
    tensors = load_file(str(weights))
    save_file({k: torch.full_like(t, float("nan")) if t.is_floating_point() else t
               for k, t in tensors.items()}, str(weights))
    gate = registry.gate_version(settings, v.good, offline_servability)
    assert not gate.passed
    assert any("not finite" in r for r in gate.blessing("quality").reasons)
    assert not gate.blessing("servability").passed
    assert _status(settings, v.good) == "rejected"

    corrupt = settings.registry_dir / v.weak / "model.safetensors"
    corrupt.write_bytes(corrupt.read_bytes()[:100])
    gate = registry.gate_version(settings, v.weak, offline_servability)
    reasons = gate.blessing("quality").reasons
    assert any("cannot be scored" in r and "unreadable weights" in r for r in reasons)
    assert gate.blessing("servability").reasons[0].startswith("check raised ArtifactError")
    assert _status(settings, v.weak) == "rejected"


def test_force_needs_a_reason_and_records_it(trained) -> None:
    settings, v = trained
    for reason in (None, "  "):
        with pytest.raises(RegistryError, match="needs a --reason"):
            registry.promote(settings, v.weak, force=True, reason=reason)
    assert registry.history(settings) == ()
    report = registry.promote(settings, v.weak, force=True, reason="incident 42: known-good rollback target")
    assert report.forced and report.gate is None
    entry = registry.history(settings)[-1]
    assert entry.forced and entry.reason == "incident 42: known-good rollback target"
    assert registry.show_version(settings, v.weak).status_reason.startswith("forced: incident 42")


def test_rollback_restores_the_previous_champion_and_rejects_the_demoted(trained) -> None:
    settings, v = trained
    with pytest.raises(RegistryError, match="nothing was promoted"):
        registry.rollback(settings)
    registry.promote(settings, v.weak, force=True, reason="first")
    registry.promote(settings, v.good, servability=offline_servability)
    assert read_champion_pointer(settings).version == v.good
    report = registry.rollback(settings, reason="latency regression")
    assert (report.restored, report.demoted) == (v.weak, v.good)
    assert read_champion_pointer(settings).version == v.weak == registry.current_champion(settings)
    assert (_status(settings, v.weak), _status(settings, v.good)) == ("champion", "rejected")
    actions = [(e.action, e.version, e.previous) for e in registry.history(settings)]
    assert actions == [("promote", v.weak, None), ("promote", v.good, v.weak), ("rollback", v.weak, v.good)]
    with pytest.raises(RegistryError, match="no earlier champion"):
        registry.rollback(settings)
    # A new promotion after a rollback stacks on the restored champion.
    registry.promote(settings, v.weak2, force=True, reason="try")
    assert registry.rollback(settings).restored == v.weak


def test_old_format_folders_load_without_a_holdout_or_are_refused(trained) -> None:
    settings, v = trained
    for name, fmt in (("v-old-format", 1), ("v-future-format", 99)):
        folder = settings.registry_dir / name
        shutil.copytree(settings.registry_dir / v.good, folder)
        data = json.loads((folder / "config.json").read_text())
        train = data.pop("train")
        data.pop("holdout")
        data.update(version=name, format=fmt, window={"dataset": train["dataset"], "train": train})
        (folder / "config.json").write_text(json.dumps(data))
    old = registry.show_version(settings, "v-old-format")
    assert old.holdout is None and old.train.dataset == "ds-reg"
    gate = registry.gate_version(settings, "v-old-format", offline_servability)
    assert any("recorded no holdout" in r for r in gate.blessing("quality").reasons)
    with pytest.raises(RegistryError, match="config format 99; this ctrflow reads formats 1 and 2"):
        registry.show_version(settings, "v-future-format")
    listing = registry.list_registered(settings)
    assert "v-old-format" in {r.version for r in listing.versions}
    assert "config format 99" in listing.unreadable["v-future-format"]


def test_verify_checks_pointer_artifact_and_feature_service(trained) -> None:
    settings, v = trained
    assert registry.verify(settings).ok  # no champion, no pointer: consistent
    registry.promote(settings, v.good, force=True, reason="verify")
    checks = {c.name: c for c in registry.verify(settings).checks}
    assert checks["pointer"].ok and checks["artifact"].ok
    assert not checks["feature_service"].ok  # no Feast registry in this home
    registry.write_champion_pointer(settings, None)
    assert not {c.name: c for c in registry.verify(settings).checks}["pointer"].ok
    (settings.registry_dir / v.good / "model.safetensors").unlink()
    checks = {c.name: c for c in registry.verify(settings).checks}
    assert not checks["artifact"].ok and "no complete model version" in checks["artifact"].detail
