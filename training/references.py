"""Reference scores: what a model must beat on the same rows to be worth serving.

Each reference is a feature used directly as a click score: the item's click rate, the item's
popularity (its impression count as of the event) and every dense feature alone. A model that cannot
rank better than one warehouse column has learned nothing a lookup would not give.

Keys name the role and the column, ``<role>:<column>``: ``item_ctr:item_stats__ctr_24h``,
``item_popularity:item_stats__impressions_all``, ``dense:user_stats__ctr_1h`` ...

The gate judges a challenger's AUC against the best reference of each role (``best_by_role``);
``reference_metrics`` gives those same references the models' rank metrics (AUC, per-user and per-request
gAUC) for ``ctrflow evaluate``, ``ctrflow train`` and the run report, and ``shortfalls`` names the models
that do not beat them.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa

from training.inputs import REQUEST_COLUMN, InputSchema, group_ids
from training.metrics import auc, gauc

ITEM_CTR = "item_ctr"
ITEM_POPULARITY = "item_popularity"
DENSE = "dense"
PREFERRED_ITEM_CTR = "item_stats__ctr_24h"
# Longest horizon first: the count that has seen most of the item's history (all time, when the
# warehouse has it).
POPULARITY_ORDER = ("all", "30d", "7d", "24h", "1h")
ROLES = (ITEM_CTR, ITEM_POPULARITY, DENSE)
_TITLES = {ITEM_CTR: "item CTR", ITEM_POPULARITY: "item popularity", DENSE: "best feature"}
# A raw column has no probability scale, so only the ranking metrics of a model compare with it.
RANK_METRICS = ("auc", "gauc", "request_gauc")
# A model within float noise of a reference ranks the rows as it does (e.g. it learned just that column):
# it does not beat it.
_TIE = 1e-9


def _values(table: pa.Table, column: str) -> np.ndarray:
    x = np.asarray(table.column(column).cast(pa.float64()).fill_null(0.0).to_numpy(), dtype=np.float64)
    return np.nan_to_num(x, nan=0.0, posinf=0.0, neginf=0.0)


def _leaf(column: str) -> str:
    return column.rsplit("__", 1)[-1]


def _item_columns(schema: InputSchema, prefix: str) -> list[str]:
    return [c for c in schema.dense if c.startswith("item") and _leaf(c).startswith(prefix)]


def reference_scores(table: pa.Table, schema: InputSchema) -> dict[str, np.ndarray]:
    """``<role>:<column>`` -> one score per row of ``table``.

    The item CTR reference is ``item_stats__ctr_24h`` when present, else the item CTR column that ranks
    this table's labels best; the popularity reference is the longest-window item impression count.
    """
    labels = np.asarray(table.column(schema.label).cast(pa.float64()).to_numpy(), dtype=np.float64)
    out: dict[str, np.ndarray] = {}
    ctr_columns = _item_columns(schema, "ctr")
    if PREFERRED_ITEM_CTR in ctr_columns:
        out[f"{ITEM_CTR}:{PREFERRED_ITEM_CTR}"] = _values(table, PREFERRED_ITEM_CTR)
    elif ctr_columns:
        best = max(ctr_columns, key=lambda c: np.nan_to_num(auc(labels, _values(table, c)), nan=0.0))
        out[f"{ITEM_CTR}:{best}"] = _values(table, best)
    counts = _item_columns(schema, "impressions")
    for window in POPULARITY_ORDER:
        column = next((c for c in counts if _leaf(c) == f"impressions_{window}"), None)
        if column:
            out[f"{ITEM_POPULARITY}:{column}"] = _values(table, column)
            break
    for column in schema.dense:
        out[f"{DENSE}:{column}"] = _values(table, column)
    return out


def _oriented_auc(name: str, labels: np.ndarray, values: np.ndarray) -> tuple[float, float]:
    """(AUC, direction): a dense feature counts in its better direction (a model learns the sign); the
    item CTR and popularity count as they are (a higher click rate or count should mean more clicks)."""
    value = auc(labels, values)
    if name.startswith(f"{DENSE}:") and value < 0.5:
        return 1.0 - value, -1.0
    return value, 1.0


def reference_aucs(labels: np.ndarray, scores: dict[str, np.ndarray]) -> dict[str, float]:
    """AUC of each reference; a dense feature counts in its better direction (a model learns the sign)."""
    return {name: _oriented_auc(name, labels, values)[0] for name, values in scores.items()}


def best_by_role(aucs: Mapping[str, float]) -> dict[str, str]:
    """Role -> the key of its highest-AUC reference, for each role present (a NaN AUC ranks lowest)."""
    out = {}
    for role in ROLES:
        keys = [k for k in aucs if k.startswith(f"{role}:")]
        if keys:
            out[role] = max(keys, key=lambda k: float(np.nan_to_num(aucs[k], nan=-1.0)))
    return out


@dataclass(frozen=True)
class ReferenceScore:
    """One reference (its column alone as the score) with a model's rank metrics on the same rows."""

    role: str  # ITEM_CTR | ITEM_POPULARITY | DENSE (the best dense feature)
    column: str
    direction: float  # -1.0: the dense feature ranks clicks low, so it is scored negated
    metrics: dict[str, float]  # RANK_METRICS; request_gauc absent where no request has both classes

    @property
    def name(self) -> str:
        return f"{self.role}:{self.column}"

    @property
    def label(self) -> str:
        return f"ref: {_TITLES[self.role]} ({self.column}{', reversed' if self.direction < 0 else ''})"

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "column": self.column, "label": self.label,
                "direction": self.direction, **self.metrics}


def reference_metrics(table: pa.Table, schema: InputSchema) -> tuple[ReferenceScore, ...]:
    """The item-CTR, item-popularity and best dense feature references on ``table``'s rows (the roles the
    gate's floors judge, chosen the same way), with AUC, per-user and per-request gAUC computed as
    ``metrics.evaluate_predictions`` computes a model's, on the same user and request keys."""
    labels = np.asarray(table.column(schema.label).cast(pa.float64()).to_numpy(), dtype=np.float64)
    scores = reference_scores(table, schema)
    users = group_ids(table.column(schema.user))
    requests = group_ids(table.column(REQUEST_COLUMN)) if REQUEST_COLUMN in table.column_names else None
    out = []
    for role, name in best_by_role(reference_aucs(labels, scores)).items():
        value, direction = _oriented_auc(name, labels, scores[name])
        oriented = direction * scores[name]
        numbers = {"auc": value, "gauc": gauc(labels, oriented, users)}
        if requests is not None:
            by_request = gauc(labels, oriented, requests)
            if by_request == by_request:  # left out where undefined, as a model's is
                numbers["request_gauc"] = by_request
        out.append(ReferenceScore(role, name.split(":", 1)[1], direction, numbers))
    return tuple(out)


def best_feature(references: Sequence[ReferenceScore]) -> ReferenceScore | None:
    return next((r for r in references if r.role == DENSE), None)


@dataclass(frozen=True)
class Shortfall:
    """A model that does not beat one reference on the same rows, with the metrics it loses on."""

    model: str
    reference: str  # the reference's label
    metrics: dict[str, tuple[float, float]]  # metric -> (the model's value, the reference's)

    def describe(self) -> str:
        lost = ", ".join(f"{m} {v:.4f} <= {r:.4f}" for m, (v, r) in self.metrics.items())
        return f"{self.model} is below {self.reference}: {lost}"

    def to_dict(self) -> dict[str, Any]:
        return {"model": self.model, "reference": self.reference,
                "metrics": {m: list(pair) for m, pair in self.metrics.items()}}


def shortfalls(models: Mapping[str, Mapping[str, Any]],
               references: Sequence[ReferenceScore]) -> list[Shortfall]:
    """Each (model, reference) where a rank metric of the model is not above the reference's (as the
    gate's floors judge, a tie does not beat it); a metric missing or NaN on either side is not compared."""
    out = []
    for model, values in models.items():
        for ref in references:
            lost = {m: (float(values[m]), ref.metrics[m]) for m in RANK_METRICS
                    if m in values and m in ref.metrics and np.isfinite(values[m])
                    and np.isfinite(ref.metrics[m]) and not values[m] > ref.metrics[m] + _TIE}
            if lost:
                out.append(Shortfall(model, ref.label, lost))
    return out


def references_summary(models: Mapping[str, Mapping[str, Any]],
                       references: Sequence[ReferenceScore]) -> dict[str, Any]:
    """The JSON form beside a ``models`` entry: ``references`` by role and the ``below_references``."""
    return {"references": {r.role: r.to_dict() for r in references},
            "below_references": [s.to_dict() for s in shortfalls(models, references)]}
