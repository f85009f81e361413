"""Models: candidate-parallel exactness, loop paths, gradient reach, layout flags, presets, masks."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch
import torch.nn.functional as F
from synthetic import make_dataset

from training.config import GRADES, BaselineConfig, StudentConfig, TeacherConfig
from training.inputs import Batch, InputSchema, context_groups, encode
from training.models import FeatureEmbedding, Student, Teacher, build_model
from training.models.base import LINEAR_STEP_SCALE
from training.models.layers import sequence_mask
from training.models.sequence import SequenceModel, match_counts
from training.models.uab import UAB
from training.optim import SplitOptimizer
from training.trainer import predict_logits

L = 8
TINY_TEACHER = {"d_model": 16, "n_heads": 2, "seq_len": L, "n_entry": 1, "n_shared": 1, "n_exit": 1,
                "loops": 2, "head_hidden": [16]}
TINY_STUDENT = {"d_model": 16, "n_heads": 2, "seq_len": L, "local_window": 2, "dilation": 3,
                "head_hidden": [16]}
BASELINE = {"hidden": [16], "seq_len": L}


@pytest.fixture(scope="module")
def data() -> tuple[InputSchema, Batch]:
    table, manifest = make_dataset(n_rows=240, seed=4, seq_len=L, n_users=6)
    schema = InputSchema.from_manifest(manifest, max_seq_len=L)
    return schema, encode(table, schema)


def one_user_request(batch: Batch, schema: InputSchema, m: int, seq_from: int) -> Batch:
    """m candidates sharing one user's behaviours and profile (row ``seq_from``), as a serving request."""
    req = batch.slice(0, m)
    req = dataclasses.replace(req, **{f: getattr(req, f).clone() for f in
                                      ("seq_items", "seq_categories", "seq_times", "seq_mask", "dense",
                                       "categorical", "user")})
    for f in ("seq_items", "seq_categories", "seq_times", "seq_mask"):
        getattr(req, f)[:] = getattr(batch, f)[seq_from]
    profile = list(schema.profile_dense_index)
    req.dense[:, profile] = batch.dense[seq_from, profile]
    req.categorical[:, schema.slot(schema.user)] = batch.categorical[seq_from, schema.slot(schema.user)]
    req.user[:] = batch.user[seq_from]
    return req


def row_with_sequence(batch: Batch, min_len: int, max_len: int) -> int:
    lengths = batch.seq_mask.sum(1)
    return int(torch.nonzero((lengths >= min_len) & (lengths <= max_len))[0])


@pytest.mark.parametrize("family,config", [("student", TINY_STUDENT), ("teacher", TINY_TEACHER)])
@pytest.mark.parametrize("seq_fill", ["full", "padded"])
def test_m_candidates_in_one_pass_equal_one_by_one(data, family, config, seq_fill):
    schema, batch = data
    torch.manual_seed(0)
    model = build_model(family, config, schema).eval()
    src = row_with_sequence(batch, L, L) if seq_fill == "full" else row_with_sequence(batch, 1, L - 3)
    request = one_user_request(batch, schema, m=24, seq_from=src)
    with torch.no_grad():
        together = model.score_candidates(request)
        alone = torch.cat([model.score_candidates(request.slice(i, i + 1)) for i in range(len(request))])
        rows = model(request)  # the row-wise training/inference path, one sequence per row
    assert together.shape == (24,)
    assert (together - alone).abs().max() < 1e-5
    assert (together - rows).abs().max() < 1e-5
    assert together.std() > 0  # candidates really differ: the test is not comparing constants


def test_score_candidates_refuses_several_users(data):
    schema, batch = data
    model = build_model("student", TINY_STUDENT, schema)
    with pytest.raises(ValueError, match="one user"):
        model.score_candidates(batch.slice(0, 10))


def test_sparse_mask_matches_local_dilated_rule_with_isolation_and_padding():
    seq_len, m, k, r = 7, 3, 2, 3
    valid = torch.tensor([[False, True, True, True, True, True, True]])
    allow = sequence_mask(seq_len, m, valid, local_window=k, dilation=r)[0, 0]
    for q in range(seq_len + m):
        for key in range(seq_len + m):
            if q == key:
                expected = True
            elif q < seq_len:
                in_pattern = (q - key) < k or (q - key) % r == 0
                expected = key < seq_len and key <= q and in_pattern and bool(valid[0, key])
            else:
                expected = key < seq_len and bool(valid[0, key])
            assert bool(allow[q, key]) == expected, (q, key)
    dense = sequence_mask(seq_len, 1, valid)[0, 0]
    assert bool(dense[6, 1]) and not bool(dense[1, 6]) and not bool(dense[3, 0])


def test_zero_loop_inference_is_the_first_supervised_depth_and_k_loops_run(data):
    schema, batch = data
    torch.manual_seed(0)
    for family, config, depths in [
        ("teacher", TINY_TEACHER, 3),
        ("student", {**TINY_STUDENT, "loops": 2}, 3),
        ("teacher", {**TINY_TEACHER, "loops": 0}, 1),
    ]:
        model = build_model(family, config, schema).eval()
        with torch.no_grad():
            out = model.forward_train(batch)
            served = model(batch)
        assert len(out.logits) == depths
        assert all(z.shape == (len(batch),) and torch.isfinite(z).all() for z in out.logits)
        assert torch.allclose(served, out.logits[0], atol=1e-6)
        if depths > 1:  # deeper loops compute something different from the zero-loop pass
            assert (out.logits[-1] - out.logits[0]).abs().max() > 1e-6


def _all_grads_reached(model: torch.nn.Module, batch: Batch) -> list[str]:
    """Names of parameters without gradient on the second step (the first moves zero-initialised gates,
    e.g. DeRes's pseudo-query, whose keys only get gradient once the query is non-zero)."""
    model.train()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    for _ in range(2):
        opt.zero_grad()
        out = model.forward_train(batch)
        loss = sum(F.binary_cross_entropy_with_logits(z, batch.label) for z in out.logits) + out.aux_loss
        loss.backward()
        opt.step()
    return [n for n, p in model.named_parameters()
            if p.requires_grad and (p.grad is None or p.grad.abs().sum() == 0)]


@pytest.mark.parametrize("family,config", [
    ("teacher", {**TINY_TEACHER, "connector": "deres"}),
    ("teacher", {**TINY_TEACHER, "connector": "deres_softmax"}),
    ("teacher", {**TINY_TEACHER, "connector": "residual"}),
    ("teacher", {**TINY_TEACHER, "moe": True, "n_experts": 3, "top_k": 2}),
    ("teacher", {**TINY_TEACHER, "faithful": True}),
    ("student", TINY_STUDENT),
    ("student", {**TINY_STUDENT, "loops": 1}),
    *[(kind, BASELINE) for kind in ("lr", "dnn", "deepfm", "dcnv2", "din")],
])
def test_gradients_reach_every_parameter(data, family, config):
    schema, batch = data
    torch.manual_seed(0)
    model = build_model(family, config, schema)
    dead = set(_all_grads_reached(model, batch))
    if config.get("connector") == "deres_softmax":
        # The first connector sees one source, the token embeddings, which are also its identity input:
        # a softmax over one source is the constant 1, so both paths are the same tensor and its query,
        # key norm and gate cannot matter, mathematically. (With SiLU they do, and are checked.)
        dead -= {"entry_conn.0.query", "entry_conn.0.key_norm.weight", "entry_conn.0.gate_bias"}
    assert dead == set()


def test_teacher_and_students_share_one_embedding_table(data):
    schema, batch = data
    shared = FeatureEmbedding(schema, 16)
    teacher = build_model("teacher", TINY_TEACHER, schema, embedding=shared)
    students = [build_model("student", TINY_STUDENT, schema, embedding=shared) for _ in range(2)]
    table = shared.table.weight
    assert all(m.inputs.embedding.table.weight is table for m in (teacher, *students))
    loss = F.binary_cross_entropy_with_logits(students[1](batch), batch.label)
    loss.backward()
    assert table.grad is not None and table.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="d_embed"):
        build_model("student", {**TINY_STUDENT, "d_embed": 8}, schema, embedding=shared)


def test_faithful_flag_reproduces_the_released_block_layout():
    torch.manual_seed(0)
    block = UAB(16, 2, faithful=True).eval()
    x, profile = torch.randn(3, 5, 16), torch.randn(3, 2, 16)
    mask = torch.zeros(3, 1, 5, 5)
    weight = torch.ones(3, 5, 1)
    with torch.no_grad():
        got, _ = block(x, profile, mask, weight)
        h = block.norm1(x)  # the input is replaced by its norm: no raw residual stream
        h = block.norm2(block.self_attn(h, h, mask) + h)
        h = block.norm3(block.align(h, block.cross_attn(h, profile), weight) + h)
        expected = block.ffn(h)[0] + h
        block.faithful = False
        clean, _ = block(x, profile, mask, weight)
    assert torch.allclose(got, expected, atol=1e-6)
    assert (clean - got).abs().max() > 1e-3


def test_grade_presets_build_and_grow():
    sizes = []
    schema = InputSchema.from_manifest(make_dataset(n_rows=20, seed=0)[1], max_seq_len=4)
    for grade in GRADES:
        config = TeacherConfig.grade(grade)
        layers, width, heads, seq_len = GRADES[grade]
        assert (config.d_model, config.n_heads, config.seq_len) == (width, heads, seq_len)
        assert config.n_entry + config.n_shared + config.n_exit == layers and config.grade_name == grade
        model = build_model("teacher", config.to_dict(), schema)
        sizes.append(model.num_parameters() - model.inputs.embedding.table.weight.numel())
    assert sizes == sorted(sizes) and len(set(sizes)) == len(sizes)
    with pytest.raises(ValueError, match="grade"):
        TeacherConfig.grade("G9")


def test_configs_round_trip_and_validate():
    for config in (TeacherConfig.grade("G2", moe=True), StudentConfig(loops=2), BaselineConfig(kind="din")):
        assert type(config).from_dict(config.to_dict()) == config
    with pytest.raises(ValueError, match="connector"):
        TeacherConfig(connector="hyper")
    with pytest.raises(ValueError, match="divisible"):
        StudentConfig(d_model=30, n_heads=4)
    with pytest.raises(ValueError, match="family"):
        build_model("gbdt", {}, InputSchema.from_manifest(make_dataset(n_rows=20)[1], 4))


def test_models_run_under_cpu_bf16_autocast(data):
    schema, batch = data
    torch.manual_seed(0)
    for family, config in [("teacher", {**TINY_TEACHER, "moe": True}), ("student", TINY_STUDENT),
                           ("din", BASELINE)]:
        model = build_model(family, config, schema).eval()
        with torch.no_grad():
            full = model(batch)
            with torch.autocast("cpu", dtype=torch.bfloat16):
                half = model(batch)
        assert torch.isfinite(half).all()
        assert (half.float() - full).abs().max() < 0.1  # bf16 keeps ~3 significant digits


def test_every_family_learns_the_synthetic_signal(data):
    schema, batch = data
    rate = batch.label.mean().item()
    base_rate_logloss = -(rate * math.log(rate) + (1 - rate) * math.log(1 - rate))
    for family, config in [("teacher", TINY_TEACHER), ("student", TINY_STUDENT),
                           *[(kind, BASELINE) for kind in ("lr", "dnn", "deepfm", "dcnv2", "din")]]:
        torch.manual_seed(0)
        model = build_model(family, config, schema)
        opt = SplitOptimizer([model], lr=1e-2)
        losses = []
        for _ in range(25):
            opt.zero_grad()
            out = model.forward_train(batch)
            loss = sum(F.binary_cross_entropy_with_logits(z, batch.label) for z in out.logits)
            loss = loss / len(out.logits)
            loss.backward()
            opt.step()
            losses.append(loss.item())
        # Below what the click rate alone buys (a constant prediction's logloss): the model used the features.
        assert math.isfinite(losses[-1]) and losses[-1] < 0.92 * base_rate_logloss, (family, losses[-1])


def test_student_is_exportable(data):
    schema, batch = data
    torch.manual_seed(0)
    model = build_model("student", TINY_STUDENT, schema).eval()
    assert isinstance(model, Student) and not isinstance(model, Teacher)

    class Serving(torch.nn.Module):
        def __init__(self, inner: Student) -> None:
            super().__init__()
            self.inner = inner

        def forward(self, *tensors: torch.Tensor) -> torch.Tensor:
            return self.inner.score_request(Batch(*tensors))

    names = [f.name for f in dataclasses.fields(Batch) if f.name != "p_click"]
    request = one_user_request(batch, schema, 6, seq_from=row_with_sequence(batch, 3, L))
    with torch.no_grad():
        args = tuple(getattr(request, n) for n in names)
        exported = torch.export.export(Serving(model), args).module()
        assert torch.allclose(exported(*args), model.score_candidates(request), atol=1e-6)


def requests_batch(batch: Batch, schema: InputSchema, sizes: tuple[int, ...]) -> tuple[Batch, torch.Tensor]:
    """Several requests (each ``one_user_request`` of a different user row), rows shuffled together, and
    each row's request index."""
    lengths = batch.seq_mask.sum(1)
    sources = [int(i) for i in torch.nonzero(lengths >= 1)[: len(sizes)]]
    parts = [one_user_request(batch.slice(k * 8, len(batch)), schema, m, seq_from=s - k * 8)
             for k, (m, s) in enumerate(zip(sizes, sources, strict=True))]
    cat = Batch(**{f.name: None if getattr(parts[0], f.name) is None else
                   torch.cat([getattr(p, f.name) for p in parts]) for f in dataclasses.fields(Batch)})
    owner = torch.cat([torch.full((m,), k) for k, m in enumerate(sizes)])
    order = torch.randperm(len(owner), generator=torch.Generator().manual_seed(0))
    return cat.index(order), owner[order]


def test_context_groups_are_exactly_the_rows_with_one_user_context(data):
    schema, batch = data
    rows, owner = requests_batch(batch, schema, (3, 1, 7, 5))
    keys = context_groups(rows, schema)
    same_key = keys[:, None] == keys[None, :]
    assert torch.equal(same_key, owner[:, None] == owner[None, :])
    # a row whose user-level dense feature differs from the rest of its request is a context of its own
    profile = schema.profile_dense_index[0]
    changed = dataclasses.replace(rows, dense=rows.dense.clone())
    changed.dense[int(torch.nonzero(owner == 2)[0]), profile] += 1.0
    assert context_groups(changed, schema).unique().numel() == 5


@pytest.mark.parametrize("family,config", [("student", TINY_STUDENT), ("teacher", TINY_TEACHER),
                                           ("student", {**TINY_STUDENT, "wide_ids": True})])
def test_grouped_training_pass_equals_rows_pass(data, family, config):
    """One encoding per user context (candidates scattered into passes, a 20-row request cut into chunks)
    gives every row the logits and the parameters the gradients of encoding each row on its own."""
    schema, batch = data
    rows, _ = requests_batch(batch, schema, (20, 1, 6, 4))
    grouped = dataclasses.replace(rows, group=context_groups(rows, schema))
    torch.manual_seed(0)
    model = build_model(family, config, schema).train()
    assert model.inputs(grouped).x.shape[0] == 5  # passes: the 20-row request in 2 chunks, then 1, 6, 4
    results = []
    for b in (rows, grouped):
        model.zero_grad()
        out = model.forward_train(b)
        sum(F.binary_cross_entropy_with_logits(z, b.label) for z in out.logits).backward()
        grads = {n: (p.grad.to_dense() if p.grad.is_sparse else p.grad).clone()
                 for n, p in model.named_parameters() if p.grad is not None}
        results.append((torch.stack(out.logits), grads))
    (z_rows, g_rows), (z_grouped, g_grouped) = results
    assert z_rows.shape == z_grouped.shape == (len(out.logits), len(rows))
    assert (z_rows - z_grouped).abs().max() < 1e-5
    assert z_rows.std() > 0
    assert g_rows.keys() == g_grouped.keys()
    for name, g in g_rows.items():
        assert (g - g_grouped[name]).abs().max() < 1e-5 * max(1.0, float(g.abs().max())), name


def test_prediction_encodes_each_context_once_with_the_row_scores(data):
    schema, batch = data
    rows, _ = requests_batch(batch, schema, (9, 3, 1, 12))
    torch.manual_seed(0)
    model = build_model("student", TINY_STUDENT, schema).eval()
    with torch.no_grad():
        per_row = model.logits(rows).numpy()
    # chunks of 7 rows: requests are cut at chunk edges, each piece one pass
    grouped = predict_logits(model, rows, torch.device("cpu"), batch_size=7, calibrated=False)
    assert abs(grouped - per_row).max() < 1e-5 and per_row.std() > 0


def test_wide_ids_add_a_logistic_regression_term_in_every_layout(data):
    """wide_ids: the student's logit gains LINEAR_STEP_SCALE x the sum of one weight per hashed id, the same
    in the one-pass, one-by-one and row layouts (the term follows each candidate)."""
    schema, batch = data
    torch.manual_seed(0)
    model = build_model("student", {**TINY_STUDENT, "wide_ids": True}, schema).eval()
    table = model.id_wide.table.weight
    with torch.no_grad():
        table.normal_(std=0.05)
    request = one_user_request(batch, schema, m=12, seq_from=row_with_sequence(batch, L, L))
    with torch.no_grad():
        together = model.score_candidates(request)
        alone = torch.cat([model.score_candidates(request.slice(i, i + 1)) for i in range(len(request))])
        rows = model(request)
        term = LINEAR_STEP_SCALE * model.id_wide.categorical(request.categorical).sum((1, 2))
        table.zero_()
        without = model.score_candidates(request)
    assert (together - alone).abs().max() < 1e-5 and (together - rows).abs().max() < 1e-5
    scale = float(model.calibration.scale)  # identity before calibration is fitted
    assert term.std() > 0 and ((together - without) - scale * term).abs().max() < 1e-5


@pytest.mark.parametrize("family,config", [
    ("student", TINY_STUDENT),
    ("student", TINY_STUDENT | {"loops": 2}),
    ("teacher", TINY_TEACHER),
    ("teacher", TINY_TEACHER | {"n_exit": 2, "connector": "deres"}),
    ("teacher", TINY_TEACHER | {"n_exit": 0}),
    ("teacher", TINY_TEACHER | {"connector": "residual", "faithful": True}),
])
def test_cutting_the_last_block_to_the_candidates_changes_no_logit(data, family, config, monkeypatch):
    """Each depth's logits with the cut equal those of a model whose blocks all keep every token and
    whose head reads the candidates at the end (what the models did before the cut), so the cut sits
    only where no later block reads the behaviour states."""
    schema, batch = data
    grouped = dataclasses.replace(batch, group=context_groups(batch, schema))
    torch.manual_seed(0)
    model = build_model(family, config, schema).train()
    cut = [model.forward_train(rows).logits for rows in (batch, grouped)]
    forward, head = UAB.forward, SequenceModel.candidate_logits

    def uncut(self, x, profile, mask, weight, keep_from=None):
        return forward(self, x, profile, mask, weight)

    def head_on_all_tokens(self, x, tokens):
        return head(self, x[:, tokens.seq_len:] if x.shape[1] > tokens.head_features.shape[1] else x, tokens)

    monkeypatch.setattr(UAB, "forward", uncut)
    monkeypatch.setattr(SequenceModel, "candidate_logits", head_on_all_tokens)
    for rows, logits in zip((batch, grouped), cut, strict=True):
        reference = model.forward_train(rows).logits
        assert len(logits) == len(reference) == model.train_depths
        for a, b in zip(logits, reference, strict=True):
            assert torch.allclose(a, b, atol=1e-6)


def test_match_counts_are_the_behaviours_sharing_the_candidates_item_and_category(data):
    """log1p of the count of real behaviours (padding and missing ids excluded) with the candidate's item
    id and, apart, its category id, as a plain loop counts them; the student's head reads exactly that."""
    schema, batch = data
    rows = batch.slice(0, 64)
    # Make matches certain: every candidate takes the item and category of its own newest behaviour.
    has = rows.seq_mask[:, -1]
    rows = dataclasses.replace(rows, cand_item=torch.where(has, rows.seq_items[:, -1], rows.cand_item),
                               cand_category=torch.where(has, rows.seq_categories[:, -1], rows.cand_category))
    rows.cand_category[:4] = 0  # a missing category matches nothing, even a missing one in the sequence
    rows.seq_categories[:4, -1] = 0
    def counts(b: Batch) -> torch.Tensor:
        return match_counts(torch.stack([b.cand_item, b.cand_category], -1)[:, None], b, L)[:, 0]

    got = counts(rows)
    for i in range(len(rows)):
        real = rows.seq_mask[i, -L:]
        pairs = [(rows.cand_item, rows.seq_items), (rows.cand_category, rows.seq_categories)]
        for j, (cand, seq) in enumerate(pairs):
            want = 0 if cand[i] == 0 else int(((seq[i, -L:] == cand[i]) & real).sum())
            assert got[i, j] == pytest.approx(math.log1p(want)), (i, j)
    assert (got[has, 0] > 0).all() and (got[4:][has[4:], 1] > 0).all() and (got[:4, 1] == 0).all()
    # The head's input carries each row's counts in all three layouts (rows, one pass per context, one
    # user's candidates), so a misplaced scatter would show here; the layout tests check the scores.
    torch.manual_seed(0)
    model = build_model("student", TINY_STUDENT, schema).eval()
    assert model.inputs.target_match and model.inputs.head_features_dim == build_model(
        "student", {**TINY_STUDENT, "target_match": False}, schema).inputs.head_features_dim + 2
    with torch.no_grad():
        by_rows = model.inputs(rows)
        torch.testing.assert_close(by_rows.head_features[:, 0, -2:], got, rtol=0, atol=0)
        grouped = model.inputs(dataclasses.replace(rows, group=context_groups(rows, schema)))
        torch.testing.assert_close(grouped.head_features[grouped.slots][:, -2:], got, rtol=0, atol=0)
        request = one_user_request(rows, schema, m=12, seq_from=int(torch.nonzero(has)[0]))
        one = model.inputs(request, one_user=True)
        torch.testing.assert_close(one.head_features[0, :, -2:], counts(request), rtol=0, atol=0)
    assert counts(request)[:, 1].std() > 0  # the request's candidates differ in their counts
