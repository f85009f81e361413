"""Attention primitives shared by the teacher and the student: RMSNorm, SwiGLU (dense and mixture of
experts), relative position/time bias (RAB), the LightSUAN masks, masked multi-head attention and the
cross-attention to the user profile."""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn


class RMSNorm(nn.Module):
    """gamma * x / (sqrt(mean(x^2)) + eps), eps outside the root as in the released SUAN code."""

    def __init__(self, dim: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        xf = x.float()
        if torch.is_grad_enabled() and (xf.requires_grad or self.weight.requires_grad):
            return _RMSNormFunction.apply(xf, self.weight, self.eps).to(x.dtype)
        out = xf / (xf.pow(2).mean(-1, keepdim=True).sqrt() + self.eps)
        return (out * self.weight).to(x.dtype)


class _RMSNormFunction(torch.autograd.Function):
    """RMSNorm with its gradient written out: autograd's graph of the six elementwise ops makes about
    twice the passes over the activations, which on CPU cost more than the block's matmuls.

    With s = rms(x), r = 1 / (s + eps), n = x r and g' = g * gamma:
    dx = r g' - x * r^2 / (D s) * sum(g' x), dgamma = sum over rows of g n.
    """

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
        s = x.pow(2).mean(-1, keepdim=True).sqrt_()
        r = (s + eps).reciprocal_()
        n = x * r
        ctx.save_for_backward(x, n, weight, r, s)
        return n * weight

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, None]:
        x, n, weight, r, s = ctx.saved_tensors
        g = grad * weight
        c = (g * x).sum(-1, keepdim=True) * r * r / (x.shape[-1] * s.clamp(min=1e-30))
        dx = (g * r).sub_(x * c)
        dweight = (grad * n).reshape(-1, x.shape[-1]).sum(0)
        return dx, dweight, None


class SwiGLU(nn.Module):
    """W3(SiLU(W1 x) * W2 x) with hidden width ``mult * dim``."""

    def __init__(self, dim: int, mult: int = 3, dropout: float = 0.0) -> None:
        super().__init__()
        self.w1 = nn.Linear(dim, mult * dim)
        self.w2 = nn.Linear(dim, mult * dim)
        self.w3 = nn.Linear(mult * dim, dim)
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.drop(self.w3(F.silu(self.w1(x)) * self.w2(x))), x.new_zeros(())


class MoESwiGLU(nn.Module):
    """Top-k routed SwiGLU experts plus one always-on shared expert, with a Switch-style balance loss.

    Every expert is evaluated densely and the gate zeroes the unrouted ones: at CTR widths this is
    cheaper than gathering tokens per expert, and it keeps the forward free of data-dependent shapes
    (torch.export-friendly).
    """

    def __init__(self, dim: int, n_experts: int, top_k: int, mult: int = 3, dropout: float = 0.0) -> None:
        super().__init__()
        hidden = max(1, mult * dim // 2)
        self.n_experts, self.top_k = n_experts, top_k
        self.router = nn.Linear(dim, n_experts, bias=False)
        self.w1 = nn.Parameter(torch.randn(n_experts, dim, hidden) / math.sqrt(dim))
        self.w2 = nn.Parameter(torch.randn(n_experts, dim, hidden) / math.sqrt(dim))
        self.w3 = nn.Parameter(torch.randn(n_experts, hidden, dim) / math.sqrt(hidden))
        self.shared = SwiGLU(dim, mult=max(1, mult // 2))
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        probs = self.router(x).float().softmax(-1)  # [..., E]
        top_w, top_i = probs.topk(self.top_k, dim=-1)
        chosen = F.one_hot(top_i, self.n_experts).to(probs.dtype)  # [..., k, E]
        gates = (chosen * (top_w / top_w.sum(-1, keepdim=True)).unsqueeze(-1)).sum(-2)  # [..., E]
        h = F.silu(torch.einsum("...d,edh->...eh", x, self.w1)) * torch.einsum("...d,edh->...eh", x, self.w2)
        experts = torch.einsum("...eh,ehd->...ed", h, self.w3)
        routed = (experts * gates.unsqueeze(-1).to(experts.dtype)).sum(-2)
        shared, _ = self.shared(x)
        load = chosen.sum(-2).reshape(-1, self.n_experts).mean(0) / self.top_k
        importance = probs.reshape(-1, self.n_experts).mean(0)
        balance = self.n_experts * (load * importance).sum()
        return self.drop(routed + shared), balance


class RelativeBias(nn.Module):
    """HSTU/SUAN relative attention bias: learned by relative position and by log-bucketed time gap
    (``time_bucket``), shared across heads. Positions are explicit so every candidate can sit at the
    same position."""

    def __init__(self, seq_len: int, time_buckets: int = 128) -> None:
        super().__init__()
        self.seq_len = seq_len
        self.time_buckets = time_buckets
        self.pos = nn.Parameter(torch.randn(2 * seq_len + 1) * 0.02)
        self.time = nn.Parameter(torch.randn(time_buckets + 1) * 0.02)

    def forward(self, positions: torch.Tensor, times: torch.Tensor) -> torch.Tensor:
        """positions [N] in [0, seq_len], times [B, N] seconds -> bias [B, 1, N, N]."""
        rel = (positions[:, None] - positions[None, :]).clamp(-self.seq_len, self.seq_len) + self.seq_len
        dt = (times[:, :, None] - times[:, None, :]).abs().clamp(min=1).float()
        bucket = time_bucket(dt, self.time_buckets)
        return (self.pos[rel][None] + self.time[bucket]).unsqueeze(1)


def time_bucket(seconds: torch.Tensor, buckets: int) -> torch.Tensor:
    """Non-negative gaps in seconds -> log buckets in [0, buckets]: ``ln(gap) / 0.301``, i.e. about
    2.3 buckets per doubling (HSTU's bucketing, kept because it is finer than log2 for short gaps)."""
    return (seconds.clamp(min=1).float().log() / 0.301).long().clamp(0, buckets)


def sequence_mask(
    seq_len: int,
    n_candidates: int,
    key_valid: torch.Tensor,
    local_window: int | None = None,
    dilation: int | None = None,
) -> torch.Tensor:
    """Allowed attention for ``[b_1..b_L, c_1..c_m]`` as bool [B, 1, N, N] (True = may attend).

    Behaviours attend causally to behaviours (optionally only within the local window or on the dilated
    stride); each candidate sees every real behaviour and itself but no other candidate (candidate
    isolation), so m candidates in one pass score exactly as m single passes. Padding keys are masked; the
    self key is always allowed so no row is fully masked.
    """
    n = seq_len + n_candidates
    device = key_valid.device
    q = torch.arange(n, device=device)[:, None]
    k = torch.arange(n, device=device)[None, :]
    behaviour = k <= q
    if local_window is not None and dilation is not None:
        d = q - k
        behaviour = behaviour & ((d < local_window) | (d % dilation == 0))
    is_beh_q, is_beh_k = q < seq_len, k < seq_len
    pattern = (is_beh_q & is_beh_k & behaviour) | (~is_beh_q & is_beh_k) | (~is_beh_q & (q == k))
    valid = torch.cat([key_valid, key_valid.new_ones((key_valid.shape[0], n_candidates))], dim=1)
    allow = pattern[None] & valid[:, None, :]
    allow = allow | torch.eye(n, dtype=torch.bool, device=device)[None]
    return allow.unsqueeze(1)


def additive_mask(allow: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """Bool mask + float bias -> the float mask SDPA adds to the logits (-inf where not allowed)."""
    return bias.masked_fill(~allow, float("-inf"))


class Attention(nn.Module):
    """Multi-head attention without biases (as SUAN), written out rather than through
    F.scaled_dot_product_attention: with a float mask that carries gradients (the relative bias) SDPA
    takes its math path anyway, plus a check of the whole mask on every call. No row is ever fully
    masked here (every token may attend to itself), so the plain softmax is safe."""

    def __init__(self, dim: int, n_heads: int) -> None:
        super().__init__()
        self.n_heads = n_heads
        self.q = nn.Linear(dim, dim, bias=False)
        self.k = nn.Linear(dim, dim, bias=False)
        self.v = nn.Linear(dim, dim, bias=False)
        self.o = nn.Linear(dim, dim, bias=False)

    def _heads(self, x: torch.Tensor) -> torch.Tensor:
        b, n, d = x.shape
        return x.view(b, n, self.n_heads, d // self.n_heads).transpose(1, 2)

    def forward(self, x: torch.Tensor, kv: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        q, k, v = self._heads(self.q(x)), self._heads(self.k(kv)), self._heads(self.v(kv))
        scores = (q * (1.0 / math.sqrt(q.shape[-1]))) @ k.transpose(-1, -2)  # scale the smaller tensor
        if mask is not None:
            scores = scores.add_(mask.to(scores.dtype))  # in place: matmul's backward never reads it
        out = scores.softmax(-1) @ v
        b, h, n, dh = out.shape
        return self.o(out.transpose(1, 2).reshape(b, n, h * dh))


class ProfileAttention(Attention):
    """Cross-attention from every token to the user profile's few keys (one or two per row).

    The same function and parameters as ``Attention``, reassociated: the query and output projections are
    folded into the P keys and values of each row once, so a token costs 2 * heads * P * D multiply-adds
    instead of two D x D projections. Profile rows: one per token row, or one shared by all (a request).
    """

    def forward(self, x: torch.Tensor, kv: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        if mask is not None:
            raise ValueError("profile attention takes no mask")
        b, n, d = x.shape
        h, p = self.n_heads, kv.shape[1]
        k = self.k(kv).view(kv.shape[0], p, h, d // h)
        v = self.v(kv).view(kv.shape[0], p, h, d // h)
        # keys seen from the token side: score(x, key p of head h) = x . (W_q,h^T k_hp) / sqrt(d_h)
        keys = torch.einsum("bphe,hed->bhpd", k, self.q.weight.view(h, d // h, d)) / math.sqrt(d // h)
        # values after the output projection: o(concat_h sum_p w_hp v_hp) = sum_hp w_hp (W_o,h v_hp)
        values = torch.einsum("bphe,dhe->bhpd", v, self.o.weight.view(d, h, d // h))
        keys = keys.reshape(kv.shape[0], h * p, d).expand(b, -1, -1)
        values = values.reshape(kv.shape[0], h * p, d).expand(b, -1, -1)
        weights = torch.bmm(x, keys.transpose(1, 2)).view(b, n, h, p).softmax(-1)
        return torch.bmm(weights.view(b, n, h * p), values)
