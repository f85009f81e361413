"""Model configurations: plain dataclasses that round-trip through JSON (stored next to the weights)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields, replace
from typing import Any, Literal

Connector = Literal["deres", "deres_softmax", "residual"]
CONNECTORS: tuple[str, ...] = ("deres", "deres_softmax", "residual")
BASELINE_KINDS: tuple[str, ...] = ("lr", "dnn", "deepfm", "dcnv2", "din")


class _JsonConfig:
    def to_dict(self) -> dict[str, Any]:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}

    @classmethod
    def from_dict(cls, data: dict[str, Any]):
        known = {f.name: f for f in fields(cls)}
        unknown = set(data) - set(known)
        if unknown:
            raise ValueError(f"unknown {cls.__name__} fields: {sorted(unknown)}")
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in data.items()})


def _check_heads(d_model: int, n_heads: int) -> None:
    if d_model < 4 or n_heads < 1 or d_model % n_heads:
        raise ValueError(f"d_model={d_model} must be >= 4 and divisible by n_heads={n_heads}")


# The grade ladder (docs/models.md, "Grades"): UAB layers, width, heads, sequence length; ~4x FLOPs per
# grade. G0 is the CPU rung below it (what two CPU cores train in minutes).
GRADES: dict[str, tuple[int, int, int, int]] = {
    "G0": (2, 32, 2, 20),
    "G1": (2, 40, 2, 50),
    "G2": (4, 64, 4, 100),
    "G3": (4, 128, 4, 200),
    "G4": (8, 128, 8, 500),
    "G5": (8, 256, 8, 1000),
}


@dataclass(frozen=True)
class TeacherConfig(_JsonConfig):
    """SUAN-style UAB stack as a LoopCTR sandwich: entry UABs -> shared UABs (looped) -> exit UABs."""

    d_model: int = 64
    n_heads: int = 4
    seq_len: int = 100
    n_entry: int = 1
    n_shared: int = 2
    n_exit: int = 1
    loops: int = 2  # extra passes of the shared UABs in training; inference runs the zero-loop path
    connector: Connector = "deres"
    deres_block: int = 2  # UABs summed into one DeRes source
    moe: bool = False  # mixture-of-experts SwiGLU in the shared UABs
    n_experts: int = 4
    top_k: int = 2
    faithful: bool = False  # released SUAN norm placement instead of clean pre-norm
    ffn_mult: int = 3
    d_embed: int = 16
    time_buckets: int = 128
    head_hidden: tuple[int, ...] = (128, 64)
    dropout: float = 0.0
    target_match: bool = True  # head reads how many behaviours share the candidate's item / category
    grade_name: str = ""  # the preset this config came from, if any

    def __post_init__(self) -> None:
        _check_heads(self.d_model, self.n_heads)
        if self.connector not in CONNECTORS:
            raise ValueError(f"connector must be one of {CONNECTORS}, got {self.connector!r}")
        if self.n_shared < 1 or self.n_entry < 0 or self.n_exit < 0 or self.loops < 0:
            raise ValueError("need n_shared >= 1 and non-negative n_entry, n_exit, loops")
        if self.moe and not 1 <= self.top_k <= self.n_experts:
            raise ValueError("MoE needs 1 <= top_k <= n_experts")
        if self.seq_len < 1 or self.deres_block < 1:
            raise ValueError("seq_len and deres_block must be >= 1")

    @staticmethod
    def grade(grade: str, **overrides: Any) -> TeacherConfig:
        """A preset from the grade ladder; the layers split into entry / shared (looped) / exit UABs."""
        if grade not in GRADES:
            raise ValueError(f"unknown teacher grade {grade!r}; choose from {sorted(GRADES)}")
        layers, width, heads, seq_len = GRADES[grade]
        shared = layers // 2
        entry = (layers - shared) // 2
        base = TeacherConfig(
            d_model=width, n_heads=heads, seq_len=seq_len, n_entry=entry, n_shared=shared,
            n_exit=layers - shared - entry, head_hidden=(4 * width, 2 * width), grade_name=grade,
        )
        return replace(base, **overrides)

    @property
    def depth(self) -> int:
        """UABs on the deepest training path."""
        return self.n_entry + self.n_shared * (self.loops + 1) + self.n_exit


@dataclass(frozen=True)
class StudentConfig(_JsonConfig):
    """LightSUAN: local + dilated sparse self-attention, candidate-parallel scoring."""

    d_model: int = 64
    n_heads: int = 2
    n_layers: int = 2
    seq_len: int = 100
    local_window: int = 16  # k: attend to the k most recent behaviours (self included)
    dilation: int = 8  # r: and to every r-th behaviour further back
    loops: int = 0  # >0: the last UAB is looped in training, zero-loop at serving
    ffn_mult: int = 3
    d_embed: int = 16
    time_buckets: int = 128
    head_hidden: tuple[int, ...] = (128, 64)
    dropout: float = 0.0
    wide_ids: bool = False  # a linear term over every hashed id (wide & deep)
    target_match: bool = True  # head reads how many behaviours share the candidate's item / category

    def __post_init__(self) -> None:
        _check_heads(self.d_model, self.n_heads)
        if self.n_layers < 1 or self.loops < 0 or self.seq_len < 1:
            raise ValueError("need n_layers >= 1, seq_len >= 1 and loops >= 0")
        if self.local_window < 1 or self.dilation < 1:
            raise ValueError("local_window and dilation must be >= 1")


@dataclass(frozen=True)
class BaselineConfig(_JsonConfig):
    """Classic CTR baselines on the same input layer."""

    kind: str = "dnn"
    d_embed: int = 16
    hidden: tuple[int, ...] = (128, 64)
    seq_len: int = 50
    cross_layers: int = 3  # DCNv2
    attention_hidden: int = 36  # DIN activation unit
    dropout: float = 0.0

    def __post_init__(self) -> None:
        if self.kind not in BASELINE_KINDS:
            raise ValueError(f"baseline kind must be one of {BASELINE_KINDS}, got {self.kind!r}")
        if self.seq_len < 1 or self.d_embed < 1:
            raise ValueError("seq_len and d_embed must be >= 1")


FAMILIES: tuple[str, ...] = ("teacher", "student", *BASELINE_KINDS)


ModelConfig = TeacherConfig | StudentConfig | BaselineConfig


def config_for(family: str, config: dict[str, Any] | None = None) -> ModelConfig:
    """The typed config of a model family from its JSON dict (missing keys take defaults)."""
    config = dict(config or {})
    if family == "teacher":
        return TeacherConfig.from_dict(config)
    if family == "student":
        return StudentConfig.from_dict(config)
    if family in BASELINE_KINDS:
        if config.setdefault("kind", family) != family:
            raise ValueError(f"baseline config kind {config['kind']!r} does not match family {family!r}")
        return BaselineConfig.from_dict(config)
    raise ValueError(f"unknown model family {family!r}; choose from {FAMILIES}")


# The CPU-sized cohort (the demo, the quality and continual benchmarks): the G1 rung shrunk so two CPU
# cores train ~40k rows in a couple of minutes. Overrides on top of the family defaults.
CPU_TEACHER: dict[str, Any] = {"d_model": 32, "n_heads": 2, "seq_len": 20, "n_entry": 1, "n_shared": 1,
                               "n_exit": 1, "loops": 2, "d_embed": 16, "head_hidden": [64, 32]}
CPU_STUDENT: dict[str, Any] = {"d_model": 32, "n_heads": 2, "seq_len": 20, "local_window": 4, "dilation": 4,
                               "d_embed": 16, "head_hidden": [64, 32]}
CPU_BASELINE: dict[str, Any] = {"d_embed": 16, "hidden": [64, 32], "seq_len": 20}


# --- sizes chosen by the device (`auto`) --------------------------------------------------------------

# Measured training step time (forward + backward + optimiser) per 1,000 rows, one thread, on the 2-core
# reference machine while other jobs shared it (load ~5), from benchmarks/bench_train_throughput.py
# (2026-12-02; 1024-row steps, G2 on 128 rows), scaled by the speed-up the same benchmark measured on
# 2026-12-03 after the block, attention, norm and allocator changes (G0 0.47x, G1 0.48x, G2 0.60x, the
# student 0.73x of the time). Grades not listed are never chosen on CPU (each rung costs ~4x the one
# below). With 2 small students: G0 ~150 s per 100k rows, G1 ~485 s.
CPU_MS_PER_1K_ROWS: dict[str, float] = {
    "G0": 823.0,
    "G1": 4174.0,
    "G2": 30711.0,
    "student_small": 337.0,
}
CPU_EPOCH_BUDGET_S = 300.0  # one epoch of CPU_BUDGET_ROWS rows should take at most this on CPU
CPU_BUDGET_ROWS = 100_000
CUDA_TEACHER_GRADE = "G2"
AUTO_BATCH_SIZE: dict[str, int] = {"cpu": 1024, "cuda": 2048}
STUDENT_SIZES: tuple[str, ...] = ("auto", "small", "full")  # small: CPU_STUDENT; full: the defaults
