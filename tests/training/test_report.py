"""The run report writes Markdown, HTML and the three plots from plain per-model results."""

from __future__ import annotations

from pathlib import Path

from training.report import write_report


def test_report_contains_every_model_metric_plot_and_cost(tmp_path: Path) -> None:
    results = {
        "teacher": {
            "family": "teacher", "metrics": {"auc": 0.7312, "logloss": 0.41, "pcoc": 1.02},
            "loss_history": [0.7 - 0.001 * i for i in range(120)], "params": 12345,
            "reliability": {"predicted": [0.05, 0.2], "observed": [0.06, 0.18], "count": [80, 20]},
            "train_samples_per_s": 900.0, "infer_ms_100": 12.5,
        },
        "student_0": {
            "family": "student", "metrics": {"auc": 0.7101, "logloss": 0.43, "pcoc": 0.97},
            "loss_history": [0.72 - 0.001 * i for i in range(120)], "params": 2345,
            "reliability": {"predicted": [0.04, 0.25], "observed": [0.05, 0.2], "count": [70, 30]},
            "train_samples_per_s": 3000.0, "infer_ms_100": 1.5,
        },
    }
    md = write_report(tmp_path / "run", "test run", results, notes=["GPU path unmeasured"], oracle_auc=0.75)
    text = md.read_text()
    for needle in ("0.7312", "0.7101", "12345", "12.50", "GPU path unmeasured", "learning_curves.png"):
        assert needle in text
    for png in ("learning_curves.png", "auc_by_model.png", "calibration.png"):
        data = (tmp_path / "run" / png).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 1000
    assert "<td>0.7312</td>" in (tmp_path / "run" / "report.html").read_text()
