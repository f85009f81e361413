"""Reference scores beside the models: `ctrflow evaluate` (table and JSON), `ctrflow train`'s summary and
the run report show them on the models' holdout rows and flag a model that does not beat one."""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pytest
from synthetic import make_dataset, write_dataset
from tiny import BASELINE
from typer.testing import CliRunner

from orchestration.cli import app
from training import artifacts
from training.cycle import recorded_holdout, run_cycle
from training.inputs import InputSchema
from training.metrics import auc
from training.references import reference_aucs, reference_scores
from training.trainer import TrainConfig

LEAK = "user_stats__ctr_1h"


def _leaky_table() -> tuple[pa.Table, object]:
    """A training set where one dense column nearly is the label: no model trained a few steps at a tiny
    learning rate can rank as well as that column alone, so the model must be flagged below it."""
    table, manifest = make_dataset(n_rows=400, seed=11, name="leaky")
    labels = np.asarray(table.column("label").to_numpy(), np.float64)
    noise = np.random.default_rng(0).uniform(0.0, 0.6, size=len(labels))
    table = table.set_column(table.schema.get_field_index(LEAK), LEAK, pa.array(0.5 * labels + noise))
    # Requests of four impressions, so per-request gAUC is defined for models and references alike.
    grouped = pa.array([f"r{i // 4}" for i in range(table.num_rows)])
    table = table.set_column(table.schema.get_field_index("request_id"), "request_id", grouped)
    return table, manifest


def _grouped_auc(labels: np.ndarray, scores: np.ndarray, keys: list[str]) -> float:
    """Impression-weighted per-group AUC, written out group by group (independent of metrics.gauc)."""
    keys_arr = np.asarray(keys)
    total = weight = 0.0
    for key in np.unique(keys_arr):
        mask = keys_arr == key
        if 0 < labels[mask].sum() < mask.sum():
            total += auc(labels[mask], scores[mask]) * mask.sum()
            weight += mask.sum()
    return total / weight


def test_evaluate_train_and_report_show_references_and_flag_the_loser(settings, home) -> None:
    table, manifest = _leaky_table()
    write_dataset(settings, table, manifest)
    config = TrainConfig(teacher_grade=None, students=0, baselines=("lr",), baseline=BASELINE,
                         batch_size=64, lr=1e-6, threads=1)
    trained = run_cycle(settings, table, manifest, config, progress=False)

    result = CliRunner().invoke(app, ["--home", str(home), "evaluate", trained.version, "--json"])
    assert result.exit_code == 0, result.output
    out = json.loads(result.stdout.strip().splitlines()[-1])
    assert set(out["models"]) == {"lr"} and set(out["references"]) == {"item_ctr", "item_popularity", "dense"}

    # The values are the reference module's (the gate's floors) on the version's recorded holdout.
    version = artifacts.read_config(settings, trained.version)
    holdout = recorded_holdout(settings, version)
    schema = InputSchema.from_dict(version.input_schema)
    labels = np.asarray(holdout.column("label").to_numpy(), np.float64)
    scores = reference_scores(holdout, schema)
    aucs = reference_aucs(labels, scores)
    best = out["references"]["dense"]
    assert best["column"] == LEAK and best["label"] == f"ref: best feature ({LEAK})"
    assert best["auc"] == max(v for k, v in aucs.items() if k.startswith("dense:")) == aucs[f"dense:{LEAK}"]
    assert out["references"]["item_ctr"]["auc"] == aucs["item_ctr:item_stats__ctr_24h"]
    assert out["references"]["item_popularity"]["auc"] == aucs["item_popularity:item_stats__impressions_all"]
    leak = scores[f"dense:{LEAK}"]
    users, requests = holdout.column("user_id").to_pylist(), holdout.column("request_id").to_pylist()
    assert best["gauc"] == pytest.approx(_grouped_auc(labels, leak, users), abs=1e-12)
    assert best["request_gauc"] == pytest.approx(_grouped_auc(labels, leak, requests), abs=1e-12)
    for key in ("logloss", "pcoc", "ece"):
        assert key not in best  # a raw column has no probability scale

    # lr, barely trained, ranks far below the leaking column: named below it on every rank metric.
    below = {(b["model"], b["reference"]): b["metrics"] for b in out["below_references"]}
    assert set(below[("lr", best["label"])]) == {"auc", "gauc", "request_gauc"}
    assert below[("lr", best["label"])]["auc"] == [out["models"]["lr"]["auc"], best["auc"]]

    # Training time: the same references on the same holdout rows.
    summary = trained.summary()
    assert summary["references"] == out["references"]
    assert summary["below_references"] == out["below_references"]

    report = (trained.run_dir / "report.md").read_text()
    assert f"| ref: best feature ({LEAK}) | reference | {best['auc']:.4f} |" in report
    assert "| ref: item popularity (item_stats__impressions_all) | reference |" in report
    assert f"**BELOW REFERENCE: lr is below ref: best feature ({LEAK}): auc " in report
    page = (trained.run_dir / "report.html").read_text()
    assert f"<strong>BELOW REFERENCE: lr is below ref: best feature ({LEAK})" in page

    text = CliRunner().invoke(app, ["--home", str(home), "evaluate", trained.version])
    assert text.exit_code == 0, text.output
    assert f"below reference: lr is below ref: best feature ({LEAK})" in " ".join(text.output.split())
