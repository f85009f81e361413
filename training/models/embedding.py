"""The shared embedding table: one hashed row space for all categorical slots (docs/models.md)."""

from __future__ import annotations

import torch
from torch import nn

from training.inputs import Batch, InputSchema


def fit_length(x: torch.Tensor, length: int) -> torch.Tensor:
    """Right-aligned [B, L] sequence -> [B, length]: keep the newest ``length`` or left-pad with zeros."""
    have = x.shape[1]
    if have >= length:
        return x[:, have - length:]
    pad = x.new_zeros((x.shape[0], length - have))
    return torch.cat([pad, x], dim=1)


class FeatureEmbedding(nn.Module):
    """Per-slot hashed ids -> vectors. Behaviour and candidate items reuse the item slot's rows (and
    categories the category slot's rows), so both sides of the target-aware sequence share one id space.
    Teacher and students may hold the same instance (a shared table is the default; docs/models.md).

    The table yields sparse gradients (only the rows looked up): train it with ``training.optim``'s
    ``SplitOptimizer`` (or any optimiser that takes sparse gradients, e.g. SGD, SparseAdam)."""

    def __init__(self, schema: InputSchema, d_embed: int, init_std: float = 0.01) -> None:
        super().__init__()
        if d_embed < 1:
            raise ValueError("d_embed must be >= 1")
        self.schema = schema
        self.d_embed = d_embed
        offsets = [0]
        for b in schema.buckets[:-1]:
            offsets.append(offsets[-1] + b)
        self.register_buffer("offsets", torch.tensor(offsets, dtype=torch.long), persistent=False)
        self.item_offset = offsets[schema.slot(schema.item)]
        self.category_offset = offsets[schema.slot(schema.category)]
        self.table = nn.Embedding(sum(schema.buckets), d_embed, sparse=True)
        nn.init.normal_(self.table.weight, std=init_std)

    def categorical(self, ids: torch.Tensor) -> torch.Tensor:
        """[..., C] bucket ids -> [..., C, d_embed]."""
        return self.table(ids + self.offsets)

    def items(self, ids: torch.Tensor) -> torch.Tensor:
        return self.table(ids + self.item_offset)

    def categories(self, ids: torch.Tensor) -> torch.Tensor:
        return self.table(ids + self.category_offset)

    def behaviour(self, batch: Batch, length: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The newest ``length`` behaviours as [B, length, 2*d_embed] (item ++ category) and their mask."""
        items = fit_length(batch.seq_items, length)
        cats = fit_length(batch.seq_categories, length)
        mask = fit_length(batch.seq_mask, length)
        return torch.cat([self.items(items), self.categories(cats)], dim=-1), mask

    def candidate(self, batch: Batch) -> torch.Tensor:
        """The candidate as [B, 2*d_embed] (item ++ category), in the behaviour token layout."""
        return torch.cat([self.items(batch.cand_item), self.categories(batch.cand_category)], dim=-1)
