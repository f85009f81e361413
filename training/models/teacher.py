"""The high-grade teacher: UABs joined by DeRes connectors in a LoopCTR sandwich (docs/models.md, "Teacher").

entry UABs -> shared UABs (looped K extra times in training) -> exit UABs -> head. Training supervises
every loop depth (the exit and head are shared across depths); inference runs the zero-loop path, one pass
through the shared UABs. A loop-index embedding (zero-initialised) tells the shared UABs which pass it is.
"""

from __future__ import annotations

import torch
from torch import nn

from training.config import TeacherConfig
from training.inputs import InputSchema
from training.models.connectors import Connector, Stream
from training.models.embedding import FeatureEmbedding
from training.models.sequence import SequenceInput, SequenceModel, Tokens
from training.models.uab import UAB


class Teacher(SequenceModel):
    family = "teacher"

    def __init__(self, config: TeacherConfig, schema: InputSchema, embedding: FeatureEmbedding) -> None:
        super().__init__(config, schema)
        c = config
        self.inputs = SequenceInput(
            schema, embedding, c.d_model, c.seq_len, c.time_buckets, target_match=c.target_match
        )

        def stack(n: int, moe: bool) -> nn.ModuleList:
            experts = (c.n_experts, c.top_k) if moe else None
            return nn.ModuleList(
                UAB(c.d_model, c.n_heads, c.ffn_mult, c.faithful, experts, c.dropout) for _ in range(n)
            )

        def connectors(n: int) -> nn.ModuleList:
            return nn.ModuleList(Connector(c.d_model, c.connector, c.deres_block) for _ in range(n))

        self.entry, self.shared = stack(c.n_entry, False), stack(c.n_shared, c.moe)
        self.exit = stack(c.n_exit, False)
        self.entry_conn, self.shared_conn = connectors(c.n_entry), connectors(c.n_shared)
        self.exit_conn = connectors(c.n_exit)
        self.loop_embedding = nn.Parameter(torch.zeros(c.loops + 1, c.d_model))
        self._init_head(c.d_model, c.head_hidden, c.dropout)

    @property
    def train_depths(self) -> int:
        return self.config.loops + 1

    @staticmethod
    def _run(stream: Stream, blocks: nn.ModuleList, conns: nn.ModuleList, tokens: Tokens,
             to_head: bool = False) -> None:
        """``to_head``: the head reads this stack's output, so its last block keeps only the candidates."""
        for i, (block, conn) in enumerate(zip(blocks, conns, strict=True)):
            keep = tokens.seq_len if to_head and i == len(blocks) - 1 else None
            conn.step(stream, lambda u, b=block, k=keep: b(u, tokens.profile, tokens.mask,
                                                           tokens.behaviour_weight, keep_from=k),
                      final=keep is not None)
        stream.close_block()

    def encode_depths(self, tokens: Tokens, depths: int) -> tuple[list[torch.Tensor], torch.Tensor]:
        stream = Stream(tokens.x, sources=[tokens.x])
        self._run(stream, self.entry, self.entry_conn, tokens)
        logits = []
        for k in range(depths):
            stream.x = stream.x + self.loop_embedding[k].to(stream.x.dtype)
            self._run(stream, self.shared, self.shared_conn, tokens)
            exit_stream = stream.branch()
            self._run(exit_stream, self.exit, self.exit_conn, tokens, to_head=True)
            cut = len(self.exit) > 0  # else the shared stack's output, uncut (the next loop reads it)
            logits.append(self.candidate_logits(exit_stream.x if cut else exit_stream.x[:, tokens.seq_len:],
                                                tokens))
        aux = torch.stack(stream.aux).mean() if stream.aux else tokens.x.new_zeros(())
        return logits, aux
