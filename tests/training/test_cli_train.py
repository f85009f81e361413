"""`ctrflow train` / `ctrflow evaluate` end to end on a contract-conforming training set on disk."""

from __future__ import annotations

import json

import pytest
from synthetic import make_dataset, write_dataset
from tiny import tiny_train_config
from typer.testing import CliRunner

from orchestration.cli import app
from training import artifacts


@pytest.fixture
def runner() -> CliRunner:
    return CliRunner()


def _last_json(output: str) -> dict:
    return json.loads(output.strip().splitlines()[-1])


def test_train_then_evaluate_the_saved_version(runner, settings, home) -> None:
    table, manifest = make_dataset(n_rows=400, seed=5, name="day1")
    write_dataset(settings, table, manifest)
    wanted = ("teacher", "student", "batch_size", "threads")
    overrides = {k: v for k, v in tiny_train_config().items() if k in wanted}
    result = runner.invoke(app, [
        "--home", str(home), "train", "--teacher-grade", "G1", "--students", "2", "--baselines", "lr",
        "--config", json.dumps(overrides), "--json",
    ])
    assert result.exit_code == 0, result.output
    # --json: stdout is the one JSON object; the progress bar and the ETA go to stderr.
    out = json.loads(result.stdout)
    assert "train" in result.stderr and "ETA:" in result.stderr and "ms per step" in result.stderr
    assert out["dataset"] == "day1"
    assert set(out["models"]) == {"teacher", "student_0", "student_1", "lr"}
    version = out["version"]
    assert artifacts.latest_version(settings) == version

    # With no --dataset, evaluate scores the holdout the version recorded (the latest 20 % by time):
    # it must reproduce the training run's numbers.
    result = runner.invoke(app, ["--home", str(home), "evaluate", version, "--json"])
    assert result.exit_code == 0, result.output
    evaluated = _last_json(result.stdout)
    assert evaluated["rows"] == 80 and evaluated["dataset"] == "holdout of day1"
    for name, metrics in out["models"].items():
        assert evaluated["models"][name]["auc"] == pytest.approx(metrics["auc"], abs=1e-6)
        assert evaluated["models"][name]["logloss"] == pytest.approx(metrics["logloss"], abs=1e-6)

    # The whole training set overlaps the training window: refused in one line, unless asked for.
    result = runner.invoke(app, ["--home", str(home), "evaluate", version, "--dataset", "day1"])
    assert result.exit_code == 2 and "inside" in result.output and "training window" in result.output
    assert "Traceback" not in result.output
    result = runner.invoke(
        app, ["--home", str(home), "evaluate", version, "--dataset", "day1", "--allow-overlap", "--json"]
    )
    assert result.exit_code == 0, result.output
    assert _last_json(result.output)["overlap_rows"] >= 320

    # A second cycle warm-starts from the first and records the lineage.
    result = runner.invoke(app, [
        "--home", str(home), "train", "--teacher-grade", "G1", "--students", "2", "--baselines", "lr",
        "--config", json.dumps(overrides), "--warm-start", version, "--json",
    ])
    assert result.exit_code == 0, result.output
    second = _last_json(result.stdout)
    assert artifacts.read_config(settings, second["version"]).parent == version
    assert sorted(second["warm_started"]) == ["lr", "student_0", "student_1", "teacher"]


def test_clear_errors_without_data_or_with_bad_flags(runner, home) -> None:
    result = runner.invoke(app, ["--home", str(home), "train", "--json"])
    assert result.exit_code == 2
    assert "no dataset built yet" in " ".join(result.output.split())
    result = runner.invoke(app, ["--home", str(home), "train", "--baselines", "xgb"])
    assert result.exit_code == 2 and "unknown baselines" in result.output
    result = runner.invoke(app, ["--home", str(home), "evaluate", "latest"])
    assert result.exit_code == 2 and "no model versions" in result.output
    result = runner.invoke(app, ["--home", str(home), "train", "--config", "[1]"])
    assert result.exit_code == 2 and "JSON object" in result.output
    result = runner.invoke(app, ["--home", str(home), "train", "--at", "latest", "--dataset", "day1"])
    assert result.exit_code == 2 and result.output.startswith("error: --at builds its own training")
