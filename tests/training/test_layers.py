"""The sequence models' fast paths compute the plain formulas: the cut last block, the folded profile
attention, RMSNorm's written-out gradient, DeRes's folded key norm, and the kept heap."""

from __future__ import annotations

import math
import resource

import pytest
import torch
import torch.nn.functional as F

from training.models.connectors import Connector
from training.models.layers import Attention, ProfileAttention, RMSNorm, _RMSNormFunction
from training.models.uab import UAB
from training.trainer import freed_memory_kept


def _block_inputs(b: int = 5, n: int = 9, d: int = 16, p: int = 2) -> tuple[torch.Tensor, ...]:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(b, n, d, generator=g)
    profile = torch.randn(b, p, d, generator=g)
    bias = torch.randn(b, 1, n, n, generator=g) * 0.1
    allow = torch.rand(b, 1, n, n, generator=g) > 0.3
    allow |= torch.eye(n, dtype=torch.bool)
    weight = (torch.rand(b, n, 1, generator=g) > 0.2).float()
    return x, profile, bias.masked_fill(~allow, float("-inf")), weight


@pytest.mark.parametrize("faithful", [False, True])
def test_cut_block_keeps_exactly_the_uncut_states_and_gradients(faithful: bool) -> None:
    torch.manual_seed(0)
    block = UAB(16, 2, faithful=faithful)
    x, profile, mask, weight = _block_inputs()
    keep = 6
    full, _ = block(x, profile, mask, weight)
    full[:, keep:].square().sum().backward()
    grads = {n: p.grad.clone() for n, p in block.named_parameters()}
    block.zero_grad()
    cut, _ = block(x, profile, mask, weight, keep_from=keep)
    assert cut.shape == (5, 9 - keep, 16)
    assert torch.equal(cut, full[:, keep:])
    cut.square().sum().backward()
    for name, p in block.named_parameters():
        assert torch.allclose(p.grad, grads[name], rtol=1e-5, atol=1e-6), name


@pytest.mark.parametrize(("rows", "p"), [(5, 1), (5, 2), (1, 2), (5, 3)])
def test_profile_attention_is_attention_over_the_profile(rows: int, p: int) -> None:
    torch.manual_seed(0)
    plain = Attention(16, 2)
    folded = ProfileAttention(16, 2)
    folded.load_state_dict(plain.state_dict())  # the same parameters: old checkpoints load unchanged
    x = torch.randn(5, 9, 16, requires_grad=True)
    profile = torch.randn(rows, p, 16)  # one row: a request's profile shared by every pass
    ref = plain(x, profile.expand(5, -1, -1) if rows == 1 else profile)
    out = folded(x, profile)
    assert torch.allclose(out, ref, atol=1e-6)
    ref_grad, = torch.autograd.grad(ref.sum(), x)
    out_grad, = torch.autograd.grad(out.sum(), x)
    assert torch.allclose(out_grad, ref_grad, atol=1e-6)
    for a, b in zip(plain.parameters(), folded.parameters(), strict=True):
        ga, = torch.autograd.grad(plain(x, profile.expand(5, -1, -1)).square().sum(), a)
        gb, = torch.autograd.grad(folded(x, profile).square().sum(), b)
        assert torch.allclose(ga, gb, rtol=1e-4, atol=1e-5)


def test_attention_equals_scaled_dot_product_attention() -> None:
    torch.manual_seed(0)
    attn = Attention(16, 2)
    x, _, mask, _ = _block_inputs()
    q, k, v = (attn._heads(layer(x)) for layer in (attn.q, attn.k, attn.v))
    ref = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    ref = attn.o(ref.transpose(1, 2).reshape(5, 9, 16))
    assert torch.allclose(attn(x, x, mask), ref, atol=1e-6)


def test_rms_norm_gradient_is_the_derivative_and_both_paths_agree() -> None:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(3, 4, 8, dtype=torch.float64, generator=g, requires_grad=True)
    weight = (torch.rand(8, dtype=torch.float64, generator=g) + 0.5).requires_grad_()
    assert torch.autograd.gradcheck(lambda a, w: _RMSNormFunction.apply(a, w, 1e-6), (x, weight))
    norm = RMSNorm(8)
    with torch.no_grad():
        norm.weight.copy_(weight.float())
    xf = x.detach().float().requires_grad_()
    trained = norm(xf)  # the custom-gradient path
    with torch.no_grad():
        served = norm(xf)  # the plain formula (serving, export)
    assert torch.allclose(trained, served, atol=1e-6)
    reference = xf / (xf.pow(2).mean(-1, keepdim=True).sqrt() + 1e-6) * norm.weight
    assert torch.allclose(trained, reference, atol=1e-6)


@pytest.mark.parametrize("kind", ["deres", "deres_softmax"])
def test_deres_depth_mix_is_the_key_normed_attention_over_sources(kind: str) -> None:
    torch.manual_seed(0)
    conn = Connector(16, kind)
    with torch.no_grad():
        conn.query.normal_()
        conn.key_norm.weight.uniform_(0.5, 1.5)
    sources = [torch.randn(4, 7, 16, requires_grad=True) for _ in range(3)]
    values = torch.stack(sources)
    scores = torch.einsum("d,sbnd->sbn", conn.query, conn.key_norm(values)) / math.sqrt(16)
    weights = scores.softmax(0) if kind == "deres_softmax" else F.silu(scores)
    ref = torch.einsum("sbn,sbnd->bnd", weights, values)
    out = conn._depth_mix(sources)
    assert torch.allclose(out, ref, atol=1e-5)
    params = [conn.query, conn.key_norm.weight, *sources]
    for a, b in zip(torch.autograd.grad(ref.square().sum(), params),
                    torch.autograd.grad(out.square().sum(), params), strict=True):
        assert torch.allclose(a, b, rtol=1e-4, atol=1e-4)


def test_kept_heap_reuses_freed_pages_and_leaving_returns_them() -> None:
    def faults_for_one_tensor() -> int:
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        t = torch.ones(16 * 2**20)  # 64 MiB, every page written
        del t
        return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before

    pages = 16 * 2**20 * 4 // resource.getpagesize()
    with freed_memory_kept() as kept, freed_memory_kept() as nested:
        assert kept and nested  # glibc here; re-entrant
        # A freed block is reused whenever it fits; the heap only grows (fresh pages) when fragmentation
        # leaves no hole big enough, so some of several repeats fault in nothing.
        inside = [faults_for_one_tensor() for _ in range(8)]
    assert min(inside) < pages // 10, inside
    # Leaving hands the free heap back: memory freed inside stays resident until the window ends.
    with freed_memory_kept():
        blocks = [torch.ones(8 * 2**20) for _ in range(8)]  # 256 MiB from the heap
        del blocks
        held = _rss_bytes()
    assert held - _rss_bytes() > 200 * 2**20
    with freed_memory_kept(enabled=False) as kept:
        assert not kept


def _rss_bytes() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * resource.getpagesize()
