"""The column layout a training-set manifest declares: what the trainer's input layer reads.

Feast-free on purpose: the dataset builder writes it, and the trainer's tests and the model benchmarks
describe their own tables with the same function, so they cannot drift from what the builder writes.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from pipelines.events import SIDE_FIELDS

# Every labelled-sample context column the models read; the side fields are null where a log has none
# (the simulator's), which hashes to the reserved missing bucket.
CATEGORICAL = ("user_id", "item_id", "category", "position", "hour", "device", "page", *SIDE_FIELDS)
SEQUENCE_VIEW = "user_sequence"
SEQUENCE_COLUMNS = {
    "item_ids": f"{SEQUENCE_VIEW}__seq_item_ids",
    "category_ids": f"{SEQUENCE_VIEW}__seq_category_ids",
    "event_times": f"{SEQUENCE_VIEW}__seq_event_times",
}


def manifest_columns(features: Sequence[str]) -> dict[str, Any]:
    """The manifest's ``columns`` for a training set with these ``<view>__<feature>`` columns.

    Stats features are dense inputs; the sequence view's columns (its length included, which the mask
    already carries) form the behaviour sequence, present when the features include that view.
    """
    in_sequence = [f.startswith(f"{SEQUENCE_VIEW}__") for f in features]
    return {
        "label": "label",
        "time": "event_time",
        "user": "user_id",
        "item": "item_id",
        "categorical": list(CATEGORICAL),
        "dense": [f for f, seq in zip(features, in_sequence, strict=True) if not seq],
        "sequence": dict(SEQUENCE_COLUMNS) if any(in_sequence) else None,
    }
