"""A home with trained versions, built once per session and copied into each test's own home.

Versions (all on the synthetic training set ``ds-reg``, the latest 20 % by time held out):
``good`` learns the signal (three epochs); ``weak`` and ``weak2`` train on shuffled labels (a broken
upstream join) with a tiny learning rate, so they rank no better than chance, below every single feature.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
import torch

from pipelines.settings import Settings
from tests.training.synthetic import make_dataset, write_dataset
from tests.training.tiny import tiny_train_config
from training import artifacts
from training.cycle import load_training_set, recorded_holdout, run_cycle
from training.gate import SERVABILITY, Blessing, data_blessing
from training.inputs import InputSchema, encode
from training.trainer import TrainConfig, predict

DATASET = "ds-reg"


@dataclass(frozen=True)
class Versions:
    good: str
    weak: str
    weak2: str


def offline_servability(settings: Settings, version: str) -> Blessing:
    """A real check (the serving stub's stands in for it in production): the artifact loads from disk and
    scores its recorded holdout with finite probabilities strictly inside (0, 1)."""
    model, config = artifacts.load_model(settings, version)
    holdout = recorded_holdout(settings, config)
    probs = predict(model, encode(holdout, InputSchema.from_dict(config.input_schema)), torch.device("cpu"))
    bad = int((~(np.isfinite(probs) & (probs > 0) & (probs < 1))).sum())
    return Blessing(SERVABILITY, bad == 0, {"rows": len(probs), "bad_scores": bad},
                    reasons=() if bad == 0 else (f"{bad} scores not finite or outside (0, 1)",))


def _train(settings: Settings, epochs: int, lr: float, seed: int, shuffled_labels: bool = False) -> str:
    table, manifest = load_training_set(settings, DATASET)
    config = TrainConfig.from_dict(tiny_train_config(teacher_grade=None, students=1, epochs=epochs, lr=lr,
                                                     seed=seed))
    if shuffled_labels:
        # What a broken upstream join looks like: labels that belong to other rows. The rows it will be
        # gated on (the latest 20 % by time) keep their true labels.
        table = table.sort_by("event_time")
        train_rows = int(table.num_rows * 0.8)
        labels = table.column("label").to_numpy()
        mixed = np.concatenate([np.random.default_rng(seed).permutation(labels[:train_rows]),
                                labels[train_rows:]])
        table = table.set_column(table.schema.get_field_index("label"), "label",
                                 pa.array(mixed, table.schema.field("label").type))
    return run_cycle(settings, table, manifest, config, progress=False, report=False).version


@pytest.fixture(scope="session")
def template(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Versions]:
    home = tmp_path_factory.mktemp("registry") / "home"
    settings = Settings(home=home)
    table, manifest = make_dataset(n_rows=1500, seed=3, name=DATASET, item_quality=1.0)
    write_dataset(settings, table, manifest)
    versions = Versions(good=_train(settings, 3, 1e-2, 0), weak=_train(settings, 1, 1e-5, 1, True),
                        weak2=_train(settings, 1, 1e-5, 2, True))
    # Validates the training set once (Great Expectations); every later gate reuses the kept result.
    assert data_blessing(settings, artifacts.read_config(settings, versions.good)).passed
    return home, versions


@pytest.fixture
def trained(template, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Settings, Versions]:
    source, versions = template
    home = tmp_path / "home"
    shutil.copytree(source, home)
    monkeypatch.setenv("CTRFLOW_HOME", str(home))
    return Settings(home=home), versions
