"""The optimiser every trainer uses: lazy (row-wise) Adam for the hashed id tables, AdamW for the rest.

The id tables hold almost all parameters (tens of thousands of rows per slot) but a minibatch touches only
a few hundred rows. They are ``nn.Embedding(sparse=True)``: backward yields a sparse gradient of the rows
looked up, and ``torch.optim.SparseAdam`` updates only those rows (moments included). Dense Adam over the
full tables cost more per step than the forward and backward of a baseline together. Decoupled weight
decay is kept for the tables too, applied to the touched rows (the rows a step updates), as lazy
optimisers in CTR systems do. Sparse gradients pass through ``DistributedDataParallel`` on the gloo
backend (all-reduced as sparse tensors), so the same optimiser serves multi-process training.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn


def sparse_parameters(modules: Iterable[nn.Module]) -> set[int]:
    """ids of the weights of every ``nn.Embedding(sparse=True)`` in ``modules`` (and their children)."""
    return {id(m.weight) for module in modules for m in module.modules()
            if isinstance(m, nn.Embedding) and m.sparse}


class SplitOptimizer:
    """AdamW over dense parameters plus SparseAdam over sparse-gradient tables, stepped as one.

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
        self.lr, self.weight_decay = lr, weight_decay
        self.optimizers: list[torch.optim.Optimizer] = []
        if self.dense:
            self.optimizers.append(torch.optim.AdamW(self.dense, lr=lr, weight_decay=weight_decay))
        if self.sparse:
            self.optimizers.append(torch.optim.SparseAdam(self.sparse, lr=lr))

    def zero_grad(self) -> None:
        for opt in self.optimizers:
            opt.zero_grad(set_to_none=True)

    @torch.no_grad()
    def step(self) -> None:
        if self.weight_decay:
            # Decay before the update, as AdamW does; a row appearing several times is decayed once.
            for p in self.sparse:
                if p.grad is not None:
                    rows = p.grad.coalesce().indices()[0]
                    p.index_copy_(0, rows, p.index_select(0, rows) * (1 - self.lr * self.weight_decay))
        for opt in self.optimizers:
            opt.step()
