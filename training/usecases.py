"""The training use cases: typed request in, typed report out.

`ctrflow train`, `ctrflow evaluate` and the continual-training flow's tasks are thin adapters over these,
so what a command does and what a flow does cannot drift apart: choosing the rows (named training sets,
a cycle's two sets built at a time, a version's recorded holdout), the overlap guard and the export live
here once.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Literal

from pipelines.settings import Settings
from training import artifacts, distributed
from training.cycle import (
    CycleResult,
    PredictionExport,
    build_cycle_sets,
    evaluate_version,
    export_predictions,
    load_training_set,
    recorded_holdout,
    run_cycle,
    training_overlap,
)
from training.inputs import InputSchema
from training.references import ReferenceScore, reference_metrics
from training.trainer import TrainConfig, time_split

# As a cycle time: just after the newest labelled sample. As a version: the newest saved version.
LATEST: Literal["latest"] = "latest"


@dataclass(frozen=True)
class TrainRequest:
    """What to train on and how.

    Either named training sets (``dataset``: default the newest; ``holdout``: default the latest
    ``holdout_fraction`` of ``dataset`` by time) or ``at``: build this cycle's two sets first, training on
    [at-W-H, at-H) and holding out [at-H, at) (W, H: ``Settings.train_window_s``, ``holdout_window_s``).
    """

    config: TrainConfig = field(default_factory=TrainConfig)
    dataset: str | None = None
    holdout: str | None = None
    at: datetime | Literal["latest"] | None = None
    holdout_fraction: float = 0.2
    warm_start: str | None = None  # the version to warm-start from
    progress: bool = False  # a progress bar and the ETA on stderr

    def __post_init__(self) -> None:
        if self.at is not None and (self.dataset or self.holdout):
            raise ValueError("--at builds its own training and holdout sets: drop --dataset / --holdout")


def train_version(settings: Settings, request: TrainRequest) -> CycleResult:
    """Train a cohort on the requested rows, evaluate it on the holdout, save and register the version.

    Under torchrun (training.distributed) the workers train together; the main worker builds the
    cycle's sets (``at``) and saves the version, and every worker's result names that version.
    """
    with distributed.process_group(request.config.device) as workers:
        dataset, holdout = request.dataset, request.holdout
        if request.at is not None:
            names = None
            if workers is None or workers.main:
                sets = build_cycle_sets(settings, None if request.at == LATEST else request.at)
                names = sets.train.name, sets.holdout.name
            dataset, holdout = workers.broadcast(names) if workers else names
        table, manifest = load_training_set(settings, dataset)
        holdout_table, holdout_manifest = load_training_set(settings, holdout) if holdout else (None, None)
        result = run_cycle(
            settings, table, manifest, request.config, holdout_table=holdout_table,
            holdout_manifest=holdout_manifest, holdout_fraction=request.holdout_fraction,
            parent=request.warm_start, progress=request.progress, workers=workers,
        )
        if workers is not None:
            result = dataclasses.replace(result, version=workers.broadcast(result.version))
        return result


@dataclass(frozen=True)
class EvaluateRequest:
    """Which saved version to score on which rows; by default every model on the version's recorded
    holdout, the only rows it is guaranteed never to have trained on."""

    version: str = LATEST  # a version id, or LATEST (the newest saved)
    dataset: str | None = None  # a training set to score instead of the recorded holdout
    model: str | None = None  # one model of the version (default: all)
    last_fraction: float | None = None  # only the latest fraction of the rows by time
    allow_overlap: bool = False  # score rows inside the version's training window anyway
    predictions: Path | None = None  # also write each row's scores to this .parquet file


@dataclass(frozen=True)
class EvaluationReport:
    version: str
    source: str  # what was scored: "holdout of <training set>" or the training set's name
    rows: int
    overlap_rows: int  # rows inside the version's training window (0 for its recorded holdout)
    metrics: dict[str, dict[str, float]]  # evaluate_version's result, as it returns it
    exported: PredictionExport | None = None
    references: tuple[ReferenceScore, ...] = ()  # the references' rank metrics on the same rows


def evaluate_saved_version(settings: Settings, request: EvaluateRequest) -> EvaluationReport:
    """Score a saved version's models; refuses (ValueError) rows inside its training window unless
    ``allow_overlap``, since scores on training rows flatter the model."""
    version = artifacts.latest_version(settings) if request.version == LATEST else request.version
    if version is None:
        raise ValueError("no model versions saved yet (run `ctrflow train`)")
    config = artifacts.read_config(settings, version)
    if request.dataset is None:
        if config.holdout is None:
            raise ValueError(f"version {version} recorded no holdout (an older format): pass --dataset")
        table, source = recorded_holdout(settings, config), f"holdout of {config.holdout.dataset}"
    else:
        table, source = load_training_set(settings, request.dataset)[0], request.dataset
    time_column = InputSchema.from_dict(config.input_schema).time
    if request.last_fraction is not None and request.last_fraction < 1.0:
        table = time_split(table, time_column, request.last_fraction)[1]
    overlap = training_overlap(config, table, time_column) if request.dataset is not None else 0
    if overlap and not request.allow_overlap:
        raise ValueError(
            f"{overlap} of the {table.num_rows} rows of {request.dataset} lie inside {version}'s training "
            f"window [{config.train.start}, {config.train.end}]; score its holdout (no --dataset) or pass "
            "--allow-overlap"
        )
    names = [request.model] if request.model else None
    metrics = evaluate_version(settings, version, table, names)
    exported = None
    if request.predictions is not None:
        exported = export_predictions(settings, version, table, request.predictions, names)
    references = reference_metrics(table, InputSchema.from_dict(config.input_schema))
    return EvaluationReport(version, source, table.num_rows, overlap, metrics, exported, references)
