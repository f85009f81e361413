"""Feature services per model family, as plain names: importable without Feast (the CLI reads them)."""

from __future__ import annotations

# Feature service -> the feature views it joins: sequence models (teacher, student, DIN) and tabular
# baselines (LR, DNN, DeepFM, DCNv2).
SERVICE_VIEWS: dict[str, tuple[str, ...]] = {
    "sequence_ctr": ("user_stats", "item_stats", "user_sequence"),
    "tabular_ctr": ("user_stats", "item_stats"),
}
DEFAULT_SERVICE = "sequence_ctr"
