"""A small served world: a synthetic warehouse, its online store, a trained version and its champion.

Real parts throughout: the training set is built by the point-in-time join, the cohort is trained by
``training.cycle.run_cycle`` (one tiny student), features are pushed through Feast.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime

import pyarrow as pa
import pyarrow.compute as pc
import torch

from features.datasets import build_dataset, load_dataset
from features.feature_repo.definitions import VIEW_TABLES
from features.online import push_latest
from pipelines.settings import Settings
from tests.feature_store.synthetic_warehouse import write_synthetic_warehouse
from tests.training.tiny import STUDENT
from training import artifacts
from training.artifacts import ModelRecord
from training.cycle import run_cycle
from training.registry import ChampionPointer, write_champion_pointer
from training.trainer import TrainConfig


@dataclass(frozen=True)
class World:
    settings: Settings
    tables: dict[str, pa.Table]
    version: str
    model: str
    as_of_ms: int  # the newest feature row: every pushed row is the warehouse's newest as of this time


def tiny_config(seed: int = 0) -> TrainConfig:
    return TrainConfig.from_dict({"teacher_grade": None, "students": 1, "student": STUDENT, "batch_size": 64,
                                  "lr": 3e-3, "seed": seed, "threads": 1, "eval_batch_size": 256})


def build_world(settings: Settings, seed: int = 3) -> World:
    tables = write_synthetic_warehouse(settings, n_samples=240, n_users=10, n_items=30, feature_rows=200,
                                       seed=seed)
    for table in VIEW_TABLES.values():
        push_latest(settings, table, tables[table])
    built = build_dataset(settings)
    table, manifest = load_dataset(settings, built.name)
    result = run_cycle(settings, table, manifest, tiny_config(), report=False, progress=False)
    assert result.version is not None and result.serve is not None
    as_of = max(pc.max(tables[t].column("event_time")).value for t in VIEW_TABLES.values())
    return World(settings, tables, result.version, result.serve, int(as_of))


def promote(settings: Settings, version: str, model: str) -> None:
    write_champion_pointer(settings, ChampionPointer(version=version, model=model,
                                                     promoted_at=datetime.now(UTC).isoformat()))


def variant(settings: Settings, version: str, model: str, change: Callable[[torch.nn.Module], None]) -> str:
    """A new version holding ``model`` of ``version`` after ``change`` (same schema and config)."""
    config = artifacts.read_config(settings, version)
    net, _ = artifacts.load_model(settings, version, model)
    with torch.no_grad():
        change(net)
    entry = config.models[model]
    return artifacts.save_version(
        settings, {model: net}, {model: ModelRecord(entry.family, entry.config, entry.metrics)},
        config.input_schema, feature_service=config.feature_service, train=config.train,
        holdout=config.holdout, train_config=config.train_config, parent=version, serve=model,
    ).version


def last_head_bias(net: torch.nn.Module) -> torch.Tensor:
    return net.head[-1].bias


def shifted(net: torch.nn.Module) -> None:
    last_head_bias(net).add_(1.5)


def poisoned(net: torch.nn.Module) -> None:
    last_head_bias(net).fill_(float("nan"))


def corrupt_copy(settings: Settings, version: str) -> str:
    """A copy of ``version`` under a new id whose weights file is truncated garbage."""
    new = artifacts.new_version_id()
    shutil.copytree(settings.registry_dir / version, settings.registry_dir / new)
    weights = settings.registry_dir / new / artifacts.WEIGHTS_FILE
    weights.write_bytes(weights.read_bytes()[:100])
    return new
