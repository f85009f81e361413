"""CTR models over one shared input layer: the SUAN-style teacher, the LightSUAN student, baselines."""

from __future__ import annotations

from typing import Any

from training.config import config_for
from training.inputs import InputSchema
from training.models.base import CTRModel, ModelOutput
from training.models.baselines import BASELINES
from training.models.embedding import FeatureEmbedding
from training.models.sequence import SequenceModel
from training.models.student import Student
from training.models.teacher import Teacher

__all__ = [
    "CTRModel", "FeatureEmbedding", "ModelOutput", "SequenceModel", "Student", "Teacher", "build_model",
]


def build_model(
    family: str,
    config: dict[str, Any] | None,
    schema: InputSchema,
    embedding: FeatureEmbedding | None = None,
) -> CTRModel:
    """A model of ``family`` ("teacher", "student", "lr", "dnn", "deepfm", "dcnv2", "din").

    Pass one ``embedding`` to several models to share the table (teacher + students by default, see
    docs/models.md); its width must match the config's ``d_embed``.
    """
    typed = config_for(family, config)
    if embedding is None:
        embedding = FeatureEmbedding(schema, typed.d_embed)
    elif embedding.d_embed != typed.d_embed:
        raise ValueError(f"shared embedding has d_embed={embedding.d_embed}, {family} wants {typed.d_embed}")
    elif embedding.schema != schema:
        raise ValueError("shared embedding was built for a different input schema")
    if family == "teacher":
        return Teacher(typed, schema, embedding)
    if family == "student":
        return Student(typed, schema, embedding)
    return BASELINES[family](typed, schema, embedding)
