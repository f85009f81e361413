"""Run report: Markdown + HTML with PNG plots (learning curves, AUC by model, calibration) and a cost table.

Input is plain data (one dict per model) so any run — the trainer, a benchmark — can produce a report:
``{"family", "metrics": {...}, "loss_history": [objective per step], "bce_history": [BCE per step],
"val_curve": [{"step", "auc", "logloss"}, ...], "reliability": {"predicted", "observed", "count"},
"params", "train_samples_per_s"}`` (missing keys are skipped). Reference scores (``training.references``:
single columns used as the score, on the same holdout rows) are listed beside the models, and a model that
does not beat one of them is flagged under the metrics table.
"""

from __future__ import annotations

import html
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # headless: the report is written to files, never shown
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from training.metrics import METRIC_TITLES  # noqa: E402
from training.references import ReferenceScore, best_feature, shortfalls  # noqa: E402

METRIC_COLUMNS = ("auc", "gauc", "request_gauc", "logloss", "pcoc", "ece", "oracle_gap")


def _smooth(values: Sequence[float], window: int) -> np.ndarray:
    v = np.asarray(values, dtype=np.float64)
    if window <= 1 or len(v) < window:
        return v
    return np.convolve(v, np.ones(window) / window, mode="valid")


def _reference_line(ax: Any, reference: ReferenceScore | None, where: str = "", metric: str = "auc") -> None:
    value = reference.metrics.get(metric) if reference is not None else None
    if reference is not None and _finite(value):
        ax.axhline(value, color="tab:grey", ls=":", label=f"{reference.label}{where} {value:.4f}")


def plot_learning_curves(
    results: Mapping[str, Mapping[str, Any]], path: Path, oracle: float | None = None,
    reference: ReferenceScore | None = None,
) -> Path | None:
    """Training BCE per model on one axis; validation AUC and logloss by step on their own panels when
    the results carry a ``val_curve``, and validation request gAUC on a panel of its own when it is what
    chose the checkpoints. Each model's BCE, not its whole objective: a student's objective adds KD and peer
    terms (an order of magnitude above a teacher's BCE), which would not compare. The oracle and the
    ``reference`` (the best single feature) are holdout figures, drawn as lines on the panel of their
    metric. A star marks each model's kept checkpoint (``best_step``) on the choosing metric's panel."""
    curves = {n: (r.get("bce_history") or r.get("loss_history")) for n, r in results.items()}
    curves = {n: c for n, c in curves.items() if c}
    val = {n: r["val_curve"] for n, r in results.items() if r.get("val_curve")}
    if not curves and not val:
        return None
    by_request = any("request_gauc" in p for points in val.values() for p in points)
    metrics = ["auc", *(["request_gauc"] if by_request else []), "logloss"] if val else []
    panels = (1 if curves else 0) + len(metrics)
    fig, axes = plt.subplots(1, panels, figsize=(5.5 * panels, 4), squeeze=False)
    axes = list(axes[0])
    if curves:
        ax = axes.pop(0)
        for name, hist in curves.items():
            window = max(1, len(hist) // 50)
            ax.plot(np.arange(len(_smooth(hist, window))) + window, _smooth(hist, window), label=name)
        objective = any(not r.get("bce_history") for n, r in results.items() if n in curves)
        ax.set_xlabel("step")
        ax.set_ylabel("training " + ("objective" if objective else "BCE") + ", moving average")
        ax.legend(fontsize=8)
        ax.grid(alpha=0.3)
    if val:
        panel = dict(zip(metrics, axes, strict=True))
        chooser = "request_gauc" if by_request else "auc"
        for name, points in val.items():
            steps = [p["step"] for p in points]
            for metric, ax in panel.items():
                drawn = [(s, p[metric]) for s, p in zip(steps, points, strict=True) if metric in p]
                (line,) = ax.plot([s for s, _ in drawn], [v for _, v in drawn], marker="o", ms=3, label=name)
                kept = results[name].get("metrics", {}).get("best_step")
                if metric == chooser and kept is not None:
                    value = next((v for s, v in drawn if s == kept), None)
                    if value is not None:
                        ax.plot([kept], [value], marker="*", ms=11, color=line.get_color(), ls="none")
        if oracle is not None and _finite(oracle):
            panel["auc"].axhline(oracle, color="tab:red", ls="--", label=f"oracle {oracle:.4f}")
        for metric in ("auc", "request_gauc"):
            if metric in panel:
                _reference_line(panel[metric], reference, ", holdout", metric)
        titles = {**METRIC_TITLES, "logloss": "logloss"}
        for metric, ax in panel.items():
            ax.set_xlabel("step")
            chooses = " (chooses; star = kept)" if metric == chooser else ""
            ax.set_ylabel(f"validation {titles[metric]}{chooses}")
            ax.legend(fontsize=8)
            ax.grid(alpha=0.3)
    return _save(fig, path)


def plot_auc_by_model(
    results: Mapping[str, Mapping[str, Any]], path: Path, oracle: float | None = None,
    reference: ReferenceScore | None = None,
) -> Path | None:
    names = [n for n, r in results.items() if _finite(r.get("metrics", {}).get("auc"))]
    if not names:
        return None
    aucs = [results[n]["metrics"]["auc"] for n in names]
    fig, ax = plt.subplots(figsize=(max(5, 0.9 * len(names) + 2), 4))
    ax.bar(names, aucs, color="tab:blue")
    if oracle is not None and _finite(oracle):
        ax.axhline(oracle, color="tab:red", ls="--", label=f"oracle {oracle:.4f}")
    _reference_line(ax, reference)
    if ax.get_lines():
        ax.legend(fontsize=8)
    lines = [y for line in ax.get_lines() for y in line.get_ydata()]
    lo, hi = min(aucs + lines), max(aucs + lines)
    ax.set_ylim(max(0.0, lo - 0.02), min(1.0, hi + 0.01))
    ax.set_ylabel("holdout AUC")
    ax.tick_params(axis="x", rotation=30)
    return _save(fig, path)


def plot_calibration(results: Mapping[str, Mapping[str, Any]], path: Path) -> Path | None:
    curves = {n: r["reliability"] for n, r in results.items() if r.get("reliability", {}).get("predicted")}
    if not curves:
        return None
    fig, ax = plt.subplots(figsize=(5, 5))
    top = max(max(c["predicted"] + c["observed"]) for c in curves.values())
    ax.plot([0, top], [0, top], color="grey", ls=":", label="perfect")
    for name, c in curves.items():
        ax.plot(c["predicted"], c["observed"], marker="o", ms=3, label=name)
    ax.set_xlabel("mean predicted CTR (bin)")
    ax.set_ylabel("observed CTR (bin)")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    return _save(fig, path)


def _save(fig: Any, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _finite(x: Any) -> bool:
    return isinstance(x, int | float) and math.isfinite(x)


def _fmt(x: Any, digits: int = 4) -> str:
    if _finite(x):
        return f"{x:.{digits}f}" if isinstance(x, float) else str(x)
    return "–"


def metrics_table(results: Mapping[str, Mapping[str, Any]], references: Sequence[ReferenceScore] = ()) -> str:
    """One row per model, then one per reference (family ``reference``; '–' where a raw column has no
    meaning: logloss, calibration)."""
    cols = [c for c in METRIC_COLUMNS if any(c in r.get("metrics", {}) for r in results.values())]
    lines = ["| model | family | " + " | ".join(cols) + " |", "|---|---|" + "---|" * len(cols)]
    rows = [(name, r.get("family", ""), r.get("metrics", {})) for name, r in results.items()]
    rows += [(ref.label, "reference", ref.metrics) for ref in references]
    for name, family, m in rows:
        lines.append(f"| {name} | {family} | " + " | ".join(_fmt(m.get(c)) for c in cols) + " |")
    return "\n".join(lines)


def reference_flags(
    results: Mapping[str, Mapping[str, Any]], references: Sequence[ReferenceScore]
) -> list[tuple[str, bool]]:
    """(line, flagged): one flagged line per model that does not beat a reference on a rank metric, else
    one unflagged line saying every model beats them; nothing without references (nothing compared)."""
    if not references:
        return []
    below = shortfalls({n: r.get("metrics", {}) for n, r in results.items()}, references)
    if not below:
        return [("every model beats every reference on AUC and gAUC", False)]
    return [(f"BELOW REFERENCE: {s.describe()}", True) for s in below]


def cost_table(results: Mapping[str, Mapping[str, Any]]) -> str:
    lines = [
        "| model | parameters | train samples/s | inference ms / 100 rows (batched) |",
        "|---|---|---|---|",
    ]
    for name, r in results.items():
        lines.append(
            f"| {name} | {_fmt(r.get('params'))} | {_fmt(r.get('train_samples_per_s'), 0)} "
            f"| {_fmt(r.get('infer_ms_100'), 2)} |"
        )
    return "\n".join(lines)


def write_report(
    run_dir: Path,
    title: str,
    results: Mapping[str, Mapping[str, Any]],
    notes: Sequence[str] = (),
    oracle_auc: float | None = None,
    references: Sequence[ReferenceScore] = (),
) -> Path:
    """Write report.md, report.html and the PNGs into run_dir; returns the Markdown path."""
    run_dir.mkdir(parents=True, exist_ok=True)
    best = best_feature(references)
    plots = [
        ("Learning curves", plot_learning_curves(results, run_dir / "learning_curves.png", oracle_auc, best)),
        ("AUC by model", plot_auc_by_model(results, run_dir / "auc_by_model.png", oracle_auc, best)),
        ("Calibration", plot_calibration(results, run_dir / "calibration.png")),
    ]
    flags = reference_flags(results, references)
    md = [f"# {title}", "", "## Holdout metrics", "", metrics_table(results, references), ""]
    md += [f"- **{line}**" if flagged else f"- {line}" for line, flagged in flags] + ([""] if flags else [])
    md += ["## Cost", "", cost_table(results), ""]
    if notes:
        md += ["## Notes", ""] + [f"- {n}" for n in notes] + [""]
    for caption, path in plots:
        if path is not None:
            md += [f"## {caption}", "", f"![{caption}]({path.name})", ""]
    md_path = run_dir / "report.md"
    md_path.write_text("\n".join(md))
    (run_dir / "report.html").write_text(_to_html(title, results, notes, plots, references, flags))
    return md_path


def _table_html(markdown_table: str) -> str:
    rows = [r.strip("|").split("|") for r in markdown_table.splitlines() if not r.startswith("|---")]
    head, body = rows[0], rows[1:]
    out = ["<table><tr>" + "".join(f"<th>{html.escape(c.strip())}</th>" for c in head) + "</tr>"]
    out += ["<tr>" + "".join(f"<td>{html.escape(c.strip())}</td>" for c in r) + "</tr>" for r in body]
    return "\n".join(out) + "</table>"


def _to_html(title: str, results, notes, plots, references, flags) -> str:
    parts = [
        f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>",
        "<style>body{font-family:sans-serif;max-width:960px;margin:2em auto}"
        "table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:3px 8px}</style></head><body>",
        f"<h1>{html.escape(title)}</h1><h2>Holdout metrics</h2>",
        _table_html(metrics_table(results, references)),
    ]
    if flags:
        items = (f"<strong>{html.escape(line)}</strong>" if flagged else html.escape(line)
                 for line, flagged in flags)
        parts.append("<ul>" + "".join(f"<li>{item}</li>" for item in items) + "</ul>")
    parts += [
        "<h2>Cost</h2>",
        _table_html(cost_table(results)),
    ]
    if notes:
        parts.append("<h2>Notes</h2><ul>" + "".join(f"<li>{html.escape(n)}</li>" for n in notes) + "</ul>")
    for caption, path in plots:
        if path is not None:
            parts.append(f"<h2>{html.escape(caption)}</h2><img src='{html.escape(path.name)}'>")
    parts.append("</body></html>")
    return "\n".join(parts)
