"""`export_predictions` and `ctrflow evaluate --predictions`: per-row scores of every model."""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from synthetic import make_dataset, write_dataset
from tiny import BASELINE
from typer.testing import CliRunner

from orchestration.cli import app
from training.cycle import PREDICTION_KEYS, evaluate_version, export_predictions, run_cycle
from training.metrics import auc, logloss
from training.trainer import TrainConfig, time_split


@pytest.fixture
def saved(settings) -> tuple[str, pa.Table]:
    table, manifest = make_dataset(n_rows=400, seed=6, name="day1")
    # Requests of four impressions, so the file's request column is more than a copy of the row id.
    grouped = pa.array([f"r{i // 4}" for i in range(table.num_rows)])
    table = table.set_column(table.schema.get_field_index("request_id"), "request_id", grouped)
    write_dataset(settings, table, manifest)
    config = TrainConfig(teacher_grade=None, students=0, baselines=("lr", "dnn"), baseline=BASELINE,
                         batch_size=64, threads=1)
    result = run_cycle(settings, table, manifest, config, progress=False, report=False)
    return result.version, table


def test_exported_scores_are_the_models_scores_row_by_row(settings, saved, tmp_path) -> None:
    version, table = saved
    holdout = time_split(table, "event_time", 0.2)[1]
    out = export_predictions(settings, version, holdout, tmp_path / "sub" / "preds.parquet")
    assert (out.rows, sorted(out.models)) == (holdout.num_rows, ["dnn", "lr"])
    written = pq.read_table(out.path)
    assert written.column_names == [*PREDICTION_KEYS, *out.models]
    for key in PREDICTION_KEYS:
        assert written.column(key).to_pylist() == holdout.column(key).to_pylist()
    metrics = evaluate_version(settings, version, holdout)
    labels = written.column("label").to_numpy()
    for name in ("lr", "dnn"):
        scores = written.column(name).to_numpy()
        assert written.schema.field(name).type == pa.float64()
        assert np.all((scores > 0) & (scores < 1))
        assert auc(labels, scores) == pytest.approx(metrics[name]["auc"], abs=1e-9)
        assert logloss(labels, scores) == pytest.approx(metrics[name]["logloss"], abs=1e-6)
    assert not list((tmp_path / "sub").glob(".*partial"))


def test_export_refuses_bad_requests_and_keeps_the_old_file(settings, saved, tmp_path) -> None:
    version, table = saved
    with pytest.raises(ValueError, match=r"\.parquet"):
        export_predictions(settings, version, table, tmp_path / "p.csv")
    with pytest.raises(ValueError, match="no model"):
        export_predictions(settings, version, table, tmp_path / "p.parquet", ["teacher"])
    existing = tmp_path / "keep.parquet"
    existing.write_bytes(b"old")
    with pytest.raises(ValueError, match="key columns"):
        export_predictions(settings, version, table.drop_columns(["request_id"]), existing)
    assert existing.read_bytes() == b"old"


def test_cli_evaluate_writes_predictions(settings, saved, home, tmp_path) -> None:
    version, _ = saved
    runner = CliRunner()
    path = tmp_path / "preds.parquet"
    result = runner.invoke(app, ["--home", str(home), "evaluate", version, "--name", "lr",
                                 "--predictions", str(path), "--json"])
    assert result.exit_code == 0, result.output
    out = json.loads(result.output.strip().splitlines()[-1])
    assert out["predictions"] == str(path) and "request_gauc" in out["models"]["lr"]
    assert pq.read_table(path).column_names == [*PREDICTION_KEYS, "lr"]
    result = runner.invoke(app, ["--home", str(home), "evaluate", version, "--predictions",
                                 str(tmp_path / "p.txt")])
    assert result.exit_code == 2 and result.output.startswith("error: ") and ".parquet" in result.output
