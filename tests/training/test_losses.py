"""The joint objective (docs/models.md), checked term by term against hand-written formulas."""

from __future__ import annotations

import torch

from training import losses


def _bce(p: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    return -(q * p.log() + (1 - q) * (1 - p).log()).mean()


def test_student_loss_is_bce_plus_scaled_kd_plus_peer_mse() -> None:
    torch.manual_seed(0)
    y = torch.randint(0, 2, (64,)).float()
    z_s, z_t, z_p = torch.randn(64), torch.randn(64), torch.randn(64)
    t, lkd, lml = 2.0, 0.7, 0.3
    got = losses.student_loss([z_s], y, z_t, [z_p], lambda_kd=lkd, lambda_ml=lml, temperature=t)
    want = (
        _bce(torch.sigmoid(z_s), y)
        + lkd * t * t * _bce(torch.sigmoid(z_s / t), torch.sigmoid(z_t / t))
        + lml * (torch.sigmoid(z_p) - torch.sigmoid(z_s)).pow(2).mean()
    )
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)


def test_kd_and_peer_targets_are_detached() -> None:
    y = torch.tensor([1.0, 0.0, 1.0])
    z_s = torch.zeros(3, requires_grad=True)
    z_t = torch.randn(3, requires_grad=True)
    z_p = torch.randn(3, requires_grad=True)
    losses.student_loss([z_s], y, z_t, [z_p]).backward()
    assert z_s.grad is not None and z_s.grad.abs().sum() > 0
    assert z_t.grad is None and z_p.grad is None


def test_teacher_loss_averages_loops_and_adds_reverse_term() -> None:
    torch.manual_seed(1)
    y = torch.randint(0, 2, (32,)).float()
    loops = [torch.randn(32) for _ in range(4)]
    students = [torch.randn(32), torch.randn(32)]
    plain = losses.teacher_loss(loops, y)
    torch.testing.assert_close(plain, sum(_bce(torch.sigmoid(z), y) for z in loops) / 4)
    rev = losses.teacher_loss(loops, y, students, lambda_rev=0.1, temperature=4.0)
    mean_s = torch.stack(students).mean(0)
    extra = 0.1 * 16 * _bce(torch.sigmoid(loops[-1] / 4), torch.sigmoid(mean_s / 4))
    torch.testing.assert_close(rev, plain + extra, rtol=1e-5, atol=1e-6)


def test_cohort_losses_give_each_student_its_peers_and_the_deepest_teacher_loop() -> None:
    torch.manual_seed(2)
    y = torch.randint(0, 2, (16,)).float()
    t_loops = [torch.randn(16), torch.randn(16)]
    s = [[torch.randn(16)], [torch.randn(16), torch.randn(16)], [torch.randn(16)]]
    t_loss, s_losses = losses.cohort_losses(t_loops, s, y, 1.0, 0.5, 0.0, 2.0)
    torch.testing.assert_close(t_loss, losses.teacher_loss(t_loops, y))
    want_1 = losses.student_loss(s[1], y, t_loops[-1], [s[0][-1], s[2][-1]], 1.0, 0.5, 2.0)
    torch.testing.assert_close(s_losses[1], want_1)
    # No teacher and a single student: plain BCE.
    none_t, (alone,) = losses.cohort_losses(None, [s[0]], y, 1.0, 1.0, 0.0, 2.0)
    assert none_t is None
    torch.testing.assert_close(alone, _bce(torch.sigmoid(s[0][0]), y), rtol=1e-5, atol=1e-6)
