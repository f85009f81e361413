"""Great Expectations gates for raw events and training sets.

Suites live as JSON in ``features/expectations/`` (``events.json``, ``dataset.json``); values that depend
on the run (now, freshness, row and label-rate bounds, sequence length) are GX suite parameters filled by
``ValidationBounds``. Each validation runs in a GX file context under
``settings.runs_dir/<run>/validation/`` that keeps the results and the Data Docs site, and returns a
``ValidationReport``; ``require_valid`` turns a failed one into ``ValidationFailed`` so a flow stops
before training.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from fnmatch import fnmatchcase
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from pipelines import events as event_contract
from pipelines import logfile
from pipelines.settings import Settings

# GX would otherwise phone home; ctrflow keeps everything on this machine.
os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")

SUITES_DIR = Path(__file__).resolve().parent / "expectations"
SUITES = ("events", "dataset")
MAX_FAILED_EXAMPLES = 5


class ValidationInputError(ValueError):
    """The data to validate cannot be read (missing file, unknown format, unreadable Parquet columns)."""


def _setting(name: str) -> Any:
    return Settings.model_fields[name].default


# The events suite bounds clicks / impressions through the mean of this derived column (1 per click, 0 per
# impression, null otherwise): a mean m is the rate m / (1 - m), so a rate bound r is the mean r / (1 + r).
CLICK_COLUMN = "is_click"


@dataclass(frozen=True)
class ValidationBounds:
    """Run-time values of the suites' parameters (``for_settings``: the configured gates)."""

    max_clock_skew_s: int = 300
    max_age_s: int | None = None  # freshness; None = no freshness check (replayed history is old)
    min_rows: int = 1
    max_rows: int = 1_000_000_000
    min_label_rate: float = 0.001
    max_label_rate: float = 0.6
    max_sequence_length: int = 50
    min_click_rate: float = _setting("min_click_rate")
    max_click_rate: float = _setting("max_click_rate")
    min_distinct_users: int = _setting("min_distinct_users")

    @classmethod
    def for_settings(cls, settings: Settings, **overrides: Any) -> ValidationBounds:
        """The bounds the settings configure, with explicit overrides (CLI flags) on top."""
        return cls(**{
            "max_sequence_length": settings.sequence_length,
            "min_click_rate": settings.min_click_rate,
            "max_click_rate": settings.max_click_rate,
            "min_distinct_users": settings.min_distinct_users,
            **overrides,
        })

    def parameters(self, now: datetime) -> dict[str, Any]:
        now_ms = int(now.timestamp() * 1000)
        freshest = event_contract.MIN_EVENT_TIME_MS
        if self.max_age_s is not None:
            freshest = now_ms - self.max_age_s * 1000
        return {
            "min_event_time_ms": event_contract.MIN_EVENT_TIME_MS,
            "max_event_time_ms": now_ms + self.max_clock_skew_s * 1000,
            "min_latest_event_time_ms": freshest,
            "min_rows": self.min_rows,
            "max_rows": self.max_rows,
            "min_label_rate": self.min_label_rate,
            "max_label_rate": self.max_label_rate,
            "max_sequence_length": self.max_sequence_length,
            "min_click_share": self.min_click_rate / (1 + self.min_click_rate),
            "max_click_share": self.max_click_rate / (1 + self.max_click_rate),
            "min_distinct_users": self.min_distinct_users,
        }


@dataclass(frozen=True)
class FailedExpectation:
    expectation: str
    column: str | None
    message: str


@dataclass
class ValidationReport:
    suite: str
    run: str
    success: bool
    evaluated: int
    failed: list[FailedExpectation] = field(default_factory=list)
    rows: int = 0
    blank_lines: int = 0
    results_path: Path | None = None
    docs_path: Path | None = None

    def summary(self) -> str:
        head = f"{self.suite}: {'PASSED' if self.success else 'FAILED'} " \
               f"({self.evaluated - len(self.failed)}/{self.evaluated} expectations, {self.rows} rows" \
               + (f", {self.blank_lines} blank lines skipped)" if self.blank_lines else ")")
        return "\n".join([head, *(f"  - {f.message}" for f in self.failed)])


class ValidationFailed(RuntimeError):
    """A suite failed; ``report`` says which expectations and why."""

    def __init__(self, report: ValidationReport) -> None:
        super().__init__(report.summary())
        self.report = report


def require_valid(report: ValidationReport) -> ValidationReport:
    """Return the report if it passed, else raise ValidationFailed (flows call this before training)."""
    if not report.success:
        raise ValidationFailed(report)
    return report


def load_suite_spec(suite: str) -> dict[str, Any]:
    if suite not in SUITES:
        raise ValueError(f"unknown suite {suite!r}; expected one of {list(SUITES)}")
    return json.loads((SUITES_DIR / f"{suite}.json").read_text())


def applicable_expectations(spec: dict[str, Any], columns: list[str]) -> list[dict[str, Any]]:
    """Suite expectations minus the optional ones whose column the data does not have; one whose meta
    names ``each_column_matching`` (a glob) is repeated for every column it matches (the statistics
    columns follow the home's horizons, so a suite cannot list them)."""
    out = []
    for e in spec["expectations"]:
        pattern = e.get("meta", {}).get("each_column_matching")
        if pattern is not None:
            out += [{**e, "kwargs": {**e["kwargs"], "column": c}} for c in columns if fnmatchcase(c, pattern)]
        elif not (e.get("meta", {}).get("optional") and e["kwargs"].get("column") not in columns):
            out.append(e)
    return out


def _describe(expectation: str, column: str | None, result: dict[str, Any], error: str | None) -> str:
    where = f"{column}: " if column else ""
    if error:
        return f"{where}{expectation} could not run: {error}"
    bits = []
    if "unexpected_count" in result:
        bits.append(f"{result['unexpected_count']} of {result.get('element_count', '?')} rows unexpected")
        examples = result.get("partial_unexpected_list") or []
        if examples:
            bits.append(f"e.g. {examples[:MAX_FAILED_EXAMPLES]!r:.160}")
    if "observed_value" in result:
        observed = result["observed_value"]
        # numpy scalars print as np.float64(...); users want the number.
        observed = observed.item() if hasattr(observed, "item") else observed
        bits.append(f"observed {observed!r:.80}")
    return f"{where}{expectation}" + (f" ({'; '.join(bits)})" if bits else "")


def _for_gx(frame: pa.Table) -> pd.DataFrame:
    # Timestamps become integer ms so bounds are plain numbers; lists stay out of GX (no expectation on them).
    columns = {}
    for f in frame.schema:
        col = frame.column(f.name)
        if pa.types.is_timestamp(f.type):
            col = col.cast(pa.timestamp("ms", tz="UTC")).cast(pa.int64())
        elif pa.types.is_list(f.type) or pa.types.is_large_list(f.type):
            continue
        columns[f.name] = col
    return pa.table(columns).to_pandas()


def new_run_name(prefix: str = "validate") -> str:
    return f"{prefix}-{datetime.now(UTC):%Y%m%dT%H%M%S}-{time.monotonic_ns() % 10**6:06d}"


def validate_table(settings: Settings, suite: str, frame: pa.Table, run: str | None = None,
                   bounds: ValidationBounds | None = None, now: datetime | None = None,
                   read_checks: ReadChecks | None = None) -> ValidationReport:
    """Run a suite on an Arrow table; results and Data Docs go to ``runs_dir/<run>/validation/``.
    ``read_checks`` (checks done while reading the data) count and fail like the suite's expectations."""
    import great_expectations as gx
    from great_expectations.checkpoint import UpdateDataDocsAction
    from great_expectations.data_context.types.base import ProgressBarsConfig

    run = run or new_run_name()
    bounds = bounds or ValidationBounds.for_settings(settings)
    spec = load_suite_spec(suite)
    out_dir = settings.runs_dir / run / "validation"
    out_dir.mkdir(parents=True, exist_ok=True)

    context = gx.get_context(mode="file", project_root_dir=str(out_dir))
    context.variables.progress_bars = ProgressBarsConfig(globally=False)
    expectations = applicable_expectations(spec, frame.column_names)
    gx_suite = context.suites.add_or_update(
        gx.ExpectationSuite(name=suite, expectations=expectations, meta=spec.get("meta", {}))
    )
    source = context.data_sources.add_or_update_pandas("ctrflow")
    asset = source.add_dataframe_asset(name=f"{suite}-{len(source.assets)}")
    batch_definition = asset.add_batch_definition_whole_dataframe("whole")
    definition = context.validation_definitions.add_or_update(
        gx.ValidationDefinition(name=suite, data=batch_definition, suite=gx_suite)
    )
    checkpoint = context.checkpoints.add_or_update(
        gx.Checkpoint(name=suite, validation_definitions=[definition],
                      actions=[UpdateDataDocsAction(name="data_docs")], result_format="SUMMARY")
    )
    result = checkpoint.run(batch_parameters={"dataframe": _for_gx(frame)},
                            expectation_parameters=bounds.parameters(now or datetime.now(UTC)))

    read_checks = read_checks or ReadChecks()
    failed, evaluated = list(read_checks.failed), read_checks.evaluated
    for suite_result in result.run_results.values():
        for r in suite_result.results:
            evaluated += 1
            if r.success:
                continue
            config = r.expectation_config
            column = config.kwargs.get("column") or ",".join(config.kwargs.get("column_list") or []) or None
            error = (r.exception_info or {}).get("exception_message") if r.exception_info else None
            message = _describe(config.type, column, r.result, error)
            failed.append(FailedExpectation(config.type, column, message))
    docs = out_dir / "gx" / "uncommitted" / "data_docs" / "local_site" / "index.html"
    report = ValidationReport(suite=suite, run=run, success=bool(result.success) and not read_checks.failed,
                              evaluated=evaluated, failed=failed, rows=frame.num_rows,
                              blank_lines=read_checks.blank_lines,
                              docs_path=docs if docs.exists() else None)
    report.results_path = out_dir / f"{suite}-results.json"
    report.results_path.write_text(json.dumps(
        {**asdict(report), "results_path": str(report.results_path), "docs_path": str(report.docs_path),
         "gx_result": result.describe_dict()}, indent=2, default=str) + "\n")
    return report


# The JSON type of each event column: the contract's per-field types ("type" is the event kind).
_JSON_TYPES: dict[str, type] = {"type": str, **event_contract.IMPRESSION_REQUIRED,
                                 **event_contract.CLICK_REQUIRED, **event_contract.OPTIONAL_FIELDS}
# Bad records are what the suite judges, so the table must be able to hold nulls in every column.
_READ_SCHEMA = pa.schema([f.with_nullable(True) for f in event_contract.EVENT_SCHEMA])
SCHEMA_CHECK = "column_values_match_event_schema"
DECODE_CHECK = "lines_are_json_objects"


@dataclass(frozen=True)
class ReadChecks:
    """Checks done while reading, outside GX (one per column), reported with the suite's expectations."""

    evaluated: int = 0
    failed: tuple[FailedExpectation, ...] = ()
    blank_lines: int = 0  # skipped, not records (as most JSON Lines readers do)


def _conforms(value: Any, expected: type, arrow_type: pa.DataType) -> bool:
    # bool is an int subclass in Python but never a valid id, time or position; an int is a valid float.
    if isinstance(value, bool):
        return False
    if expected is float:
        return isinstance(value, int | float)
    if not isinstance(value, expected):
        return False
    if pa.types.is_integer(arrow_type):  # e.g. hour is int8: 300 does not fit
        half = 2 ** (arrow_type.bit_width - 1)
        return -half <= value < half
    return True


def read_events(path: Path) -> tuple[pa.Table, ReadChecks]:
    """A canonical event log (JSON Lines or Parquet) as a table, without dropping bad records: the suite
    judges them. Lines that are not JSON objects are left out of the table and counted, as a failed
    read check naming the first; blank lines are skipped and counted. A Parquet log goes through the
    columnar conform step (``logfile.conform_columns``); one it cannot read is an input error. A JSON value
    of the wrong type for its column (``"event_time": "soon"``) becomes null in the table, so the not-null
    and range expectations see a missing value, and is reported as a failed schema check naming the
    column, the count and the first line."""
    if not path.exists():
        raise ValidationInputError(f"event log {path} does not exist")
    try:
        log_format = logfile.log_format(path)
    except ValueError as exc:
        raise ValidationInputError(str(exc)) from None
    if log_format == "parquet":
        try:
            parquet = logfile.open_parquet(path)
        except logfile.LogSchemaError as exc:
            raise ValidationInputError(str(exc)) from None
        return logfile.conform_columns(parquet.read()), ReadChecks()
    columns = [(f.name, _JSON_TYPES[f.name], f.type) for f in _READ_SCHEMA]
    mistyped: dict[str, list] = {}  # column -> [count, first line number, first value]
    undecodable: list = [0, 0, ""]  # [count, first line number, first reason]
    blank_lines = 0
    records = []
    with path.open("rb") as handle:
        for number, line in enumerate(handle, 1):
            if not line.strip():
                blank_lines += 1
                continue
            try:
                record = json.loads(line)
                if not isinstance(record, dict):
                    raise ValueError(f"a JSON {type(record).__name__}, not an object")
            except (ValueError, UnicodeDecodeError) as exc:  # JSONDecodeError is a ValueError
                undecodable = [undecodable[0] + 1, undecodable[1] or number, undecodable[2] or str(exc)]
                continue
            row = {}
            for name, expected, arrow_type in columns:
                value = record.get(name)
                if value is not None and not _conforms(value, expected, arrow_type):
                    mistyped.setdefault(name, [0, number, value])[0] += 1
                    value = None
                row[name] = value
            records.append(row)
    failed = tuple(
        FailedExpectation(SCHEMA_CHECK, name,
                          f"{name}: {SCHEMA_CHECK} ({count} values not {_JSON_TYPES[name].__name__} "
                          f"fitting {_READ_SCHEMA.field(name).type}, e.g. line {line}: {value!r:.40}; "
                          "read as null)")
        for name, (count, line, value) in mistyped.items()
    )
    count, line, reason = undecodable
    if count:
        failed += (FailedExpectation(DECODE_CHECK, None, f"{DECODE_CHECK} ({count} lines are not JSON "
                                     f"objects, e.g. line {line}: {reason:.80}; left out)"),)
    checks = ReadChecks(evaluated=len(columns) + 1, failed=failed, blank_lines=blank_lines)
    if not records:
        return event_contract.EVENT_SCHEMA.empty_table(), checks
    return pa.Table.from_pylist(records, schema=_READ_SCHEMA), checks


def validate_events(settings: Settings, path: Path, run: str | None = None,
                    bounds: ValidationBounds | None = None) -> ValidationReport:
    """Validate a canonical event log file with the ``events`` suite (plus the read-time type checks)."""
    table, checks = read_events(path)
    return validate_table(settings, "events", with_click_column(table), run, bounds, read_checks=checks)


def with_click_column(events: pa.Table) -> pa.Table:
    """The events with ``CLICK_COLUMN``: 1 for a click, 0 for an impression, null for any other type."""
    kind = events.column("type")
    flag = pc.if_else(pc.equal(kind, event_contract.CLICK), 1,
                      pc.if_else(pc.equal(kind, event_contract.IMPRESSION), 0, pa.scalar(None, pa.int8())))
    return events.append_column(CLICK_COLUMN, flag.cast(pa.int8()))


def validate_dataset(settings: Settings, name: str | None = None, run: str | None = None,
                     bounds: ValidationBounds | None = None) -> ValidationReport:
    """Validate a built training set (``None`` = LATEST) with the ``dataset`` suite."""
    from features.datasets import load_dataset

    table, _ = load_dataset(settings, name)
    return validate_table(settings, "dataset", table, run, bounds)
