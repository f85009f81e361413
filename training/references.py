"""Reference scores: what a model must beat on the same rows to be worth serving.

Each reference is a feature used directly as a click score: the item's click rate, the item's
popularity (its impression count as of the event) and every dense feature alone. A model that cannot
rank better than one warehouse column has learned nothing a lookup would not give.

Keys name the role and the column, ``<role>:<column>``: ``item_ctr:item_stats__ctr_24h``,
``item_popularity:item_stats__impressions_7d``, ``dense:user_stats__ctr_1h`` ...
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from training.inputs import InputSchema
from training.metrics import auc

ITEM_CTR = "item_ctr"
ITEM_POPULARITY = "item_popularity"
DENSE = "dense"
PREFERRED_ITEM_CTR = "item_stats__ctr_24h"
# Longest window first: the count that has seen most of the item's history.
POPULARITY_ORDER = ("7d", "24h", "1h")


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


def reference_aucs(labels: np.ndarray, scores: dict[str, np.ndarray]) -> dict[str, float]:
    """AUC of each reference; a dense feature counts in its better direction (a model learns the sign)."""
    out = {}
    for name, values in scores.items():
        value = auc(labels, values)
        out[name] = max(value, 1.0 - value) if name.startswith(f"{DENSE}:") else value
    return out
