"""The common model interface every trainer, evaluator and server relies on."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from training.inputs import Batch, InputSchema


@dataclass
class ModelOutput:
    """Training-time output: one logit vector per supervision depth (last = deepest) and an auxiliary loss."""

    logits: list[torch.Tensor]
    aux_loss: torch.Tensor


MAX_CALIBRATION_SCALE = 10.0  # the fitted scale stays within [1/10, 10]


class PlattCalibration(nn.Module):
    """logit' = scale * logit + bias, fitted after training on the validation slice.

    Buffers, not parameters: the optimizer never sees them, and they travel in the saved weights so every
    caller of the model's ``forward`` (evaluation, serving) gets the same calibrated probabilities. The
    scale is kept positive, so ranking metrics are unchanged. Identity by default.
    """

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("scale", torch.ones(()))
        self.register_buffer("bias", torch.zeros(()))

    def forward(self, logits: torch.Tensor) -> torch.Tensor:
        return logits.float() * self.scale + self.bias

    def reset(self) -> None:
        self.scale.fill_(1.0)
        self.bias.fill_(0.0)

    def fit(self, logits: torch.Tensor, labels: torch.Tensor, steps: int = 50) -> None:
        """Minimise BCE(sigmoid(scale * logits + bias), labels) with LBFGS (scale = exp(s) > 0).

        Left at identity when the slice has a single class (nothing to fit) or the fit is not finite.
        """
        z = logits.detach().double().cpu()
        y = labels.detach().double().cpu()
        if len(y) < 2 or y.min() == y.max():
            self.reset()
            return
        log_scale = torch.zeros((), dtype=torch.float64, requires_grad=True)
        # Bounded: a model that ranks badly on validation would otherwise drive the scale towards 0, and
        # float32 probabilities would then tie across candidates, losing the ranking in serving.
        bound = math.log(MAX_CALIBRATION_SCALE)
        bias = torch.zeros((), dtype=torch.float64, requires_grad=True)
        opt = torch.optim.LBFGS([log_scale, bias], lr=1.0, max_iter=steps, line_search_fn="strong_wolfe")

        def closure() -> torch.Tensor:
            opt.zero_grad()
            scaled = z * log_scale.clamp(-bound, bound).exp() + bias
            loss = nn.functional.binary_cross_entropy_with_logits(scaled, y)
            loss.backward()
            return loss

        opt.step(closure)
        scale, b = float(log_scale.detach().clamp(-bound, bound).exp()), float(bias.detach())
        if not (np.isfinite(scale) and np.isfinite(b)):
            self.reset()
            return
        self.scale.fill_(scale)
        self.bias.fill_(b)


# Linear id weights (LR's, and the student's ``wide_ids``) are stored divided by this and multiplied back
# in the logit: Adam moves a parameter by about ``lr`` per step whatever its gradient, so the scale
# multiplies the effective step on the logit. The cohort's ``lr`` suits deep models (1e-3); a linear term
# needs larger steps to reach its optimum in one pass, and this buys them without a separate optimiser.
LINEAR_STEP_SCALE = 10.0


class WideLinear(nn.Module):
    """The wide short path: a linear term over the click-rate dense features added to the logit.

    A deep model can then never rank worse than these features for lack of capacity. Before a fresh
    model's first training pass, ``fit`` sets it to the logistic regression of the labels on those
    features (on top of the deep part's initial output), so training starts at least as good as the best
    click-rate feature instead of having to find it through a randomly initialised network; the fitted
    flag is saved, and a warm-started model keeps what it learned.
    """

    def __init__(self, schema: InputSchema) -> None:
        super().__init__()
        rate = [j for j, kind in enumerate(schema.dense_kinds) if kind == "rate"]
        self.register_buffer("index", torch.tensor(rate, dtype=torch.long), persistent=False)
        self.weight = nn.Parameter(torch.zeros(len(rate)))
        self.bias = nn.Parameter(torch.zeros(()))
        self.register_buffer("fitted", torch.zeros((), dtype=torch.bool))

    def forward(self, dense: torch.Tensor) -> torch.Tensor:
        """[..., D] normalised dense features -> [...] logit contribution."""
        return (dense.index_select(-1, self.index) * self.weight.to(dense.dtype)).sum(-1) + self.bias

    def fit(self, dense: torch.Tensor, labels: torch.Tensor, offset: torch.Tensor, steps: int = 50) -> None:
        """Logistic regression of ``labels`` on the rate features with ``offset`` added (LBFGS, a little
        L2); left at zero when it does not come out finite."""
        x = dense.detach().double().cpu().index_select(-1, self.index.cpu())
        y, z = labels.detach().double().cpu(), offset.detach().double().cpu()
        w = torch.zeros(x.shape[-1], dtype=torch.float64, requires_grad=True)
        b = torch.zeros((), dtype=torch.float64, requires_grad=True)
        opt = torch.optim.LBFGS([w, b], lr=1.0, max_iter=steps, line_search_fn="strong_wolfe")

        def closure() -> torch.Tensor:
            opt.zero_grad()
            loss = nn.functional.binary_cross_entropy_with_logits(x @ w + b + z, y) + 1e-4 * (w * w).sum()
            loss.backward()
            return loss

        opt.step(closure)
        with torch.no_grad():
            if torch.isfinite(w).all() and torch.isfinite(b):
                self.weight.copy_(w.to(self.weight.dtype))
                self.bias.copy_(b.to(self.bias.dtype))
            self.fitted.fill_(True)


# State added after versions were first saved: a checkpoint without them loads with their defaults
# (identity calibration, a silent wide path), which is exactly how those models scored.
OPTIONAL_STATE: tuple[str, ...] = ("calibration.scale", "calibration.bias", "wide.weight", "wide.bias",
                                   "wide.fitted")
PREFIT_ROWS = 20_000  # rows the wide path is fitted on before a fresh model trains (evenly spaced)


class CTRModel(nn.Module):
    """A click-through-rate model over the shared input layer.

    ``forward`` is the calibrated inference path (zero-loop for looped models); ``logits`` the same path
    before calibration; ``forward_train`` returns every supervised depth, uncalibrated (calibration is
    fitted after training). Subclasses set ``family``, keep their typed ``config`` and the ``schema``, and
    implement ``logits``.
    """

    family: str = ""

    def __init__(self, config: Any, schema: InputSchema) -> None:
        super().__init__()
        self.config = config
        self.schema = schema
        self.calibration = PlattCalibration()

    def logits(self, batch: Batch) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def forward(self, batch: Batch) -> torch.Tensor:
        return self.calibration(self.logits(batch))
    def prepare(self, data: Batch) -> None:
        """Called with the window's training rows before a training pass: a fresh model's wide path is
        fitted (see ``WideLinear``); a warm-started model is left as it is."""
        wide = getattr(self, "wide", None)
        if not isinstance(wide, WideLinear) or bool(wide.fitted) or not len(data) or not len(wide.index):
            return
        rows = torch.linspace(0, len(data) - 1, min(len(data), PREFIT_ROWS)).long()
        sample = data.index(rows).to(wide.weight.device)
        was_training = self.training
        self.eval()
        with torch.no_grad():
            offset = self.logits(sample).float() - wide(sample.dense).float()
        self.train(was_training)
        wide.fit(sample.dense, sample.label, offset)

    def forward_train(self, batch: Batch) -> ModelOutput:
        logits = self.logits(batch)
        return ModelOutput([logits], logits.new_zeros(()))

    def load_state_dict(self, state_dict: Mapping[str, Any], strict: bool = True, assign: bool = False):
        """``nn.Module.load_state_dict`` that fills ``OPTIONAL_STATE`` keys an older checkpoint lacks."""
        own = self.state_dict()
        defaults = {k: own[k] for k in OPTIONAL_STATE if k in own and k not in state_dict}
        return super().load_state_dict({**state_dict, **defaults}, strict=strict, assign=assign)

    def num_parameters(self, trainable_only: bool = True) -> int:
        return sum(p.numel() for p in self.parameters() if p.requires_grad or not trainable_only)


def mlp_head(in_dim: int, hidden: tuple[int, ...], dropout: float = 0.0) -> nn.Sequential:
    """LayerNorm -> (Linear -> SiLU -> Dropout)* -> Linear(1).

    LayerNorm instead of SUAN's BatchNorm/Dice: running statistics drift under streaming data and BN on the
    logit interacts badly with the distillation temperature (docs/models.md, "Token sequence").
    """
    layers: list[nn.Module] = [nn.LayerNorm(in_dim)]
    width = in_dim
    for h in hidden:
        layers += [nn.Linear(width, h), nn.SiLU(), nn.Dropout(dropout)]
        width = h
    layers.append(nn.Linear(width, 1))
    return nn.Sequential(*layers)
