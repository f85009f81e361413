"""The input layer: schema from the dataset manifest, hashing into one id space, padding, normalisation."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pyarrow as pa
import pytest
import torch
from synthetic import DENSE, SEQ_CATS, SEQ_ITEMS, SEQ_LEN_COL, SEQ_TIMES, make_dataset

from features.manifest import DatasetManifest, ManifestColumns, ManifestError
from pipelines.events import stable_int_id
from training.inputs import PRIOR_CTR, InputSchema, encode, hash_ids


@pytest.fixture(scope="module")
def dataset() -> tuple[pa.Table, dict]:
    return make_dataset(n_rows=300, seed=1)


def test_schema_comes_from_the_manifest_and_round_trips_through_json(dataset):
    _, manifest = dataset
    schema = InputSchema.from_manifest(manifest, max_seq_len=6)
    assert schema.categorical[0] == "user_id" and schema.item == "item_id" and schema.category == "category"
    assert schema.seq_item_ids == SEQ_ITEMS
    assert schema.feature_service == manifest.feature_service == "sequence_ctr"
    assert schema.has_p_click
    # The sequence length is no dense input (the builder's layout): the mask carries it.
    assert set(schema.profile_dense) == {d for d in DENSE if d.startswith("user_stats")}
    assert SEQ_LEN_COL not in schema.dense
    assert dict(zip(schema.dense, schema.dense_kinds, strict=True))["item_stats__ctr_24h"] == "rate"
    assert dict(zip(schema.dense, schema.dense_kinds, strict=True))["user_stats__clicks_7d"] == "count"
    assert InputSchema.from_dict(json.loads(json.dumps(schema.to_dict()))) == schema


def test_bad_manifests_and_bounds_are_refused(dataset):
    _, manifest = dataset
    with pytest.raises(ManifestError, match="incomplete"):
        DatasetManifest.from_dict({"name": "x"})
    with pytest.raises(ValueError, match="max_seq_len"):
        InputSchema.from_manifest(manifest, max_seq_len=0)
    with pytest.raises(ValueError, match="unknown"):
        InputSchema.from_dict({**InputSchema.from_manifest(manifest, 4).to_dict(), "surprise": 1})
    tabular = dataclasses.replace(
        manifest, feature_service="tabular_ctr", columns=ManifestColumns.for_features(DENSE)
    )
    with pytest.raises(ValueError, match="no behaviour sequence.*sequence_ctr"):
        InputSchema.from_manifest(tabular, max_seq_len=4)


def test_encode_shapes_right_alignment_and_truncation(dataset):
    table, manifest = dataset
    L = 4
    schema = InputSchema.from_manifest(manifest, max_seq_len=L)
    batch = encode(table, schema)
    n = table.num_rows
    assert batch.categorical.shape == (n, len(schema.categorical))
    assert batch.dense.shape == (n, len(schema.dense))
    assert batch.seq_items.shape == batch.seq_mask.shape == batch.seq_times.shape == (n, L)
    item_buckets = schema.buckets[schema.slot("item_id")]
    for row in range(n):
        raw = table.column(SEQ_ITEMS)[row].as_py()
        times = table.column(SEQ_TIMES)[row].as_py()
        kept = raw[-L:]
        mask = batch.seq_mask[row].tolist()
        assert mask == [False] * (L - len(kept)) + [True] * len(kept)
        expected = [0] * (L - len(kept)) + [int(hash_ids(np.array([v]), item_buckets)[0]) for v in kept]
        assert batch.seq_items[row].tolist() == expected
        assert batch.seq_times[row].tolist() == [0] * (L - len(kept)) + [t // 1000 for t in times[-L:]]
    assert (batch.seq_items[~batch.seq_mask] == 0).all() and (batch.seq_items[batch.seq_mask] > 0).all()
    event_ms = table.column("event_time").cast(pa.int64()).to_pylist()
    assert batch.cand_time.tolist() == [ms // 1000 for ms in event_ms]


def test_candidate_and_behaviour_tokens_share_one_id_space(dataset):
    table, manifest = dataset
    schema = InputSchema.from_manifest(manifest, max_seq_len=8)
    batch = encode(table, schema)
    item_of = dict(zip(batch.cand_item.tolist(), table.column("item_id").to_pylist(), strict=True))
    cat_of = dict(zip(batch.cand_category.tolist(), table.column("category").to_pylist(), strict=True))
    matched = 0
    for row in range(table.num_rows):
        raw_items = table.column(SEQ_ITEMS)[row].as_py()[-8:]
        raw_cats = table.column(SEQ_CATS)[row].as_py()[-8:]
        for j, (item, cat) in enumerate(zip(raw_items, raw_cats, strict=True)):
            bucket = int(batch.seq_items[row, 8 - len(raw_items) + j])
            if bucket in item_of:
                assert stable_int_id(item_of[bucket]) == item
                assert stable_int_id(cat_of[int(batch.seq_categories[row, 8 - len(raw_items) + j])]) == cat
                matched += 1
    assert matched > 50  # clicked items reappear as candidates, through the same hashed rows


def test_hashing_is_stable_across_tables_so_warm_starts_stay_aligned():
    first, manifest = make_dataset(n_rows=120, seed=2)
    second, _ = make_dataset(n_rows=200, seed=3)
    schema = InputSchema.from_manifest(manifest, max_seq_len=4)
    a, b = encode(first, schema), encode(second.slice(50), schema)
    ids_a = dict(zip(first.column("item_id").to_pylist(), a.cand_item.tolist(), strict=True))
    ids_b = dict(zip(second.slice(50).column("item_id").to_pylist(), b.cand_item.tolist(), strict=True))
    common = set(ids_a) & set(ids_b)
    assert common and all(ids_a[k] == ids_b[k] for k in common)
    users = dict(zip(first.column("user_id").to_pylist(), a.user.tolist(), strict=True))
    assert users["u3"] == stable_int_id("u3")


def test_dense_features_are_normalised_without_fitted_state(dataset):
    table, manifest = dataset
    schema = InputSchema.from_manifest(manifest, max_seq_len=4)
    batch = encode(table, schema)
    clicks = np.asarray(table.column("user_stats__impressions_24h").to_numpy(), dtype=np.float64)
    ctr = np.asarray(table.column("item_stats__ctr_7d").to_numpy(), dtype=np.float64)
    j_count = schema.dense.index("user_stats__impressions_24h")
    j_rate = schema.dense.index("item_stats__ctr_7d")
    np.testing.assert_allclose(batch.dense[:, j_count].numpy(), np.log1p(clicks), rtol=1e-6)
    np.testing.assert_allclose(batch.dense[:, j_rate].numpy(), np.log1p(ctr / PRIOR_CTR), rtol=1e-6)


def test_missing_values_map_to_the_reserved_zero_and_nulls_are_empty_sequences(dataset):
    table, manifest = dataset
    schema = InputSchema.from_manifest(manifest, max_seq_len=4)
    nulled = table.set_column(table.schema.get_field_index("device"), "device",
                              pa.array([None] * table.num_rows, pa.string()))
    nulled = nulled.set_column(nulled.schema.get_field_index(SEQ_ITEMS), SEQ_ITEMS,
                               pa.array([None] * table.num_rows, pa.list_(pa.int64())))
    nulled = nulled.set_column(nulled.schema.get_field_index("user_stats__ctr_1h"), "user_stats__ctr_1h",
                               pa.array([None] * table.num_rows, pa.float64()))
    batch = encode(nulled, schema)
    assert (batch.categorical[:, schema.slot("device")] == 0).all()
    assert not batch.seq_mask.any() and (batch.seq_items == 0).all()
    assert (batch.dense[:, schema.dense.index("user_stats__ctr_1h")] == 0).all()


def test_bad_tables_get_clear_errors(dataset):
    table, manifest = dataset
    schema = InputSchema.from_manifest(manifest, max_seq_len=4)
    with pytest.raises(ValueError, match="category"):
        encode(table.drop_columns(["category"]), schema)
    bad_label = table.set_column(table.schema.get_field_index("label"), "label",
                                 pa.array([2] * table.num_rows, pa.int8()))
    with pytest.raises(ValueError, match="labels"):
        encode(bad_label, schema)


def test_batch_slicing_indexing_and_pandas_input(dataset):
    table, manifest = dataset
    schema = InputSchema.from_manifest(manifest, max_seq_len=4)
    batch = encode(table, schema)
    part = batch.slice(10, 20)
    assert len(part) == 10 and torch.equal(part.seq_items, batch.seq_items[10:20])
    picked = batch.index(torch.tensor([3, 1]))
    assert torch.equal(picked.label, batch.label[[3, 1]])
    assert torch.equal(picked.p_click, batch.p_click[[3, 1]])
    assert batch.to("cpu").categorical.device.type == "cpu"
    from_pandas = encode(table.slice(0, 20).to_pandas(), schema)
    assert torch.equal(from_pandas.seq_items, batch.seq_items[:20])
    assert torch.equal(from_pandas.categorical, batch.categorical[:20])


def test_the_request_key_travels_with_the_batch(dataset):
    table, manifest = dataset
    schema = InputSchema.from_manifest(manifest, max_seq_len=4)
    grouped = [f"r{i // 3}" for i in range(table.num_rows)]
    table = table.set_column(table.schema.get_field_index("request_id"), "request_id", pa.array(grouped))
    batch = encode(table, schema)
    assert batch.request is not None
    keys = batch.request.tolist()
    assert [keys[i] == keys[j] for i in range(9) for j in range(9)] == [
        grouped[i] == grouped[j] for i in range(9) for j in range(9)]
    assert torch.equal(batch.slice(2, 5).request, batch.request[2:5])
    assert encode(table.drop_columns(["request_id"]), schema).request is None
