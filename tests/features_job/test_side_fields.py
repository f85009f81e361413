"""Side information joined by an adapter survives the feature job and reaches the training set."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow.parquet as pq
from typer.testing import CliRunner

from features.manifest import DatasetManifest
from orchestration.cli import app
from pipelines.settings import Settings
from training.inputs import InputSchema, encode

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
runner = CliRunner()


def test_mind_news_categories_reach_the_training_set(home: Path, tmp_path: Path) -> None:
    log = tmp_path / "mind.jsonl"
    converted = runner.invoke(app, ["convert", "mind", str(FIXTURES / "mind_behaviors.tsv"), str(log),
                                    "--news", str(FIXTURES / "mind_news.tsv")])
    assert converted.exit_code == 0, converted.output
    built = runner.invoke(app, ["--home", str(home), "features", "build", "--from-file", str(log), "--json"])
    assert built.exit_code == 0, built.output
    dataset = runner.invoke(app, ["--home", str(home), "dataset", "build", "--json"])
    assert dataset.exit_code == 0, dataset.output
    manifest = json.loads(dataset.stdout)
    categorical = set(manifest["columns"]["categorical"])
    assert {"subcategory", "request_size", "genres", "user_gender"} <= categorical

    table = pq.read_table(Settings(home=home).datasets_dir / manifest["name"] / "data.parquet")
    rows = {r["impression_id"]: r for r in table.to_pylist()}
    assert len(rows) == 17  # every impression labelled
    assert (rows["1-0"]["item_id"], rows["1-0"]["subcategory"], rows["1-0"]["request_size"]) == (
        "N10", "football_nfl", 3)
    assert (rows["5-1"]["item_id"], rows["5-1"]["subcategory"], rows["5-1"]["request_size"]) == (
        "N20", None, 5)  # not in news.tsv
    assert all(r["hour"] is not None for r in rows.values())

    schema = InputSchema.from_manifest(DatasetManifest.from_dict(manifest), max_seq_len=4)
    batch = encode(table, schema)
    sub = batch.categorical[:, schema.slot("subcategory")]
    known = [r["subcategory"] is not None for r in table.to_pylist()]
    assert [bool(v) for v in (sub != 0).tolist()] == known  # joined values hash to real buckets
