"""The common model interface every trainer, evaluator and server relies on."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from training.inputs import Batch, InputSchema


@dataclass
class ModelOutput:
    """Training-time output: one logit vector per supervision depth (last = deepest) and an auxiliary loss."""

    logits: list[torch.Tensor]
    aux_loss: torch.Tensor


class CTRModel(nn.Module):
    """A click-through-rate model over the shared input layer.

    ``forward`` is the inference path (zero-loop for looped models); ``forward_train`` returns every
    supervised depth. Subclasses set ``family`` and keep their typed ``config`` and the ``schema``.
    """

    family: str = ""

    def __init__(self, config: Any, schema: InputSchema) -> None:
        super().__init__()
        self.config = config
        self.schema = schema

    def forward(self, batch: Batch) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def prepare(self, labels: torch.Tensor) -> None:
        """Called with the window's training labels before a training pass (a no-op unless a model
        derives an initial value from them; it must leave a warm-started model as it is)."""

    def forward_train(self, batch: Batch) -> ModelOutput:
        logits = self(batch)
        return ModelOutput([logits], logits.new_zeros(()))

    def num_parameters(self, trainable_only: bool = True) -> int:
        return sum(p.numel() for p in self.parameters() if p.requires_grad or not trainable_only)


def mlp_head(in_dim: int, hidden: tuple[int, ...], dropout: float = 0.0) -> nn.Sequential:
    """LayerNorm -> (Linear -> SiLU -> Dropout)* -> Linear(1).

    LayerNorm instead of SUAN's BatchNorm/Dice: running statistics drift under streaming data and BN on the
    logit interacts badly with the distillation temperature (MODELS.md §1.3 port notes).
    """
    layers: list[nn.Module] = [nn.LayerNorm(in_dim)]
    width = in_dim
    for h in hidden:
        layers += [nn.Linear(width, h), nn.SiLU(), nn.Dropout(dropout)]
        width = h
    layers.append(nn.Linear(width, 1))
    return nn.Sequential(*layers)
