"""Online distillation + mutual learning: one optimizer step trains a teacher and N students together.

A *cohort* is a teacher, N LightSUAN students and optional baselines (trained alone, BCE only, in the
same pass so the comparison sees identical batches). The objective is in training.losses (docs/models.md).
Each continual-training cycle warm-starts every model by name from a saved version and makes one pass
over the new window; evaluation is progressive (on data after the window).

Choice is by validation, never by epoch count: the last ``val_fraction`` (by time) of the training part is
a validation slice, disjoint from the test holdout. Every model is evaluated on it before training and
every ``eval_every_steps``; each keeps its best checkpoint, stops after ``patience`` evaluations without
improvement, and gets a Platt calibration fitted on the same slice. "Best" is by per-request gAUC where
the slice's requests hold several candidates, else by AUC (``_Selector``).
"""

from __future__ import annotations

import contextlib
import copy
import ctypes
import dataclasses
import functools
import math
import random
import sys
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
from training.config import (
    AUTO_BATCH_SIZE,
    BASELINE_KINDS,
    CPU_BUDGET_ROWS,
    CPU_EPOCH_BUDGET_S,
    CPU_MS_PER_1K_ROWS,
    CPU_STUDENT,
    CUDA_TEACHER_GRADE,
    GRADES,
    STUDENT_SIZES,
    StudentConfig,
    TeacherConfig,
    config_for,
)
from training.distributed import Workers
from training.inputs import Batch, InputSchema, with_context_groups
from training.metrics import (
    MIN_MIXED_GROUPS,
    auc,
    ece,
    evaluate_predictions,
    gauc,
    logloss,
    mixed_groups,
    pcoc,
    reliability_curve,
)
from training.models.sequence import GroupLayout, SequenceModel
from training.optim import SplitOptimizer

TEACHER = "teacher"


@dataclass
class TrainConfig:
    """Everything that decides how a cohort is trained; recorded in every saved version."""

    # G0..G5, "auto" (chosen by the device: resolve_sizes), None: no teacher (students alone)
    teacher_grade: str | None = "auto"
    teacher: dict[str, Any] = field(default_factory=dict)  # overrides on top of the grade preset
    students: int = 2
    student_size: str = "auto"  # auto (by device) | small (the CPU shape) | full (StudentConfig defaults)
    student: dict[str, Any] = field(default_factory=dict)  # StudentConfig overrides on top of the size
    baselines: tuple[str, ...] = ()  # kinds trained alone in the same pass, e.g. ("lr", "din")
    baseline: dict[str, Any] = field(default_factory=dict)  # BaselineConfig overrides (all kinds)
    shared_embedding: bool = True  # teacher and students look up one table (the default)
    lambda_kd: float = 1.0
    lambda_ml: float = 1.0
    lambda_rev: float = 0.0
    temperature: float = 2.0
    # λ_kd grows linearly from 0 over this many steps: a fresh teacher is a poor target at first (on the
    # Taobao slice 0 left the distilled student 0.007 request gAUC under the student alone; 300 closed it)
    kd_rampup_steps: int = 300
    lr: float = 1e-3
    weight_decay: float = 0.0
    batch_size: int = 0  # 0: by device (AUTO_BATCH_SIZE: 1024 on CPU, 2048 on CUDA)
    epochs: int = 1
    seed: int = 0
    device: str = "auto"  # auto | cpu | cuda
    precision: str = "auto"  # auto (bf16 on CUDA, fp32 on CPU) | fp32 | bf16
    eval_batch_size: int = 2048
    val_fraction: float = 0.1  # latest share of the training part held out for model choice (0: none)
    eval_every_steps: int = 0  # validation period in steps; 0: four times per epoch (and at the end)
    patience: int = 3  # evaluations without a better validation score before a model stops; 0: never stops
    calibrate: bool = True  # fit Platt scaling per model on the validation slice
    min_id_count: int = 2  # user/item ids seen fewer times in the training window share the OOV row
    id_dropout: float = 0.05  # training only: a candidate's user/item id is replaced by OOV this often
    # CPU intra-op threads (0 = torch's default). On a shared, busy machine 1 thread is often much
    # faster: OpenMP workers spin-wait for cores that other processes hold.
    threads: int = 0

    def __post_init__(self) -> None:
        if self.students < 0 or self.epochs < 1 or self.batch_size < 0 or self.eval_batch_size < 1:
            raise ValueError(
                "need students >= 0, epochs >= 1, batch_size >= 0 (0: auto) and eval_batch_size >= 1")
        if self.teacher_grade not in (None, "auto", *GRADES):
            raise ValueError(f"unknown teacher grade {self.teacher_grade!r}; choose auto or {sorted(GRADES)}")
        if self.student_size not in STUDENT_SIZES:
            raise ValueError(f"student_size must be one of {STUDENT_SIZES}, got {self.student_size!r}")
        if self.temperature <= 0 or self.lr <= 0:
            raise ValueError("temperature and lr must be positive")
        if min(self.lambda_kd, self.lambda_ml, self.lambda_rev) < 0:
            raise ValueError("loss weights must be non-negative")
        unknown = set(self.baselines) - set(BASELINE_KINDS)
        if unknown:
            raise ValueError(f"unknown baselines {sorted(unknown)}; choose from {BASELINE_KINDS}")
        if self.threads < 0:
            raise ValueError("threads must be >= 0")
        if not 0 <= self.val_fraction < 0.5:
            raise ValueError(f"val_fraction must be in [0, 0.5), got {self.val_fraction}")
        if self.eval_every_steps < 0 or self.patience < 0 or self.min_id_count < 0:
            raise ValueError("eval_every_steps, patience and min_id_count must be >= 0")
        if not 0 <= self.id_dropout < 1:
            raise ValueError(f"id_dropout must be in [0, 1), got {self.id_dropout}")
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


@dataclass(frozen=True)
class SizeChoice:
    """What the ``auto`` sizes resolved to on a device, and why (recorded in the version and run report)."""

    device: str
    teacher_grade: str | None
    student_size: str
    batch_size: int
    epoch_estimate_s: float | None  # CPU: one epoch of CPU_BUDGET_ROWS rows, from the measured step table
    reason: str


def _cpu_epoch_s(grade: str | None, students: int) -> float:
    """Estimated seconds for one epoch of CPU_BUDGET_ROWS rows: teacher plus small students, measured."""
    per_1k = (CPU_MS_PER_1K_ROWS[grade] if grade else 0.0) + students * CPU_MS_PER_1K_ROWS["student_small"]
    return CPU_BUDGET_ROWS / 1000 * per_1k / 1000


def resolve_sizes(config: TrainConfig, device: torch.device | None = None) -> tuple[TrainConfig, SizeChoice]:
    """Replace every ``auto`` size by the device's choice; explicit values are kept as given.

    CUDA: teacher CUDA_TEACHER_GRADE, full-size students. CPU: small students and the largest teacher
    grade whose measured step time (CPU_MS_PER_1K_ROWS) keeps one epoch of CPU_BUDGET_ROWS rows with the
    configured students under CPU_EPOCH_BUDGET_S (G0 when none does; full-size students are not in the
    table and not counted). A table rather than a timing probe:
    the same machine always resolves to the same sizes, so a warm start finds the same model configs.
    """
    device = device or select_device(config.device)
    cuda = device.type == "cuda"
    batch = config.batch_size or AUTO_BATCH_SIZE["cuda" if cuda else "cpu"]
    student = config.student_size if config.student_size != "auto" else ("full" if cuda else "small")
    grade, estimate = config.teacher_grade, None
    why = [f"device {device.type}", f"batch {batch}" + (" (auto)" if not config.batch_size else ""),
           f"students {student}" + (" (auto)" if config.student_size == "auto" else "")]
    if grade == "auto" and cuda:
        grade = CUDA_TEACHER_GRADE
        why.append(f"teacher {grade} (auto: the CUDA grade)")
    elif grade == "auto":
        students = config.students if student == "small" else 0
        fitting = [g for g in CPU_MS_PER_1K_ROWS if g in GRADES
                   and _cpu_epoch_s(g, students) <= CPU_EPOCH_BUDGET_S]
        grade = fitting[-1] if fitting else next(iter(CPU_MS_PER_1K_ROWS))
        estimate = _cpu_epoch_s(grade, students)
        why.append(f"teacher {grade} (auto: the largest CPU grade whose measured step time keeps an epoch of "
                   f"{CPU_BUDGET_ROWS} rows with {students} small students under {CPU_EPOCH_BUDGET_S:.0f} s; "
                   f"estimate {estimate:.0f} s)" if fitting else
                   f"teacher {grade} (auto: no CPU grade fits {CPU_EPOCH_BUDGET_S:.0f} s per epoch of "
                   f"{CPU_BUDGET_ROWS} rows; the smallest, estimate {estimate:.0f} s)")
    else:
        why.append(f"teacher {grade or 'none'} (as given)")
    resolved = dataclasses.replace(config, teacher_grade=grade, student_size=student, batch_size=batch)
    return resolved, SizeChoice(device.type, grade, student, batch, estimate, "; ".join(why))


@contextlib.contextmanager
def freed_memory_kept(enabled: bool = True) -> Iterator[bool]:
    """While inside, freed blocks stay in this process's heap (glibc ``mallopt``), so CPU training stops
    faulting in fresh pages on every step.

    PyTorch's CPU tensors come from malloc, and glibc serves every block above its mmap threshold (a few
    MB, e.g. one [1024, 21, 96] activation) with a fresh ``mmap`` and unmaps it on free. Each step then
    faults in every page of every large activation again: on the 2-core reference machine that was 15-20%
    of a student step. Inside, mmap is off and the heap is never trimmed, so freed blocks are reused. On
    leaving, glibc's default limits are back (its self-adjusting mmap threshold stays off: any mallopt
    call turns it off) and the free heap goes back to the system (``malloc_trim``), so a
    long-lived process (a flow worker, ``ctrflow demo`` serving after training) does not keep training's
    peak. Re-entrant; yields False (and changes nothing) where glibc is not there or ``enabled`` is false.
    """
    global _HEAP_DEPTH
    libc = _glibc() if enabled else None
    if libc is None:
        yield False
        return
    if _HEAP_DEPTH == 0:
        libc.mallopt(_M_MMAP_MAX, 0)
        libc.mallopt(_M_TRIM_THRESHOLD, 2**31 - 1)
    _HEAP_DEPTH += 1
    try:
        yield True
    finally:
        _HEAP_DEPTH -= 1
        if _HEAP_DEPTH == 0:
            libc.mallopt(_M_MMAP_MAX, _DEFAULT_MMAP_MAX)
            libc.mallopt(_M_TRIM_THRESHOLD, _DEFAULT_TRIM_THRESHOLD)
            libc.malloc_trim(0)


@functools.cache
def _glibc() -> Any:
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL("libc.so.6")
        return libc if hasattr(libc, "mallopt") and hasattr(libc, "malloc_trim") else None
    except OSError:  # musl or another libc: leave the allocator alone
        return None


# glibc's mallopt parameters and their defaults (malloc.h)
_M_TRIM_THRESHOLD, _M_MMAP_MAX = -1, -4
_DEFAULT_TRIM_THRESHOLD, _DEFAULT_MMAP_MAX = 128 * 1024, 65536
_HEAP_DEPTH = 0


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

    def untie(self) -> None:
        """Give every model its own copy of any shared table (before loading different checkpoints)."""
        self.models = {name: copy.deepcopy(model) for name, model in self.models.items()}


def cohort_configs(config: TrainConfig) -> dict[str, tuple[str, dict[str, Any]]]:
    """name -> (family, model config dict) for every model the TrainConfig asks for."""
    config = resolve_sizes(config)[0]
    out: dict[str, tuple[str, dict[str, Any]]] = {}
    if config.teacher_grade is not None:
        out[TEACHER] = ("teacher", TeacherConfig.grade(config.teacher_grade, **config.teacher).to_dict())
    student_base = CPU_STUDENT if config.student_size == "small" else {}
    for j in range(config.students):
        out[f"student_{j}"] = ("student", StudentConfig.from_dict(student_base | config.student).to_dict())
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


@dataclass(frozen=True)
class WarmStart:
    """Which models a warm start loaded, and why each other one starts from a fresh init."""

    loaded: list[str]
    cold: dict[str, str]


def _config_change(old: dict[str, Any], new: dict[str, Any]) -> str:
    keys = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
    return ", ".join(f"{k}: {old.get(k)!r} -> {new.get(k)!r}" for k in keys)


def warm_start(cohort: Cohort, settings, version: str) -> WarmStart:
    """Load every model of the cohort that the version holds under the same name, family and config.

    A model missing from the version (a new baseline) or whose family/config changed (another grade)
    keeps its fresh init, with the reason in ``WarmStart.cold``. Models sharing one embedding table load
    it several times: the parent's served model loads last, so its table is the one kept.
    """
    parent = artifacts.read_config(settings, version)
    serve = parent.serve
    loaded, cold = [], {}
    for name in sorted(cohort.models, key=lambda n: n == serve):
        entry = parent.models.get(name)
        if entry is None:
            cold[name] = f"not in parent version {version}"
        elif entry.family != cohort.families[name]:
            cold[name] = f"family differs from parent {version}: {entry.family} -> {cohort.families[name]}"
        elif entry.config != cohort.configs[name]:
            cold[name] = f"config differs from parent {version}: " + _config_change(
                entry.config, cohort.configs[name])
        else:
            cohort.models[name].load_state_dict(artifacts.read_weights(settings, version, name))
            loaded.append(name)
    order = list(cohort.models)
    return WarmStart(sorted(loaded, key=order.index), cold)


# --- training ---------------------------------------------------------------------------------------


@dataclass
class TrainHistory:
    losses: dict[str, list[float]] = field(default_factory=dict)  # per model, one value per step
    bce: dict[str, list[float]] = field(default_factory=dict)  # per model, the label BCE alone, per step
    # per model, one {step, auc, logloss[, request_gauc]} per validation (step 0 = before training)
    val_curve: dict[str, list[dict[str, float]]] = field(default_factory=dict)
    best: dict[str, dict[str, float]] = field(default_factory=dict)  # per model: the kept point
    # The validation metric checkpoints and the served student are chosen by (see ``_Selector``).
    select_by: str = "auc"
    stopped: dict[str, int] = field(default_factory=dict)  # model -> step at which patience ran out
    steps: int = 0
    steps_per_epoch: int = 0  # of the window trained on (``epoch_of``)
    samples: int = 0  # rows of the global batches stepped on
    local_samples: int = 0  # of them, the rows this process stepped on (its share under torchrun)
    seconds: float = 0.0
    eta_s: float | None = None  # training time estimated after the first steps (all epochs, no early stop)

    @property
    def samples_per_s(self) -> float:
        return self.samples / self.seconds if self.seconds > 0 else float("nan")

    def epoch_of(self, step: float) -> float:
        """A step in epochs of the window trained on (0 = the start, before any step)."""
        return step / max(1, self.steps_per_epoch)


def _minibatches(batch: Batch, size: int, generator: torch.Generator) -> Iterator[Batch]:
    """Shuffled minibatches. Rows that share a user context (``batch.group``) stay together in chunks of
    at most one pass's candidates (``GroupLayout``), in a shuffled order of chunks, so the sequence
    models encode each context once per chunk. The cap keeps a context with many rows (a device id with
    hundreds of impressions in one hour of Avazu) from filling whole batches."""
    if batch.group is None:
        order = torch.randperm(len(batch), generator=generator)
    else:
        chunk = GroupLayout.of(batch.group).group
        rank = torch.randperm(int(chunk.max()) + 1, generator=generator)
        order = torch.argsort(rank[chunk], stable=True)
    for start in range(0, len(batch), size):
        yield batch.index(order[start : start + size])


def kd_weight(config: TrainConfig, step: int) -> float:
    if config.kd_rampup_steps <= 0:
        return config.lambda_kd
    return config.lambda_kd * min(1.0, (step + 1) / config.kd_rampup_steps)


def cohort_step_losses(
    cohort: Cohort, batch: Batch, config: TrainConfig, step: int,
    bce: dict[str, torch.Tensor] | None = None,
) -> dict[str, torch.Tensor]:
    """Every model's loss for one minibatch (forward in training mode, the joint objective).

    ``bce``, when given, receives each model's detached BCE term (over its supervised depths).
    """
    outputs = {name: model.forward_train(batch) for name, model in cohort.models.items()}
    y = batch.label
    if bce is not None:
        with torch.no_grad():
            bce.update({name: losses.loop_bce(out.logits, y) for name, out in outputs.items()})
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


class CohortStep(nn.Module):
    """One training step's forward as one module (what DistributedDataParallel wraps): the summed loss
    of the models still training, and every model's detached loss and BCE.

    Only the models still training are registered: a model stopped by early stopping is frozen at its
    best, and its parameters (no longer reached by any gradient: every distillation target is detached)
    are not the wrapper's to synchronise. A new one is built whenever a model stops.
    """

    def __init__(self, cohort: Cohort, config: TrainConfig, training: list[str]) -> None:
        super().__init__()
        self.cohort, self.config, self.training = cohort, config, training
        self.models = nn.ModuleDict({n: cohort.models[n] for n in training})  # a shared table once

    def forward(self, batch: Batch, step: int) -> tuple[
            torch.Tensor, dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        bce: dict[str, torch.Tensor] = {}
        per_model = cohort_step_losses(self.cohort, batch, self.config, step, bce)
        total = sum(per_model[n] for n in self.training)
        return total, {n: v.detach() for n, v in per_model.items()}, bce


def drop_ids(batch: Batch, schema: InputSchema, rate: float, generator: torch.Generator) -> Batch:
    """Id-embedding dropout: each row's user and item id becomes the OOV bucket 0 with prob. ``rate``,
    so the models learn to score an unknown id from its side features (category, statistics). The user
    id is dropped per user context (``batch.group``), so rows that share a context still do."""
    if rate <= 0:
        return batch
    categorical, cand_item = batch.categorical.clone(), batch.cand_item.clone()
    for name in (schema.user, schema.item):
        if name == schema.user and batch.group is not None:
            _, group = torch.unique(batch.group, return_inverse=True)
            drop = (torch.rand(int(group.max()) + 1, generator=generator) < rate)[group]
        else:
            drop = torch.rand(len(batch), generator=generator) < rate
        categorical[drop, schema.slot(name)] = 0
        if name == schema.item:
            cand_item[drop] = 0
    return dataclasses.replace(batch, categorical=categorical, cand_item=cand_item)


def _eval_period(config: TrainConfig, steps_per_epoch: int) -> int:
    return config.eval_every_steps or max(1, math.ceil(steps_per_epoch / 4))


class _Selector:
    """Validation bookkeeping of one cohort: curves, each model's best checkpoint, patience.

    Models are chosen by the metric the holdout is judged by: per-request gAUC where the validation
    slice's requests hold several candidates (enough of them with both a click and a non-click), else
    AUC. Ranking the candidates of one request is what serving does, and AUC also rewards what is constant
    within a request (user, hour), so the two can pick different checkpoints.
    """

    def __init__(self, cohort: Cohort, validation: Batch, config: TrainConfig, device: torch.device,
                 history: TrainHistory) -> None:
        self.cohort, self.validation, self.config, self.device = cohort, validation, config, device
        self.history = history
        self.labels = validation.label.numpy()
        self.requests = validation.request.numpy() if validation.request is not None else None
        if self.requests is not None and mixed_groups(self.labels, self.requests) >= MIN_MIXED_GROUPS:
            history.select_by = "request_gauc"
        self.states: dict[str, dict[str, torch.Tensor]] = {}
        self.waited = {name: 0 for name in cohort.models}
        self.last_step = -1

    @property
    def active(self) -> list[str]:
        return [n for n in self.cohort.models if n not in self.history.stopped]

    def evaluate(self) -> None:
        step = self.last_step = self.history.steps
        key = self.history.select_by
        for name in self.active:
            model = self.cohort.models[name]
            probs = predict(model, self.validation, self.device, self.config.eval_batch_size,
                            self.config.precision, calibrated=False)
            point = {"step": step, "auc": auc(self.labels, probs), "logloss": logloss(self.labels, probs)}
            if key == "request_gauc":
                point["request_gauc"] = gauc(self.labels, probs, self.requests)
            self.history.val_curve[name].append(point)
            best = self.history.best.get(name)
            if math.isfinite(point[key]) and (best is None or point[key] > best[key]):
                self.history.best[name] = point
                self.states[name] = {k: v.detach().clone() for k, v in model.state_dict().items()}
                self.waited[name] = 0
            elif best is not None:  # (a slice with one class has no AUC: nothing to stop on)
                self.waited[name] += 1
                if self.config.patience and self.waited[name] >= self.config.patience:
                    self.history.stopped[name] = step
        self.cohort.train(True)

    def restore(self) -> None:
        """Every model back to its best checkpoint."""
        steps = {n: self.history.best[n]["step"] for n in self.states}
        moved = {n for n, s in steps.items() if s != self.history.steps}
        if not moved:
            return
        # Models sharing a table may have their best at different steps: each keeps its own copy.
        self.cohort.untie()
        for name in moved:
            self.cohort.models[name].load_state_dict(self.states[name])


ETA_AFTER_STEPS = 5  # steps timed for the ETA (fewer in a shorter run)
ETA_WARN_S = 30 * 60
LOG_EVERY = 32  # steps between copies of the losses to the host (each copy is a device sync)


def _report_eta(history: TrainHistory, total_steps: int, per_step_s: float, progress: bool) -> None:
    history.eta_s = per_step_s * total_steps
    if not progress:
        return
    message = (f"ETA: {history.eta_s / 60:.1f} min for {total_steps} steps "
               f"({per_step_s * 1000:.0f} ms per step; early stopping may end sooner)")
    if history.eta_s > ETA_WARN_S:
        message += (f"\nwarning: training is estimated to take over {ETA_WARN_S // 60} min; a smaller "
                    "--teacher-grade, fewer --students or a larger --batch-size shortens it")
    tqdm.write(message, file=sys.stderr)


class _LossLog:
    """Per-step losses kept on the device and copied to the host every LOG_EVERY steps (and before any
    evaluation and at the end), so the step loop never waits for the device."""

    def __init__(self, history: TrainHistory, names: list[str], workers: Workers | None = None) -> None:
        self.history, self.names, self.workers = history, names, workers
        self.pending: list[torch.Tensor] = []
        self.bce_names: list[str] = []

    def add(self, per_model: dict[str, torch.Tensor], bce: dict[str, torch.Tensor]) -> None:
        self.bce_names = list(bce)
        values = [v.detach().float() for v in per_model.values()]
        self.pending.append(torch.stack(values + list(bce.values())))

    def flush(self, bar: tqdm) -> None:
        if not self.pending:
            return
        stacked = torch.stack(self.pending)
        # Each worker saw its share of the batch: the logged loss is the mean over workers (the global
        # batch's loss with equal shares), identical on every worker, so a non-finite one stops them all.
        rows = (self.workers.mean(stacked) if self.workers else stacked).tolist()
        first = self.history.steps - len(rows)
        self.pending = []
        n = len(self.names)
        for i, row in enumerate(rows):
            if not all(math.isfinite(v) for v in row[:n]):
                values = dict(zip(self.names, row[:n], strict=True))
                raise FloatingPointError(f"non-finite loss at step {first + i}: {values}")
            for name, value in zip(self.names, row[:n], strict=True):
                self.history.losses[name].append(value)
            for name, value in zip(self.bce_names, row[n:], strict=True):
                self.history.bce[name].append(value)
        bar.set_postfix(loss=f"{sum(rows[-1][:n]):.4f}")


def train_window(
    cohort: Cohort, data: Batch, config: TrainConfig, device: torch.device, progress: bool = True,
    validation: Batch | None = None, workers: Workers | None = None,
) -> TrainHistory:
    """Up to `config.epochs` passes over one data window; all models step together on the same batches.

    With a ``validation`` slice every model is evaluated on it before training, every
    `eval_every_steps` and at the end; each ends at its best checkpoint (``history.best``) and stops
    updating after `patience` evaluations without improvement (the others go on; training ends when
    every model has stopped). Without one, the last step is kept. After the first steps the ETA is
    recorded (``history.eta_s``) and, with ``progress``, printed to stderr with the progress bar.

    With ``workers`` (a torchrun launch, training.distributed) each process steps on its share of every
    global batch of ``config.batch_size`` rows under DistributedDataParallel; only the main worker shows
    progress. A last batch with fewer rows than workers is skipped (every worker needs a row).

    On CPU the whole window trains inside ``freed_memory_kept``.
    """
    with freed_memory_kept(device.type == "cpu"):
        return _train_window(cohort, data, config, device, progress, validation, workers)


def _train_window(
    cohort: Cohort, data: Batch, config: TrainConfig, device: torch.device, progress: bool,
    validation: Batch | None, workers: Workers | None,
) -> TrainHistory:
    config = resolve_sizes(config, device)[0]
    if config.threads:
        torch.set_num_threads(config.threads)
    progress = progress and (workers is None or workers.main)
    dtype = autocast_dtype(device, config.precision)
    generator = torch.Generator().manual_seed(config.seed)
    id_generator = torch.Generator().manual_seed(config.seed + 1)
    names = list(cohort.models)
    history = TrainHistory(losses={n: [] for n in names}, bce={n: [] for n in names},
                           val_curve={n: [] for n in names})
    log = _LossLog(history, names, workers)
    schema = next(iter(cohort.models.values())).schema
    steps_per_epoch = history.steps_per_epoch = math.ceil(len(data) / config.batch_size)
    total_steps = steps_per_epoch * config.epochs
    period = _eval_period(config, steps_per_epoch)
    for model in cohort.models.values():
        model.prepare(data)
    data = with_context_groups(data, schema)
    if validation is not None:
        validation = with_context_groups(validation, schema)

    def step_for(training: list[str]) -> nn.Module:
        module = CohortStep(cohort, config, training)
        return workers.wrap(module, device) if workers else module

    # Wrapped after `prepare` (every worker prepares on all rows alike); the optimizer after the wrap,
    # which may switch the id tables to dense gradients (NCCL).
    training = names
    step_module = step_for(training)
    optimizer = SplitOptimizer(cohort.models.values(), lr=config.lr, weight_decay=config.weight_decay)
    selector = _Selector(cohort, validation, config, device, history) if validation is not None else None
    started = time.perf_counter()
    if selector:
        selector.evaluate()
    cohort.train(True)
    # The ETA times the steps after the first (which pays allocations): up to ETA_AFTER_STEPS of them.
    eta_from, eta_at = None, 1 + min(ETA_AFTER_STEPS, total_steps - 1)
    with tqdm(total=total_steps, desc="train", unit="step", disable=not progress) as bar:
        for _ in range(config.epochs):
            for cpu_batch in _minibatches(data, config.batch_size, generator):
                # Dropout draws over the global batch, so every worker draws what one process would.
                cpu_batch = drop_ids(cpu_batch, schema, config.id_dropout, id_generator)
                rows = len(cpu_batch)
                if workers:
                    if rows < workers.world_size:
                        continue
                    share = workers.shard(rows)
                    cpu_batch = cpu_batch.slice(share.start, share.stop)
                batch = cpu_batch.to(device)
                with autocast_context(device, dtype):
                    total, per_model, bce = step_module(batch, history.steps)
                optimizer.zero_grad()
                total.backward()
                optimizer.step()
                log.add(per_model, bce)
                history.steps += 1
                history.samples += rows
                history.local_samples += len(batch)
                bar.update(1)
                if history.steps in (1, eta_at):
                    log.flush(bar)  # the first losses are checked at once
                    if device.type == "cuda":
                        torch.cuda.synchronize()
                    if eta_from is not None:
                        _report_eta(history, total_steps, (time.perf_counter() - eta_from) / (eta_at - 1),
                                    progress)
                    else:
                        eta_from = time.perf_counter()
                elif history.steps % LOG_EVERY == 0:
                    log.flush(bar)
                if selector and history.steps % period == 0:
                    log.flush(bar)
                    selector.evaluate()
                    if not selector.active:
                        break
                    if selector.active != training:
                        training = selector.active
                        del step_module  # its hooks go with it, before the new wrapper adds its own
                        step_module = step_for(training)
            if selector and not selector.active:
                break
    log.flush(bar)
    if selector:
        if selector.last_step != history.steps:
            selector.evaluate()
        selector.restore()
    history.seconds = time.perf_counter() - started
    cohort.train(False)
    return history


def fit_calibration(cohort: Cohort, validation: Batch, config: TrainConfig, device: torch.device) -> None:
    """Platt scaling per model on the validation slice's uncalibrated logits (stored in the model)."""
    labels = validation.label
    validation = with_context_groups(validation, next(iter(cohort.models.values())).schema)
    for model in cohort.models.values():
        model.calibration.reset()
        logits = predict_logits(model, validation, device, config.eval_batch_size, config.precision,
                                calibrated=False)
        model.calibration.fit(torch.from_numpy(logits), labels)


# --- evaluation -------------------------------------------------------------------------------------


@torch.no_grad()
def predict_logits(model: nn.Module, data: Batch, device: torch.device, batch_size: int = 2048,
                   precision: str = "auto", calibrated: bool = True) -> np.ndarray:
    """Logits of the inference path (zero-loop for looped models), calibrated unless asked otherwise.

    A sequence model encodes each user context once per chunk (``context_groups``): the same scores as
    one encoding per row, for a fraction of the work where requests hold several candidates."""
    model.eval()
    dtype = autocast_dtype(device, precision)
    if isinstance(model, SequenceModel):
        data = with_context_groups(data, model.schema)
    out = []
    for start in range(0, len(data), batch_size):
        chunk = data.slice(start, start + batch_size).to(device)
        with autocast_context(device, dtype):
            logits = model(chunk) if calibrated else model.logits(chunk)
        out.append(logits.float().cpu().numpy())
    return np.concatenate(out) if out else np.zeros(0, np.float32)


def predict(model: nn.Module, data: Batch, device: torch.device, batch_size: int = 2048,
            precision: str = "auto", calibrated: bool = True) -> np.ndarray:
    """Click probabilities from the inference path."""
    logits = predict_logits(model, data, device, batch_size, precision, calibrated)
    return torch.sigmoid(torch.from_numpy(logits)).numpy()


def evaluate_model(model: nn.Module, data: Batch, device: torch.device, batch_size: int = 2048,
                   precision: str = "auto") -> tuple[dict[str, float], dict[str, list[float]]]:
    """Holdout metrics and the reliability curve of one model (calibrated, as served), plus the
    calibration of its uncalibrated output (``pcoc_raw``, ``ece_raw``)."""
    probs = predict(model, data, device, batch_size, precision)
    labels = data.label.numpy()
    p_click = data.p_click.numpy() if data.p_click is not None else None
    requests = data.request.numpy() if data.request is not None else None
    metrics = evaluate_predictions(labels, probs, data.user.numpy(), p_click, requests)
    raw = predict(model, data, device, batch_size, precision, calibrated=False)
    metrics["pcoc_raw"], metrics["ece_raw"] = pcoc(labels, raw), ece(labels, raw)
    return metrics, reliability_curve(labels, probs)


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

