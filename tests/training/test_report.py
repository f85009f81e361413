"""The run report writes Markdown, HTML and the three plots from plain per-model results."""

from __future__ import annotations

from pathlib import Path

from training.references import DENSE, ITEM_POPULARITY, ReferenceScore
from training.report import write_report

BEST = ReferenceScore(DENSE, "item_stats__ctr_24h", 1.0, {"auc": 0.6100, "gauc": 0.6000})
POPULARITY = ReferenceScore(ITEM_POPULARITY, "item_stats__impressions_7d", 1.0,
                            {"auc": 0.5500, "gauc": 0.5200})


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


def _captured_figure(monkeypatch, results, oracle=None, reference=None):
    import training.report as report

    captured = {}

    def keep(fig, path):
        captured["fig"] = fig
        return path

    monkeypatch.setattr(report, "_save", keep)
    assert report.plot_learning_curves(results, Path("unused.png"), oracle, reference) is not None
    return captured["fig"]


def test_learning_curves_plot_bce_and_the_validation_panels(monkeypatch) -> None:
    teacher_bce = [0.25] * 60
    student = {"loss_history": [2.1] * 60, "bce_history": [0.27] * 60,
               "val_curve": [{"step": 20, "auc": 0.70, "logloss": 0.31}, {"step": 40, "auc": 0.72,
                                                                         "logloss": 0.30}]}
    results = {"teacher": {"loss_history": teacher_bce, "bce_history": teacher_bce,
                           "val_curve": [{"step": 20, "auc": 0.71, "logloss": 0.3}]},
               "student_0": student}
    fig = _captured_figure(monkeypatch, results, oracle=0.78)
    train_ax, auc_ax, loss_ax = fig.axes
    drawn = [max(line.get_ydata()) for line in train_ax.get_lines()]
    assert drawn == [0.25, 0.27]  # the BCE, not the student's 2.1 objective
    assert "BCE" in train_ax.get_ylabel()
    auc_lines = {line.get_label(): list(line.get_ydata()) for line in auc_ax.get_lines()}
    assert auc_lines["student_0"] == [0.70, 0.72] and auc_lines["oracle 0.7800"] == [0.78, 0.78]
    assert [list(line.get_ydata()) for line in loss_ax.get_lines()] == [[0.3], [0.31, 0.30]]


def test_report_lists_references_and_flags_only_the_models_below_them(tmp_path: Path) -> None:
    results = {"teacher": {"family": "teacher", "metrics": {"auc": 0.80, "gauc": 0.70, "logloss": 0.4}},
               "lr": {"family": "lr", "metrics": {"auc": 0.58, "gauc": 0.66, "logloss": 0.5}}}
    text = write_report(tmp_path / "run", "refs", results, references=(POPULARITY, BEST)).read_text()
    assert "| ref: best feature (item_stats__ctr_24h) | reference | 0.6100 | 0.6000 | – |" in text
    assert "| ref: item popularity (item_stats__impressions_7d) | reference | 0.5500 | 0.5200 | – |" in text
    flagged = [line for line in text.splitlines() if "BELOW REFERENCE" in line]
    # lr loses to the best feature on AUC only (its gAUC is above); it beats popularity; teacher beats all.
    assert flagged == ["- **BELOW REFERENCE: lr is below ref: best feature (item_stats__ctr_24h): "
                       "auc 0.5800 <= 0.6100**"]
    assert "<strong>BELOW REFERENCE: lr is below" in (tmp_path / "run" / "report.html").read_text()

    results["lr"]["metrics"]["auc"] = 0.62
    text = write_report(tmp_path / "run2", "refs", results, references=(POPULARITY, BEST)).read_text()
    assert "BELOW REFERENCE" not in text and "every model beats every reference" in text
    plain = write_report(tmp_path / "run3", "no refs", results).read_text()
    assert "ref:" not in plain and "every model beats" not in plain  # nothing compared, nothing claimed


def test_learning_curves_draw_the_best_feature_on_the_auc_panel(monkeypatch) -> None:
    results = {"lr": {"bce_history": [0.5, 0.4], "val_curve": [{"step": 1, "auc": 0.58, "logloss": 0.4}]}}
    fig = _captured_figure(monkeypatch, results, reference=BEST)
    auc_lines = {line.get_label(): list(line.get_ydata()) for line in fig.axes[1].get_lines()}
    assert auc_lines["ref: best feature (item_stats__ctr_24h), holdout 0.6100"] == [0.61, 0.61]


def test_learning_curves_without_validation_are_one_panel(monkeypatch) -> None:
    fig = _captured_figure(monkeypatch, {"lr": {"loss_history": [0.5, 0.4], "bce_history": [0.5, 0.4]}})
    assert len(fig.axes) == 1 and "validation" not in fig.axes[0].get_ylabel()


def test_learning_curves_show_the_choosing_request_gauc_and_the_kept_checkpoint(monkeypatch) -> None:
    points = [{"step": 0, "auc": 0.60, "logloss": 0.40, "request_gauc": 0.55},
              {"step": 10, "auc": 0.66, "logloss": 0.38, "request_gauc": 0.61},
              {"step": 20, "auc": 0.68, "logloss": 0.37, "request_gauc": 0.59}]
    results = {"student_0": {"bce_history": [0.5, 0.4], "val_curve": points, "metrics": {"best_step": 10}}}
    reference = ReferenceScore(DENSE, "item_stats__ctr_24h", 1.0, {"auc": 0.61, "request_gauc": 0.57})
    fig = _captured_figure(monkeypatch, results, reference=reference)
    _, auc_ax, gauc_ax, loss_ax = fig.axes
    assert "chooses" in gauc_ax.get_ylabel() and "chooses" not in auc_ax.get_ylabel()
    lines = {ln.get_label(): (list(ln.get_xdata()), list(ln.get_ydata())) for ln in gauc_ax.get_lines()}
    assert lines["student_0"] == ([0, 10, 20], [0.55, 0.61, 0.59])
    assert lines["ref: best feature (item_stats__ctr_24h), holdout 0.5700"][1] == [0.57, 0.57]
    # The star sits on the kept step (best request gAUC), not on the best AUC at step 20.
    stars = [line for line in gauc_ax.get_lines() if line.get_marker() == "*"]
    assert [(list(s.get_xdata()), list(s.get_ydata())) for s in stars] == [([10], [0.61])]
    assert not [line for line in auc_ax.get_lines() if line.get_marker() == "*"]
