"""The joint teacher/student objective (docs/models.md, "Joint objective"): distillation + mutual learning.

    L_teacher   = Σ_k w_k BCE(y, p_T^k) + λ_rev · t² · softBCE(σ(z̄_S/t)ᵍ, σ(z_T^K/t))
    L_student_j = BCE(y, p_Sj) + λ_kd · t² · softBCE(σ(z_T^K/t)ᵍ, σ(z_Sj/t))
                  + λ_ml · 1/(N−1) Σ_{i≠j} (p_Si ᵍ − p_Sj)²
ᵍ = detached: a model never gets gradient through the target it is pulled towards.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F


def soft_bce(student_logits: torch.Tensor, target_logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """t² · softBCE(σ(target/t)ᵍ, σ(student/t)); the t² keeps the gradient scale independent of t."""
    target = torch.sigmoid(target_logits.detach().float() / temperature)
    return temperature**2 * F.binary_cross_entropy_with_logits(student_logits.float() / temperature, target)


def loop_bce(loop_logits: Sequence[torch.Tensor], labels: torch.Tensor) -> torch.Tensor:
    """Process supervision: BCE at every loop depth, uniform weights 1/(K+1)."""
    weight = 1.0 / len(loop_logits)
    return sum(weight * F.binary_cross_entropy_with_logits(z.float(), labels) for z in loop_logits)


def peer_mse(student_logits: torch.Tensor, peer_logits: Sequence[torch.Tensor]) -> torch.Tensor:
    """Mutual learning (arXiv 2406.12087): mean over peers of (p_peerᵍ − p_self)² on probabilities."""
    p_self = torch.sigmoid(student_logits.float())
    terms = [(torch.sigmoid(z.detach().float()) - p_self).pow(2).mean() for z in peer_logits]
    return sum(terms) / len(terms)


def teacher_loss(
    loop_logits: Sequence[torch.Tensor],
    labels: torch.Tensor,
    student_logits: Sequence[torch.Tensor] = (),
    lambda_rev: float = 0.0,
    temperature: float = 2.0,
) -> torch.Tensor:
    loss = loop_bce(loop_logits, labels)
    if lambda_rev > 0 and student_logits:
        mean_student = torch.stack([z.detach().float() for z in student_logits]).mean(0)
        loss = loss + lambda_rev * soft_bce(loop_logits[-1], mean_student, temperature)
    return loss


def student_loss(
    loop_logits: Sequence[torch.Tensor],
    labels: torch.Tensor,
    teacher_logits: torch.Tensor | None = None,
    peer_logits: Sequence[torch.Tensor] = (),
    lambda_kd: float = 1.0,
    lambda_ml: float = 1.0,
    temperature: float = 2.0,
) -> torch.Tensor:
    """BCE at every depth (one depth for an unlooped student) + KD and peer terms on the deepest logit."""
    deepest = loop_logits[-1]
    loss = loop_bce(loop_logits, labels)
    if teacher_logits is not None and lambda_kd > 0:
        loss = loss + lambda_kd * soft_bce(deepest, teacher_logits, temperature)
    if peer_logits and lambda_ml > 0:
        loss = loss + lambda_ml * peer_mse(deepest, peer_logits)
    return loss


def cohort_losses(
    teacher_loops: Sequence[torch.Tensor] | None,
    students: Sequence[Sequence[torch.Tensor]],
    labels: torch.Tensor,
    lambda_kd: float,
    lambda_ml: float,
    lambda_rev: float,
    temperature: float,
) -> tuple[torch.Tensor | None, list[torch.Tensor]]:
    """Teacher loss and one loss per student for one step.

    `students[j]` is student j's per-depth logits. With no teacher the students get BCE (+ peer terms).
    """
    deepest = [loops[-1] for loops in students]
    t_loss = None
    if teacher_loops is not None:
        t_loss = teacher_loss(teacher_loops, labels, deepest, lambda_rev, temperature)
    target = teacher_loops[-1] if teacher_loops is not None else None
    s_losses = [
        student_loss(
            loops, labels, target, [z for i, z in enumerate(deepest) if i != j],
            lambda_kd, lambda_ml, temperature,
        )
        for j, loops in enumerate(students)
    ]
    return t_loss, s_losses
