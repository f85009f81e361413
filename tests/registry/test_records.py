"""The typed records that cross packages: JSON round trips, pre-record files, unknown formats refused."""

from __future__ import annotations

import json

import pytest

from features.manifest import DatasetManifest, ManifestError
from tests.training.synthetic import make_manifest
from training.gate import GATE_FORMAT_VERSION, Blessing, GateRecord, GateThresholds, servability_blessing
from training.registry import ChampionPointer


def test_manifest_round_trips_and_reads_the_pre_record_layout() -> None:
    manifest = make_manifest("ds-x", rows=10, label_rate=0.1)
    assert DatasetManifest.from_json(manifest.to_json()) == manifest
    # What `dataset build` wrote before the record: no "format" and no "category" column role.
    old = manifest.to_dict()
    del old["format"]
    del old["columns"]["category"]
    assert DatasetManifest.from_dict(old) == manifest
    with pytest.raises(ManifestError, match="format 2; this ctrflow reads format 1"):
        DatasetManifest.from_dict(manifest.to_dict() | {"format": 2})
    with pytest.raises(ManifestError, match="incomplete: missing or bad 'rows'"):
        DatasetManifest.from_dict({k: v for k, v in manifest.to_dict().items() if k != "rows"})
    with pytest.raises(ManifestError, match="not JSON"):
        DatasetManifest.from_json("{")


def test_gate_record_and_pointer_round_trip() -> None:
    blessings = (Blessing("data", True, {"rows": 3}),
                 Blessing("quality", False, {"auc": 0.5}, {"x": 1}, ("low",)),
                 servability_blessing(None, "v1", None))
    record = GateRecord(version="v1", against=None, at="2026-01-01T00:00:00+00:00", blessings=blessings)
    assert GateRecord.from_json(record.to_json()) == record
    assert not record.passed and record.failures() == ["quality: low", "servability: not checked"]
    assert json.loads(record.to_json())["format"] == GATE_FORMAT_VERSION
    with pytest.raises(ValueError, match="gate record format"):
        GateRecord.from_dict(record.to_dict() | {"format": 0})
    # Only all three named blessings, all PASS, make a PASS.
    assert not GateRecord("v1", None, "t", blessings[:1]).passed
    all_pass = tuple(Blessing(n, True) for n in ("data", "quality", "servability"))
    assert GateRecord("v1", None, "t", all_pass).passed

    pointer = ChampionPointer(version="v1", model="student_0", promoted_at="t", feature_service="ctr")
    assert ChampionPointer.from_json(pointer.to_json()) == pointer


def test_thresholds_come_from_settings(settings) -> None:
    thresholds = GateThresholds.from_settings(settings)
    assert thresholds.to_dict() == {"auc_tolerance": 0.002, "logloss_tolerance": 0.002, "pcoc_low": 0.8,
                                    "pcoc_high": 1.25, "min_slice_rows": 200}
