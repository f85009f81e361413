"""Tiny cohort settings shared by the trainer and CLI tests (fast on 2 busy cores)."""

from __future__ import annotations

from typing import Any

TEACHER = {"d_model": 16, "n_heads": 2, "seq_len": 8, "n_entry": 1, "n_shared": 1, "n_exit": 1,
           "loops": 1, "d_embed": 8, "head_hidden": [16]}
STUDENT = {"d_model": 16, "n_heads": 2, "seq_len": 8, "local_window": 2, "dilation": 2, "d_embed": 8,
           "head_hidden": [16]}
BASELINE = {"d_embed": 8, "hidden": [16], "seq_len": 8}


def tiny_train_config(**overrides: Any) -> dict[str, Any]:
    base = {"teacher_grade": "G1", "teacher": TEACHER, "students": 2, "student": STUDENT,
            "baseline": BASELINE, "batch_size": 64, "lr": 3e-3, "seed": 0, "eval_batch_size": 256,
            "threads": 1}
    return base | overrides
