"""SUAN's Unified Attention Block (docs/models.md): masked self-attention with relative biases,
cross-attention to the user profile, the dual-alignment gate and a SwiGLU (or MoE) feed-forward."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from training.models.layers import Attention, MoESwiGLU, ProfileAttention, RMSNorm, SwiGLU


class DualAlign(nn.Module):
    """SK-Net style per-channel softmax over the self path and the cross path ("MS_SeNet" in SUAN).

    The squeeze is a mean over real behaviour tokens only (not padding, not candidates), so behaviour
    states never depend on which candidates share the pass.
    """

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.reduce = nn.Linear(dim, max(1, dim // 4), bias=False)
        self.w_self = nn.Linear(max(1, dim // 4), dim, bias=False)
        self.w_cross = nn.Linear(max(1, dim // 4), dim, bias=False)

    def forward(self, x: torch.Tensor, c: torch.Tensor, behaviour_weight: torch.Tensor) -> torch.Tensor:
        summed = ((x + c) * behaviour_weight).sum(1, keepdim=True)
        squeeze = summed / behaviour_weight.sum(1, keepdim=True).clamp(min=1)
        z = F.relu(self.reduce(squeeze))
        gates = torch.stack([self.w_self(z), self.w_cross(z)]).softmax(0)
        return gates[0] * x + gates[1] * c


class UAB(nn.Module):
    """One unified attention block.

    ``faithful=False`` (default) is clean pre-norm: every sub-layer adds f(Norm x) to the stream, which is
    what DeRes and loop sharing assume. ``faithful=True`` reproduces the released layout, where the input
    is replaced by its norm and later norms sit after the residual adds.
    """

    def __init__(
        self,
        dim: int,
        n_heads: int,
        ffn_mult: int = 3,
        faithful: bool = False,
        moe: tuple[int, int] | None = None,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        self.faithful = faithful
        self.norm1, self.norm2, self.norm3 = RMSNorm(dim), RMSNorm(dim), RMSNorm(dim)
        self.self_attn = Attention(dim, n_heads)
        self.cross_attn = ProfileAttention(dim, n_heads)
        self.align = DualAlign(dim)
        self.ffn: nn.Module = (
            MoESwiGLU(dim, moe[0], moe[1], ffn_mult, dropout) if moe else SwiGLU(dim, ffn_mult, dropout)
        )
        self.drop = nn.Dropout(dropout)

    def forward(
        self,
        x: torch.Tensor,
        profile: torch.Tensor,
        mask: torch.Tensor,
        behaviour_weight: torch.Tensor,
        keep_from: int | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """x [B, N, D], profile [B or 1, P, D], float mask [B, 1, N, N], behaviour_weight [B, N, 1].

        ``keep_from``: only the tokens from this index on are read after this block (the last block
        before the head reads the candidates), so the output is cut to them before the feed-forward.
        Every token still runs attention, because the dual-alignment gate averages over the behaviour
        tokens; the feed-forward, 60% of a block's matmuls, then runs on the kept tokens only. The kept
        tokens' states are exactly those of the uncut block.
        """
        if self.faithful:
            x = self.norm1(x)
            x = self.norm2(self.drop(self.self_attn(x, x, mask)) + x)
            fused = self.align(x, self.cross_attn(x, profile), behaviour_weight)
            x = self.norm3(fused + x)[:, keep_from:]
            ffn, aux = self.ffn(x)
            return ffn + x, aux
        h = self.norm1(x)
        x = x + self.drop(self.self_attn(h, h, mask))
        h = self.norm2(x)
        x = (x + self.drop(self.align(h, self.cross_attn(h, profile), behaviour_weight)))[:, keep_from:]
        ffn, aux = self.ffn(self.norm3(x))
        return x + ffn, aux
