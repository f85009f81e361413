"""How consecutive UABs are joined: a plain residual, or DeRes (docs/models.md, "DeRes connectors").

DeRes gives each block two paths into its input: the identity stream, and a block attention residual
over the summed outputs of all earlier blocks (the token embeddings are source 0). A per-dimension sigmoid
gate mixes them. The attention over depth is pointwise SiLU (several sources at once, negative weights
can forget) or, for the ablation, a softmax.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from training.models.layers import RMSNorm

Block = Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]]


@dataclass
class Stream:
    """The residual state threaded through a stack: the identity stream plus DeRes's block summaries."""

    x: torch.Tensor
    sources: list[torch.Tensor] = field(default_factory=list)
    partial: torch.Tensor | None = None
    in_block: int = 0
    aux: list[torch.Tensor] = field(default_factory=list)

    def branch(self) -> Stream:
        """A copy that can continue separately (LoopCTR's per-depth exit) without touching this one."""
        return Stream(self.x, list(self.sources), self.partial, self.in_block, list(self.aux))

    def close_block(self) -> None:
        if self.partial is not None:
            self.sources.append(self.partial)
        self.partial, self.in_block = None, 0


class Connector(nn.Module):
    """Per-layer connector parameters; ``step`` runs one block on the stream."""

    def __init__(self, dim: int, kind: str, block_size: int = 2) -> None:
        super().__init__()
        self.kind = kind
        self.block_size = block_size
        if kind != "residual":
            self.query = nn.Parameter(torch.zeros(dim))  # zero: the depth path starts silent (SiLU(0)=0)
            self.gate_bias = nn.Parameter(torch.full((dim,), 2.0))  # sigmoid(2) ~ 0.88 identity weight
            self.key_norm = RMSNorm(dim)

    def _depth_mix(self, sources: list[torch.Tensor]) -> torch.Tensor:
        """sum_s w_s * v_s with w = SiLU (or softmax over s) of query . RMSNorm_key(v_s) / sqrt(D).

        The key norm is folded into the score: query . (gamma * v / (rms(v) + eps)) equals
        (v . (query * gamma)) / (rms(v) + eps), so no normalised copy of the sources (and no stacked
        [S, B, N, D] tensor) is built; on CPU those passes over memory cost more than the arithmetic.
        """
        d = sources[0].shape[-1]
        qg = (self.query * self.key_norm.weight).to(sources[0].dtype) / math.sqrt(d)
        eps = self.key_norm.eps
        scores = torch.stack([(v @ qg) / (torch.linalg.vector_norm(v, dim=-1) / math.sqrt(d) + eps)
                              for v in sources])  # [S, B, N]
        weights = scores.softmax(0) if self.kind == "deres_softmax" else F.silu(scores)
        mix = sources[0] * weights[0].unsqueeze(-1)
        for v, w in zip(sources[1:], weights[1:], strict=True):
            mix = torch.addcmul(mix, v, w.unsqueeze(-1))
        return mix

    def step(self, stream: Stream, block: Block, final: bool = False) -> None:
        """Run ``block`` on the stream. ``final``: the stack ends here and the block may return only some
        tokens (the candidates the head reads), so the DeRes summaries are not updated."""
        if self.kind == "residual":
            stream.x, aux = block(stream.x)
            stream.aux.append(aux)
            return
        sources = stream.sources + ([stream.partial] if stream.partial is not None else [])
        gate = torch.sigmoid(self.gate_bias).to(stream.x.dtype)
        u = gate * stream.x + (1 - gate) * self._depth_mix(sources)
        out, aux = block(u)
        if final:
            stream.x = out
            stream.aux.append(aux)
            return
        delta = out - u
        stream.x = out
        stream.partial = delta if stream.partial is None else stream.partial + delta
        stream.in_block += 1
        stream.aux.append(aux)
        if stream.in_block >= self.block_size:
            stream.close_block()
