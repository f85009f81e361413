"""The optimiser every trainer uses: lazy (row-wise) Adam for the hashed id tables, AdamW for the rest.

The id tables hold almost all parameters (tens of thousands of rows per slot) but a minibatch touches only
a few thousand rows. They are ``nn.Embedding(sparse=True)``: backward yields a sparse gradient of the rows
looked up, and ``LazyAdam`` updates only those rows (moments included). Dense Adam over the full tables
cost more per step than a baseline's forward and backward together, and ``torch.optim.SparseAdam`` spends
most of its step coalescing the sparse gradient with generic sparse kernels. Decoupled weight decay is
applied to the rows a step updates, as lazy optimisers in CTR systems do. Sparse gradients pass through
``DistributedDataParallel`` on the gloo backend (all-reduced as sparse tensors), so the same optimiser
serves multi-process training.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn


def sparse_parameters(modules: Iterable[nn.Module]) -> set[int]:
    """ids of the weights of every ``nn.Embedding(sparse=True)`` in ``modules`` (and their children)."""
    return {id(m.weight) for module in modules for m in module.modules()
            if isinstance(m, nn.Embedding) and m.sparse}


class LazyAdam(torch.optim.Optimizer):
    """Adam with decoupled weight decay that, given a sparse gradient, updates only the rows it touches.

    Duplicate row indices (an id looked up several times, or by several models sharing the table) are
    summed, as a dense gradient would be. Untouched rows keep their weights and moments; bias correction
    uses the table's step count. A dense gradient updates every row (plain AdamW).
    """

    def __init__(self, params: Iterable[torch.Tensor], lr: float, betas: tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-8, weight_decay: float = 0.0) -> None:
        super().__init__(params, {"lr": lr, "betas": betas, "eps": eps, "weight_decay": weight_decay})

    @staticmethod
    def _rows(p: torch.Tensor, grad: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(touched row ids, their summed gradient rows) of a sparse gradient of ``p``."""
        index, values = grad._indices()[0], grad._values()
        touched = torch.zeros(p.shape[0], dtype=torch.bool, device=p.device)
        touched[index] = True
        rows = touched.nonzero().squeeze(1)
        # Position of each touched row in ``rows`` (a scatter, not a sort: cheaper than coalescing).
        position = torch.empty(p.shape[0], dtype=torch.long, device=p.device)
        position[rows] = torch.arange(len(rows), device=p.device)
        summed = values.new_zeros((len(rows), *values.shape[1:])).index_add_(0, position[index], values)
        return rows, summed

    @torch.no_grad()
    def step(self, closure: None = None) -> None:  # type: ignore[override]
        for group in self.param_groups:
            lr, (beta1, beta2), eps, decay = group["lr"], group["betas"], group["eps"], group["weight_decay"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                state = self.state[p]
                if not state:
                    state["step"] = 0
                    state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                    state["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                state["step"] += 1
                if p.grad.is_sparse:
                    rows, grad = self._rows(p, p.grad)
                else:
                    rows, grad = torch.arange(p.shape[0], device=p.device), p.grad
                m = state["exp_avg"].index_select(0, rows).mul_(beta1).add_(grad, alpha=1 - beta1)
                v = state["exp_avg_sq"].index_select(0, rows).mul_(beta2)
                v.addcmul_(grad, grad, value=1 - beta2)
                state["exp_avg"].index_copy_(0, rows, m)
                state["exp_avg_sq"].index_copy_(0, rows, v)
                weights = p.index_select(0, rows)
                if decay:
                    weights.mul_(1 - lr * decay)
                t = state["step"]
                denom = (v / (1 - beta2**t)).sqrt_().add_(eps)
                weights.addcdiv_(m, denom, value=-lr / (1 - beta1**t))
                p.index_copy_(0, rows, weights)


class SplitOptimizer:
    """AdamW over dense parameters plus LazyAdam over the sparse-gradient tables, stepped as one.

    ``modules`` may share tensors (models sharing a table): each is optimised once.
    """

    def __init__(self, modules: Iterable[nn.Module], lr: float, weight_decay: float = 0.0) -> None:
        modules = list(modules)
        sparse_ids = sparse_parameters(modules)
        unique: dict[int, nn.Parameter] = {}
        for module in modules:
            for p in module.parameters():
                if p.requires_grad:
                    unique.setdefault(id(p), p)
        self.sparse = [p for i, p in unique.items() if i in sparse_ids]
        self.dense = [p for i, p in unique.items() if i not in sparse_ids]
        self.optimizers: list[torch.optim.Optimizer] = []
        if self.dense:
            self.optimizers.append(torch.optim.AdamW(self.dense, lr=lr, weight_decay=weight_decay))
        if self.sparse:
            self.optimizers.append(LazyAdam(self.sparse, lr=lr, weight_decay=weight_decay))

    def zero_grad(self) -> None:
        for opt in self.optimizers:
            opt.zero_grad(set_to_none=True)

    def step(self) -> None:
        for opt in self.optimizers:
            opt.step()
