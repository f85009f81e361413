"""LightSUAN, the served student (docs/models.md, "Student"): UABs with local + dilated sparse self-attention
and plain residual joins. Optional loop training repeats the last UAB (a loss at every depth) and serves
the zero-loop path, so loops cost nothing at serving time."""

from __future__ import annotations

import torch
from torch import nn

from training.config import StudentConfig
from training.inputs import InputSchema
from training.models.embedding import FeatureEmbedding
from training.models.sequence import SequenceInput, SequenceModel, Tokens
from training.models.uab import UAB


class Student(SequenceModel):
    family = "student"

    def __init__(self, config: StudentConfig, schema: InputSchema, embedding: FeatureEmbedding) -> None:
        super().__init__(config, schema)
        c = config
        self.inputs = SequenceInput(
            schema, embedding, c.d_model, c.seq_len, c.time_buckets, c.local_window, c.dilation,
            c.target_match,
        )
        self.blocks = nn.ModuleList(
            UAB(c.d_model, c.n_heads, c.ffn_mult, dropout=c.dropout) for _ in range(c.n_layers)
        )
        self._init_head(c.d_model, c.head_hidden, c.dropout, c.wide_ids)

    @property
    def train_depths(self) -> int:
        return self.config.loops + 1

    def encode_depths(self, tokens: Tokens, depths: int) -> tuple[list[torch.Tensor], torch.Tensor]:
        # Loop training re-runs the last block; a loss reads the candidates after each of its passes.
        passes = [*self.blocks, *[self.blocks[-1]] * (depths - 1)]
        x, aux, logits = tokens.x, [], []
        for i, block in enumerate(passes):
            final = i == len(passes) - 1  # nothing reads the behaviour states after the final pass
            x, a = block(x, tokens.profile, tokens.mask, tokens.behaviour_weight,
                         keep_from=tokens.seq_len if final else None)
            aux.append(a)
            if i >= len(self.blocks) - 1:
                logits.append(self.candidate_logits(x if final else x[:, tokens.seq_len:], tokens))
        return logits, torch.stack(aux).mean()
