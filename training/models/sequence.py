"""The target-aware token sequence both SUAN-style models read, and their common scoring paths.

Tokens are ``[b_1 .. b_L, c_1 .. c_m]``: the newest L behaviours (oldest -> newest) followed by m
candidates. A token is Linear(item ++ category embedding) + an age embedding + a learned absolute position;
every candidate sits at position L, so one candidate sees exactly the same biases whether it is scored
alone or among many. Behaviour ages are measured from the newest behaviour (never from a candidate), and
the user profile (cross-attention keys/values) is user-level only, so behaviour states are shared by all
candidates of a request.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from training.inputs import Batch, InputSchema, first_rows
from training.models.base import LINEAR_STEP_SCALE, CTRModel, ModelOutput, WideLinear, mlp_head
from training.models.embedding import FeatureEmbedding, fit_length
from training.models.layers import RelativeBias, RMSNorm, additive_mask, sequence_mask, time_bucket

# Grouped mode lays out at most this many candidates per pass: a bigger group is cut into chunks (each
# re-encodes the context), so one huge request does not pad every other group in the batch to its size.
MAX_GROUP_CANDIDATES = 16


@dataclass
class Tokens:
    x: torch.Tensor  # [B', L+m, D]
    mask: torch.Tensor  # [B', 1, N, N] float (bias, -inf where not allowed)
    behaviour_weight: torch.Tensor  # [B', N, 1] 1 on real behaviours
    profile: torch.Tensor  # [B', P, D] cross-attention keys/values
    head_features: torch.Tensor  # [B', m, F] per-candidate features read by the head
    dense: torch.Tensor  # [B', m, D] per-candidate dense features (the wide path reads them)
    seq_len: int
    slots: tuple[torch.Tensor, torch.Tensor] | None = None  # grouped mode: each row's (pass, candidate)

    def per_row(self, logits: torch.Tensor) -> torch.Tensor:
        """[B', m] candidate logits -> one per input row, in the batch's row order."""
        return logits.reshape(-1) if self.slots is None else logits[self.slots]


@dataclass
class GroupLayout:
    """Where each row of a grouped batch sits: pass ``group`` (whose context is row ``first[group]``'s),
    candidate ``slot`` within it; ``m`` candidates per pass."""

    group: torch.Tensor  # [B]
    slot: torch.Tensor  # [B]
    first: torch.Tensor  # [G]
    m: int

    @classmethod
    def of(cls, keys: torch.Tensor, cap: int = MAX_GROUP_CANDIDATES) -> GroupLayout:
        _, group = torch.unique(keys, return_inverse=True)
        slot = _rank_within(group)
        if int(slot.max()) >= cap:  # chunks of at most `cap` candidates
            _, group = torch.unique(group * (len(keys) // cap + 1) + slot // cap, return_inverse=True)
            slot = slot % cap
        return cls(group, slot, first_rows(group, int(group.max()) + 1), int(slot.max()) + 1)

    def scatter(self, rows: torch.Tensor) -> torch.Tensor:
        """[B, ...] per-row values -> [G, m, ...], zeros on the empty slots."""
        out = rows.new_zeros((len(self.first), self.m, *rows.shape[1:]))
        out[self.group, self.slot] = rows
        return out

    def filled(self) -> torch.Tensor:
        """[G, m] True on the slots that hold a row."""
        return self.scatter(torch.ones_like(self.group, dtype=torch.bool))


def _rank_within(group: torch.Tensor) -> torch.Tensor:
    """Each row's index among the rows of its group, in row order."""
    order = torch.argsort(group, stable=True)
    counts = torch.bincount(group)
    starts = torch.cumsum(counts, 0) - counts
    rank = torch.empty_like(group)
    rank[order] = torch.arange(len(group), device=group.device) - starts[group[order]]
    return rank


class SequenceInput(nn.Module):
    def __init__(
        self,
        schema: InputSchema,
        embedding: FeatureEmbedding,
        d_model: int,
        seq_len: int,
        time_buckets: int,
        local_window: int | None = None,
        dilation: int | None = None,
        target_match: bool = False,
    ) -> None:
        super().__init__()
        d_e = embedding.d_embed
        self.embedding = embedding
        self.seq_len, self.time_buckets = seq_len, time_buckets
        self.local_window, self.dilation = local_window, dilation
        self.token = nn.Linear(2 * d_e, d_model)
        self.age = nn.Embedding(time_buckets + 1, d_model)
        self.position = nn.Embedding(seq_len + 1, d_model)
        nn.init.normal_(self.age.weight, std=0.02)
        nn.init.normal_(self.position.weight, std=0.02)
        self.user = nn.Linear(d_e, d_model)
        self.profile_index = list(schema.profile_dense_index)
        self.profile_dense = nn.Linear(len(self.profile_index), d_model) if self.profile_index else None
        self.candidate_slots = list(schema.candidate_slots)
        self.user_slot = schema.slot(schema.user)
        self.rab = RelativeBias(seq_len, time_buckets)
        self.target_match = target_match
        self.head_features_dim = (len(self.candidate_slots) + 1) * d_e + len(schema.dense) + 2 * target_match

    def forward(self, batch: Batch, one_user: bool = False) -> Tokens:
        """Three layouts, the same scores:

        - rows mode: B sequences with one candidate each;
        - one-user mode: row 0's behaviours, every row a candidate (m = B) scored in one pass;
        - grouped mode (a batch with ``batch.group``: training, evaluation): one pass per group of rows
          that share their user context, with that group's rows as its candidates.
        """
        L = self.seq_len
        fields = self.embedding.categorical(batch.categorical)  # [B, C, d_e]
        user = fields[:, self.user_slot]
        head = torch.cat([fields[:, self.candidate_slots].flatten(1), user, batch.dense], 1)
        cand, cand_time, dense = self.embedding.candidate(batch), batch.cand_time, batch.dense
        ids = torch.stack([batch.cand_item, batch.cand_category], -1)
        per_candidate = (cand, cand_time, head, dense, ids)
        layout = None
        if one_user:
            context, user = batch.slice(0, 1), user[:1]
            cand, cand_time, head, dense, ids = (t[None] for t in per_candidate)
        elif batch.group is not None:
            layout = GroupLayout.of(batch.group)
            context, user = batch.index(layout.first), user[layout.first]
            cand, cand_time, head, dense, ids = (layout.scatter(t) for t in per_candidate)
        else:
            context = batch
            cand, cand_time, head, dense, ids = (t[:, None] for t in per_candidate)
        beh, valid = self.embedding.behaviour(context, L)
        if self.target_match:
            head = torch.cat([head, match_counts(ids, context, L).to(head.dtype)], -1)
        times = fit_length(context.seq_times, L)
        profile_dense = context.dense[:, self.profile_index]
        m = cand.shape[1]

        newest = (times * valid).amax(1, keepdim=True)  # [B', 1]
        if layout is not None:  # empty slots get a harmless time (nothing attends to them)
            cand_time = torch.where(layout.filled(), cand_time, newest)
        beh_age = time_bucket((newest - times).clamp(min=0), self.time_buckets)
        cand_age = time_bucket((cand_time - newest).clamp(min=0), self.time_buckets)
        positions = torch.cat([torch.arange(L, device=times.device), times.new_full((m,), L)])
        x = torch.cat([self.token(beh) + self.age(beh_age), self.token(cand) + self.age(cand_age)], 1)
        x = x + self.position(positions)
        token_times = torch.cat([times, cand_time], 1)
        allow = sequence_mask(L, m, valid, self.local_window, self.dilation)
        mask = additive_mask(allow, self.rab(positions, token_times))
        weight = torch.cat([valid.to(x.dtype), x.new_zeros((x.shape[0], m))], 1).unsqueeze(-1)
        profile = [self.user(user)[:, None]]
        if self.profile_dense is not None:
            profile.append(self.profile_dense(profile_dense)[:, None])
        slots = None if layout is None else (layout.group, layout.slot)
        return Tokens(x, mask, weight, torch.cat(profile, 1), head, dense, L, slots)


def match_counts(ids: torch.Tensor, context: Batch, length: int) -> torch.Tensor:
    """log1p of how many of the newest ``length`` behaviours share each candidate's item and its category.

    ids [B', m, 2] (item, category) against the context's behaviours -> [B', m, 2]. The exact-id form
    of a search over the sequence by the candidate's category (SIM's hard search): attention has to
    learn this equality from embeddings, and softmax weights hide how many behaviours match. A missing
    id (0) matches nothing.
    """
    valid = fit_length(context.seq_mask, length)[:, None, :]  # [B', 1, L]
    seq = torch.stack([fit_length(context.seq_items, length), fit_length(context.seq_categories, length)], -1)
    same = (ids[:, :, None, :] == seq[:, None, :, :]) & valid[..., None] & (ids[:, :, None, :] != 0)
    return torch.log1p(same.sum(2).float())


class SequenceModel(CTRModel):
    """Shared scoring paths of the teacher and the student; subclasses implement ``encode_depths``."""

    inputs: SequenceInput

    def _init_head(
        self, d_model: int, hidden: tuple[int, ...], dropout: float, wide_ids: bool = False
    ) -> None:
        self.final_norm = RMSNorm(d_model)
        self.head = mlp_head(d_model + self.inputs.head_features_dim, hidden, dropout)
        self.wide = WideLinear(self.schema)
        # Wide & deep's other half: one weight per hashed id of every slot, LR inside the network. It is
        # per row, so it is added to each row's logit after any layout (no scatter into passes).
        self.id_wide = FeatureEmbedding(self.schema, 1, init_std=0.0) if wide_ids else None

    def _with_ids(self, logits: torch.Tensor, batch: Batch) -> torch.Tensor:
        """Per-row logits plus the id term (``wide_ids``), in the batch's row order."""
        if self.id_wide is None:
            return logits
        term = LINEAR_STEP_SCALE * self.id_wide.categorical(batch.categorical).sum((1, 2))
        return logits + term.to(logits.dtype)

    def candidate_logits(self, candidates: torch.Tensor, tokens: Tokens) -> torch.Tensor:
        """The candidates' final states [B', m, D] -> [B', m] logits (plus the wide path)."""
        states = self.final_norm(candidates)
        deep = self.head(torch.cat([states, tokens.head_features.to(states.dtype)], -1)).squeeze(-1)
        return deep + self.wide(tokens.dense.to(deep.dtype))

    def encode_depths(self, tokens: Tokens, depths: int) -> tuple[list[torch.Tensor], torch.Tensor]:
        raise NotImplementedError  # pragma: no cover - abstract

    def logits(self, batch: Batch) -> torch.Tensor:
        tokens = self.inputs(batch)
        logits, _ = self.encode_depths(tokens, 1)
        return self._with_ids(tokens.per_row(logits[-1]), batch)

    def forward_train(self, batch: Batch) -> ModelOutput:
        tokens = self.inputs(batch)
        logits, aux = self.encode_depths(tokens, self.train_depths)
        return ModelOutput([self._with_ids(tokens.per_row(z), batch) for z in logits], aux)

    @property
    def train_depths(self) -> int:
        return 1

    def score_candidates(self, batch: Batch) -> torch.Tensor:
        """Score every row of ``batch`` as a candidate of ONE user in one pass (zero-loop path).

        The behaviour sequence and profile come from row 0 and are encoded once; the candidate-isolation
        mask keeps each candidate's score equal to scoring it alone.
        """
        if len(batch) and not bool((batch.user == batch.user[0]).all()):
            raise ValueError("score_candidates takes the candidates of one user; got several user keys")
        return self.score_request(batch)

    def score_request(self, batch: Batch) -> torch.Tensor:
        """``score_candidates`` without the one-user check (no data-dependent branch: torch.export-able)."""
        logits, _ = self.encode_depths(self.inputs(batch, one_user=True), 1)
        return self.calibration(self._with_ids(logits[-1].reshape(-1), batch))
