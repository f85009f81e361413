"""Classic CTR baselines on the same input layer: LR, DNN (YouTube-DNN style), DeepFM, DCNv2, DIN.

All read the same fields: every categorical slot, the mean-pooled behaviour sequence (item ++ category,
the newest ``seq_len``) and the normalised dense features. DIN replaces the mean pool with attention to
the candidate.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from training.config import BaselineConfig
from training.inputs import Batch, InputSchema
from training.models.base import LINEAR_STEP_SCALE, CTRModel, WideLinear, mlp_head
from training.models.embedding import FeatureEmbedding


def masked_mean(tokens: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    w = mask.to(tokens.dtype).unsqueeze(-1)
    return (tokens * w).sum(1) / w.sum(1).clamp(min=1)


class _Baseline(CTRModel):
    uses_embedding = True
    wide_path = True  # every deep model gets the wide short path; LR is nothing but a linear part

    def __init__(self, config: BaselineConfig, schema: InputSchema, embedding: FeatureEmbedding) -> None:
        super().__init__(config, schema)
        if self.uses_embedding:
            self.embedding = embedding
        d = embedding.d_embed
        self.n_fields = len(schema.categorical) + 2  # + pooled behaviour item and category
        self.flat_dim = self.n_fields * d + len(schema.dense)
        if self.wide_path:
            self.wide = WideLinear(schema)

    def fields(self, batch: Batch) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """-> field vectors [B, C+2, d], behaviour tokens [B, L, 2d], behaviour mask [B, L]."""
        beh, mask = self.embedding.behaviour(batch, self.config.seq_len)
        pooled = masked_mean(beh, mask).view(beh.shape[0], 2, -1)
        return torch.cat([self.embedding.categorical(batch.categorical), pooled], 1), beh, mask

    def flat(self, fields: torch.Tensor, batch: Batch) -> torch.Tensor:
        return torch.cat([fields.flatten(1), batch.dense], 1)


class LogisticRegression(_Baseline):
    """Logistic regression: one weight per hashed id of every categorical slot, one per dense feature
    and a bias, i.e. the linear floor every other model must beat on the same inputs.

    Two things make it an honest floor inside the cohort's single joint pass. The bias starts at the log-odds
    of the training label mean (``prepare``), so the first steps are not spent walking from p = 0.5 down to
    a few-percent base rate. And the weights are stored divided by ``STEP_SCALE`` (``LINEAR_STEP_SCALE``,
    which says why), so the cohort's deep-model ``lr`` still takes a linear model to its optimum in one pass.
    """

    family = "lr"
    wide_path = False
    uses_embedding = False  # its own 1-d weights; a shared table would sit unused in its state
    STEP_SCALE = LINEAR_STEP_SCALE

    def __init__(self, config: BaselineConfig, schema: InputSchema, embedding: FeatureEmbedding) -> None:
        super().__init__(config, schema, embedding)
        self.weights = FeatureEmbedding(schema, 1, init_std=0.0)
        self.dense = nn.Linear(len(schema.dense), 1, bias=False)
        nn.init.zeros_(self.dense.weight)
        self.bias = nn.Parameter(torch.zeros(()))
        # Saved with the weights: a warm-started model keeps its learned bias instead of a fresh prior.
        self.register_buffer("bias_initialised", torch.zeros((), dtype=torch.bool))

    def prepare(self, data: Batch) -> None:
        if bool(self.bias_initialised) or len(data) == 0:
            return
        rate = float(data.label.float().mean().clamp(1e-4, 1 - 1e-4))
        with torch.no_grad():
            self.bias.fill_(math.log(rate / (1 - rate)) / self.STEP_SCALE)
            self.bias_initialised.fill_(True)

    def logits(self, batch: Batch) -> torch.Tensor:
        linear = self.weights.categorical(batch.categorical).sum((1, 2)) + self.dense(batch.dense).squeeze(-1)
        return self.STEP_SCALE * (linear + self.bias)


class DNN(_Baseline):
    family = "dnn"

    def __init__(self, config: BaselineConfig, schema: InputSchema, embedding: FeatureEmbedding) -> None:
        super().__init__(config, schema, embedding)
        self.mlp = mlp_head(self.flat_dim, config.hidden, config.dropout)

    def logits(self, batch: Batch) -> torch.Tensor:
        fields, _, _ = self.fields(batch)
        return self.mlp(self.flat(fields, batch)).squeeze(-1) + self.wide(batch.dense)


class DeepFM(_Baseline):
    """First order (own 1-d table) + FM pairwise interactions over the fields + a deep MLP.

    It has a linear part of its own, but nothing starts that at the base rate, so it gets the wide path's
    prefit as well: without it a fresh DeepFM starts near p = 0.5, and on a small window (the 6.5k-row
    Avazu sample: ~12 steps in 2 epochs) it never reached the base rate or the click-rate ranking (0.63
    AUC against DNN's 0.70).
    """

    family = "deepfm"

    def __init__(self, config: BaselineConfig, schema: InputSchema, embedding: FeatureEmbedding) -> None:
        super().__init__(config, schema, embedding)
        self.first_order = FeatureEmbedding(schema, 1, init_std=0.0)
        self.dense = nn.Linear(len(schema.dense), 1)
        self.mlp = mlp_head(self.flat_dim, config.hidden, config.dropout)

    def logits(self, batch: Batch) -> torch.Tensor:
        fields, _, _ = self.fields(batch)
        linear = self.first_order.categorical(batch.categorical).sum((1, 2))
        linear = linear + self.dense(batch.dense).squeeze(-1)
        fm = 0.5 * (fields.sum(1).pow(2) - fields.pow(2).sum(1)).sum(-1)
        return linear + fm + self.mlp(self.flat(fields, batch)).squeeze(-1) + self.wide(batch.dense)


class DCNv2(_Baseline):
    """Full-rank cross network x_{l+1} = x0 * (W x_l + b) + x_l, stacked before the deep MLP."""

    family = "dcnv2"

    def __init__(self, config: BaselineConfig, schema: InputSchema, embedding: FeatureEmbedding) -> None:
        super().__init__(config, schema, embedding)
        width = self.flat_dim
        self.cross = nn.ModuleList(nn.Linear(width, width) for _ in range(config.cross_layers))
        for layer in self.cross:
            nn.init.zeros_(layer.bias)
        self.mlp = mlp_head(self.flat_dim, config.hidden, config.dropout)

    def logits(self, batch: Batch) -> torch.Tensor:
        fields, _, _ = self.fields(batch)
        x0 = x = self.flat(fields, batch)
        for layer in self.cross:
            x = x0 * layer(x) + x
        return self.mlp(x).squeeze(-1) + self.wide(batch.dense)


class DIN(_Baseline):
    """Target attention: an activation unit weighs each behaviour by its relation to the candidate
    (unnormalised weights, as DIN), replacing the mean-pooled behaviour field."""

    family = "din"

    def __init__(self, config: BaselineConfig, schema: InputSchema, embedding: FeatureEmbedding) -> None:
        super().__init__(config, schema, embedding)
        width = 2 * embedding.d_embed
        self.activation_unit = nn.Sequential(
            nn.Linear(4 * width, config.attention_hidden), nn.PReLU(), nn.Linear(config.attention_hidden, 1)
        )
        self.mlp = mlp_head(self.flat_dim, config.hidden, config.dropout)

    def logits(self, batch: Batch) -> torch.Tensor:
        fields, beh, mask = self.fields(batch)
        target = self.embedding.candidate(batch)[:, None].expand_as(beh)
        score = self.activation_unit(torch.cat([target, beh, target - beh, target * beh], -1)).squeeze(-1)
        interest = (score.masked_fill(~mask, 0.0).unsqueeze(-1) * beh).sum(1)
        fields = torch.cat([fields[:, :-2], interest.view(-1, 2, self.embedding.d_embed)], 1)
        return self.mlp(self.flat(fields, batch)).squeeze(-1) + self.wide(batch.dense)


BASELINES: dict[str, type[_Baseline]] = {
    m.family: m for m in (LogisticRegression, DNN, DeepFM, DCNv2, DIN)
}
