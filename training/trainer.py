"""Online distillation + mutual learning: one optimizer step trains a teacher and N students together.

A *cohort* is a teacher, N LightSUAN students and optional baselines (trained alone, BCE only, in the
same pass so the comparison sees identical batches). The objective is MODELS.md §6.4 (training.losses).
Each continual-training cycle warm-starts every model by name from a saved version and makes one pass
over the new window; evaluation is progressive (on data after the window).
"""

from __future__ import annotations

import contextlib
import math
import random
import time
from collections.abc import Iterator, Mapping
from dataclasses import asdict, dataclass, field, fields
from typing import Any

import numpy as np
import pyarrow as pa
import torch
from torch import nn
from tqdm.auto import tqdm

from training import artifacts, losses
from training.config import BASELINE_KINDS, StudentConfig, TeacherConfig, config_for
from training.inputs import Batch, InputSchema
from training.metrics import evaluate_predictions, reliability_curve

TEACHER = "teacher"


@dataclass
class TrainConfig:
    """Everything that decides how a cohort is trained; recorded in every saved version."""

    teacher_grade: str | None = "G2"  # None: no teacher (students alone)
    teacher: dict[str, Any] = field(default_factory=dict)  # overrides on top of the grade preset
    students: int = 2
    student: dict[str, Any] = field(default_factory=dict)  # StudentConfig overrides
    baselines: tuple[str, ...] = ()  # kinds trained alone in the same pass, e.g. ("lr", "din")
    baseline: dict[str, Any] = field(default_factory=dict)  # BaselineConfig overrides (all kinds)
    shared_embedding: bool = True  # teacher and students look up one table (MODELS.md default)
    lambda_kd: float = 1.0
    lambda_ml: float = 1.0
    lambda_rev: float = 0.0
    temperature: float = 2.0
    kd_rampup_steps: int = 0  # λ_kd grows linearly from 0 over this many steps (immature teacher early)
    lr: float = 1e-3
    weight_decay: float = 0.0
    batch_size: int = 256
    epochs: int = 1
    seed: int = 0
    device: str = "auto"  # auto | cpu | cuda
    precision: str = "auto"  # auto (bf16 on CUDA, fp32 on CPU) | fp32 | bf16
    eval_batch_size: int = 2048
    # CPU intra-op threads (0 = torch's default). On a shared, busy machine 1 thread is often much
    # faster: OpenMP workers spin-wait for cores that other processes hold.
    threads: int = 0

    def __post_init__(self) -> None:
        if self.students < 0 or self.epochs < 1 or self.batch_size < 1 or self.eval_batch_size < 1:
            raise ValueError("students >= 0, epochs >= 1 and batch sizes >= 1 are required")
        if self.temperature <= 0 or self.lr <= 0:
            raise ValueError("temperature and lr must be positive")
        if min(self.lambda_kd, self.lambda_ml, self.lambda_rev) < 0:
            raise ValueError("loss weights must be non-negative")
        unknown = set(self.baselines) - set(BASELINE_KINDS)
        if unknown:
            raise ValueError(f"unknown baselines {sorted(unknown)}; choose from {BASELINE_KINDS}")
        if self.threads < 0:
            raise ValueError("threads must be >= 0")
        if self.precision not in ("auto", "fp32", "bf16"):
            raise ValueError(f"precision must be auto, fp32 or bf16, got {self.precision!r}")
        if self.teacher_grade is None and self.students == 0 and not self.baselines:
            raise ValueError("nothing to train: no teacher, no students, no baselines")
        self.baselines = tuple(self.baselines)

    def to_dict(self) -> dict[str, Any]:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> TrainConfig:
        known = {f.name for f in fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"unknown TrainConfig fields: {sorted(unknown)}")
        return cls(**dict(data))


# --- device and precision ---------------------------------------------------------------------------


def select_device(requested: str = "auto") -> torch.device:
    if requested == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(requested)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("device 'cuda' requested but no CUDA device is available")
    return device


def autocast_dtype(device: torch.device, precision: str = "auto") -> torch.dtype | None:
    """bf16 autocast on CUDA by default; CPU stays fp32 unless bf16 is asked for explicitly."""
    if precision == "fp32":
        return None
    if precision == "bf16":
        return torch.bfloat16
    return torch.bfloat16 if device.type == "cuda" else None


def autocast_context(device: torch.device, dtype: torch.dtype | None) -> contextlib.AbstractContextManager:
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


# --- the cohort -------------------------------------------------------------------------------------


@dataclass
class Cohort:
    """Named models trained together; `families`/`configs` are what a saved version records."""

    models: dict[str, nn.Module]
    families: dict[str, str]
    configs: dict[str, dict[str, Any]]

    @property
    def teacher(self) -> str | None:
        return TEACHER if TEACHER in self.models else None

    @property
    def students(self) -> list[str]:
        return [n for n, f in self.families.items() if f == "student"]

    @property
    def baselines(self) -> list[str]:
        return [n for n, f in self.families.items() if f in BASELINE_KINDS]

    def parameters(self) -> list[nn.Parameter]:
        """Each parameter once, even when models share an embedding table."""
        seen: dict[int, nn.Parameter] = {}
        for model in self.models.values():
            for p in model.parameters():
                seen.setdefault(id(p), p)
        return list(seen.values())

    def to(self, device: torch.device) -> Cohort:
        for model in self.models.values():
            model.to(device)
        return self

    def train(self, mode: bool = True) -> None:
        for model in self.models.values():
            model.train(mode)


def cohort_configs(config: TrainConfig) -> dict[str, tuple[str, dict[str, Any]]]:
    """name -> (family, model config dict) for every model the TrainConfig asks for."""
    out: dict[str, tuple[str, dict[str, Any]]] = {}
    if config.teacher_grade is not None:
        out[TEACHER] = ("teacher", TeacherConfig.grade(config.teacher_grade, **config.teacher).to_dict())
    for j in range(config.students):
        out[f"student_{j}"] = ("student", StudentConfig.from_dict(dict(config.student)).to_dict())
    for kind in config.baselines:
        out[kind] = (kind, config_for(kind, dict(config.baseline)).to_dict())
    return out


def build_cohort(config: TrainConfig, schema: InputSchema) -> Cohort:
    from training.models import FeatureEmbedding, build_model

    specs = cohort_configs(config)
    distilled = [n for n, (fam, _) in specs.items() if fam in ("teacher", "student")]
    shared = None
    if config.shared_embedding and len(distilled) > 1:
        dims = {specs[n][1]["d_embed"] for n in distilled}
        if len(dims) != 1:
            raise ValueError(f"a shared embedding needs one d_embed for teacher and students, got {dims}")
        shared = FeatureEmbedding(schema, dims.pop())
    models: dict[str, nn.Module] = {}
    for name, (family, cfg) in specs.items():
        # Each model gets a distinct, seed-derived init so peer students are not clones of each other.
        torch.manual_seed(config.seed * 1000 + len(models))
        models[name] = build_model(family, cfg, schema, embedding=shared if name in distilled else None)
    return Cohort(models, {n: f for n, (f, _) in specs.items()}, {n: c for n, (_, c) in specs.items()})


def warm_start(cohort: Cohort, settings, version: str) -> list[str]:
    """Load every model of the cohort that the version holds under the same name and family.

    Returns the names loaded. A model missing from the version (e.g. a new baseline) keeps its fresh
    init; a same-named model with a different config is an error, since its weights would not fit.
    """
    parent = artifacts.read_config(settings, version)
    loaded = []
    for name, model in cohort.models.items():
        entry = parent.models.get(name)
        if entry is None:
            continue
        if entry.family != cohort.families[name] or entry.config != cohort.configs[name]:
            raise ValueError(
                f"cannot warm-start {name!r} from {version}: family/config differ "
                f"({entry.family} vs {cohort.families[name]})"
            )
        model.load_state_dict(artifacts.read_weights(settings, version, name))
        loaded.append(name)
    return loaded


# --- training ---------------------------------------------------------------------------------------


@dataclass
class TrainHistory:
    losses: dict[str, list[float]] = field(default_factory=dict)  # per model, one value per step
    steps: int = 0
    samples: int = 0
    seconds: float = 0.0

    @property
    def samples_per_s(self) -> float:
        return self.samples / self.seconds if self.seconds > 0 else float("nan")


def _minibatches(batch: Batch, size: int, generator: torch.Generator) -> Iterator[Batch]:
    order = torch.randperm(len(batch), generator=generator)
    for start in range(0, len(batch), size):
        yield batch.index(order[start : start + size])


def kd_weight(config: TrainConfig, step: int) -> float:
    if config.kd_rampup_steps <= 0:
        return config.lambda_kd
    return config.lambda_kd * min(1.0, (step + 1) / config.kd_rampup_steps)


def cohort_step_losses(
    cohort: Cohort, batch: Batch, config: TrainConfig, step: int
) -> dict[str, torch.Tensor]:
    """Every model's loss for one minibatch (forward in training mode, the joint objective)."""
    outputs = {name: model.forward_train(batch) for name, model in cohort.models.items()}
    y = batch.label
    teacher = cohort.teacher
    t_loss, s_losses = losses.cohort_losses(
        outputs[teacher].logits if teacher else None,
        [outputs[s].logits for s in cohort.students],
        y,
        lambda_kd=kd_weight(config, step),
        lambda_ml=config.lambda_ml,
        lambda_rev=config.lambda_rev,
        temperature=config.temperature,
    )
    out: dict[str, torch.Tensor] = {}
    if teacher:
        out[teacher] = t_loss + outputs[teacher].aux_loss
    for name, loss in zip(cohort.students, s_losses, strict=True):
        out[name] = loss + outputs[name].aux_loss
    for name in cohort.baselines:
        out[name] = losses.loop_bce(outputs[name].logits, y) + outputs[name].aux_loss
    return out


def train_window(
    cohort: Cohort, data: Batch, config: TrainConfig, device: torch.device, progress: bool = True
) -> TrainHistory:
    """`config.epochs` passes over one data window; all models step together on the same batches."""
    if config.threads:
        torch.set_num_threads(config.threads)
    optimizer = torch.optim.AdamW(cohort.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    dtype = autocast_dtype(device, config.precision)
    generator = torch.Generator().manual_seed(config.seed)
    history = TrainHistory(losses={n: [] for n in cohort.models})
    steps_per_epoch = math.ceil(len(data) / config.batch_size)
    cohort.train(True)
    started = time.perf_counter()
    with tqdm(total=steps_per_epoch * config.epochs, desc="train", unit="step", disable=not progress) as bar:
        for _ in range(config.epochs):
            for cpu_batch in _minibatches(data, config.batch_size, generator):
                batch = cpu_batch.to(device)
                with autocast_context(device, dtype):
                    per_model = cohort_step_losses(cohort, batch, config, history.steps)
                total = sum(per_model.values())
                # One device-to-host copy per step for the finiteness check and the history (not one
                # per model): on a GPU each copy is a synchronisation.
                stacked = torch.stack([v.detach().float() for v in per_model.values()])
                values = dict(zip(per_model, stacked.tolist(), strict=True))
                if not all(math.isfinite(v) for v in values.values()):
                    raise FloatingPointError(f"non-finite loss at step {history.steps}: {values}")
                optimizer.zero_grad(set_to_none=True)
                total.backward()
                optimizer.step()
                for name, value in values.items():
                    history.losses[name].append(value)
                history.steps += 1
                history.samples += len(batch)
                bar.update(1)
                bar.set_postfix(loss=f"{sum(values.values()):.4f}")
    history.seconds = time.perf_counter() - started
    cohort.train(False)
    return history


# --- evaluation -------------------------------------------------------------------------------------


@torch.no_grad()
def predict(model: nn.Module, data: Batch, device: torch.device, batch_size: int = 2048,
            precision: str = "auto") -> np.ndarray:
    """Click probabilities from the inference path (zero-loop for looped models)."""
    model.eval()
    dtype = autocast_dtype(device, precision)
    out = []
    for start in range(0, len(data), batch_size):
        with autocast_context(device, dtype):
            logits = model(data.slice(start, start + batch_size).to(device))
        out.append(torch.sigmoid(logits.float()).cpu().numpy())
    return np.concatenate(out) if out else np.zeros(0, np.float32)


def evaluate_model(model: nn.Module, data: Batch, device: torch.device, batch_size: int = 2048,
                   precision: str = "auto") -> tuple[dict[str, float], dict[str, list[float]]]:
    """Holdout metrics and the reliability curve of one model."""
    probs = predict(model, data, device, batch_size, precision)
    labels = data.label.numpy()
    p_click = data.p_click.numpy() if data.p_click is not None else None
    return evaluate_predictions(labels, probs, data.user.numpy(), p_click), reliability_curve(labels, probs)


@torch.no_grad()
def inference_ms(model: nn.Module, data: Batch, device: torch.device, candidates: int = 100,
                 reps: int = 5) -> float:
    """Median latency of one forward over `candidates` holdout rows batched together, in milliseconds
    (rows of many users: the row-batched path, not a student's candidate-parallel serving path, which
    benchmarks/bench_model_cost.py measures)."""
    batch = data.slice(0, candidates).to(device)
    model.eval()
    model(batch)  # warm-up: first call pays allocation
    times = []
    for _ in range(reps):
        if device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        model(batch)
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append((time.perf_counter() - t0) * 1000)
    return float(np.median(times))


# --- data windows -----------------------------------------------------------------------------------


def time_split(table: pa.Table, time_column: str, holdout_fraction: float) -> tuple[pa.Table, pa.Table]:
    """Train on the earlier rows, hold out the latest `holdout_fraction` by event time (no leakage)."""
    if not 0 < holdout_fraction < 1:
        raise ValueError(f"holdout fraction must be in (0, 1), got {holdout_fraction}")
    if table.num_rows < 2:
        raise ValueError(f"need at least 2 rows to split, got {table.num_rows}")
    ordered = table.sort_by([(time_column, "ascending")])
    cut = min(max(1, int(round(ordered.num_rows * (1 - holdout_fraction)))), ordered.num_rows - 1)
    return ordered.slice(0, cut), ordered.slice(cut)

