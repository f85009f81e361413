"""The job's checkpoint: committed offsets plus a compact state snapshot, committed atomically.

State (Parquet per kind and shard under ``state-<seq>/``) is what the next micro-batch needs from the
past: events not yet behind the watermark, pending impressions and clicks, recently labelled ids,
the impression ids still inside their dedup window, the per-entity history of the longest sliding
statistics window, one totals row per
entity for the long-horizon statistics (what the pruned history adds up to) and each user's last N
clicks. The checkpoint JSON names the offsets and the state directory; it is replaced with
``os.replace`` only after every sink wrote, so a killed job restarts from the last complete batch and
rewrites the same-named output files.

Besides offsets and state the checkpoint records which log it belongs to (the broker's cluster id and
topic ids where it reports them, and a fingerprint of the record just before each committed offset),
the statistics horizons its state and tables were built with, and the manifest of warehouse part files
its batches produced. A checkpoint of another format, of other horizons, or one that cannot be read, is
refused with a message naming ``--reset``: it is never silently reused.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from pipelines.beam.attribution import CLICK_SCHEMA, FIRST_SEEN_SCHEMA, RECENT_SCHEMA
from pipelines.beam.parse import SOURCED_EVENT_SCHEMA
from pipelines.beam.sequences import CLICK_HISTORY_SCHEMA
from pipelines.beam.shards import rows_of_shard
from pipelines.beam.sinks import RESET_HINT
from pipelines.beam.stats import totals_schema
from pipelines.events import EVENT_SCHEMA
from pipelines.tables import StatHorizons

CHECKPOINT_FILE = "checkpoint.json"
# 2: log identity (cluster, topic ids, record fingerprints) and the part-file manifest.
# 3: per-entity totals (the long-horizon statistics) in the state, and their columns in the stats tables.
# 4: the statistics horizons (configurable since), so that a change is refused instead of mixing them.
CHECKPOINT_VERSION = 4
_STATE_DIR = re.compile(r"state-\d{8}")


class CheckpointError(ValueError):
    """The committed checkpoint (or its state) cannot be used; the message says why and names --reset."""


def _history_schema(entity: str) -> pa.Schema:
    return pa.schema(
        [pa.field(entity, pa.string()), pa.field("event_time", pa.int64()), pa.field("is_click", pa.bool_())]
    )


def state_kinds(horizons: StatHorizons) -> dict[str, pa.Schema]:
    """State kind -> schema; the totals' columns follow the home's decayed horizons."""
    return {
        # Held events keep their origin: a held duplicate is dead-lettered by its source offset. (State
        # written before origins were kept reads back with null origins: only tie-breaks lose them.)
        "held": SOURCED_EVENT_SCHEMA,
        "user_history": _history_schema("user_id"),
        "item_history": _history_schema("item_id"),
        "user_totals": totals_schema("user_id", horizons),
        "item_totals": totals_schema("item_id", horizons),
        "click_history": CLICK_HISTORY_SCHEMA,
        "pending_impressions": EVENT_SCHEMA,
        "pending_clicks": CLICK_SCHEMA,
        "recent": RECENT_SCHEMA,
        "first_seen": FIRST_SEEN_SCHEMA,
    }


STATE_KIND_NAMES: tuple[str, ...] = tuple(state_kinds(StatHorizons()))


@dataclass(frozen=True)
class RecordFingerprint:
    """The record just before a committed offset: a recreated topic or another broker differs here."""

    key: str | None  # hex of the key bytes
    timestamp: int
    offset: int


@dataclass
class Checkpoint:
    """What has been committed: next offset per ``topic|partition``, watermark, state location, which
    log the offsets belong to, and the warehouse part files the committed batches produced."""

    batch_seq: int = 0
    offsets: dict[str, int] = field(default_factory=dict)
    max_event_times: dict[str, int] = field(default_factory=dict)
    watermark_ms: int | None = None
    last_created_ms: int = 0
    state_dir: str | None = None
    final: bool = False  # the last batch labelled everything (a finished log)
    cluster_id: str | None = None  # None: the broker did not say
    topic_ids: dict[str, str | None] = field(default_factory=dict)
    fingerprints: dict[str, RecordFingerprint | None] = field(default_factory=dict)  # None: offset 0
    parts: list[str] = field(default_factory=list)  # warehouse-relative paths, sorted
    horizons: dict | None = None  # StatHorizons.spec() of the state and tables; None: nothing built yet
    version: int = CHECKPOINT_VERSION

    @staticmethod
    def key(topic: str, partition: int) -> str:
        return f"{topic}|{partition}"

    def offset_map(self) -> dict[tuple[str, int], int]:
        out = {}
        for k, v in self.offsets.items():
            topic, partition = k.rsplit("|", 1)
            out[(topic, int(partition))] = v
        return out


def job_dir(checkpoints_dir: Path, job_name: str) -> Path:
    return checkpoints_dir / "features" / job_name


def _unusable(path: Path, why: str) -> CheckpointError:
    return CheckpointError(f"checkpoint {path} is unusable: {why}; {RESET_HINT}")


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _int_map(path: Path, data: dict, name: str, *, partition_keys: bool) -> dict[str, int]:
    value = data.get(name, {})
    if not isinstance(value, dict):
        raise _unusable(path, f"{name} is not an object")
    for k, v in value.items():
        if partition_keys and not re.fullmatch(r".+\|\d+", k):
            raise _unusable(path, f"{name} key {k!r} is not 'topic|partition'")
        if not _is_int(v) or v < 0:
            raise _unusable(path, f"{name}[{k!r}] = {v!r} is not a non-negative integer")
    return value


def _fingerprint(path: Path, k: str, value: object) -> RecordFingerprint | None:
    if value is None:
        return None
    if not isinstance(value, dict) or set(value) != {"key", "timestamp", "offset"}:
        raise _unusable(path, f"fingerprint of {k!r} is malformed")
    key, ts, offset = value["key"], value["timestamp"], value["offset"]
    if not (key is None or isinstance(key, str)) or not _is_int(ts) or not _is_int(offset):
        raise _unusable(path, f"fingerprint of {k!r} has values of the wrong type")
    return RecordFingerprint(key, ts, offset)


def _parse_checkpoint(path: Path, data: object) -> Checkpoint:
    if not isinstance(data, dict):
        raise _unusable(path, "not a JSON object")
    version = data.get("version")
    if version != CHECKPOINT_VERSION:
        raise _unusable(path, f"format {version!r}, this ctrflow reads format {CHECKPOINT_VERSION}")
    unknown = set(data) - set(Checkpoint.__dataclass_fields__)
    if unknown:
        raise _unusable(path, f"unknown fields {sorted(unknown)}")
    offsets = _int_map(path, data, "offsets", partition_keys=True)
    progress = _int_map(path, data, "max_event_times", partition_keys=True)
    for name in ("batch_seq", "last_created_ms"):
        if not _is_int(data.get(name, 0)) or data.get(name, 0) < 0:
            raise _unusable(path, f"{name} = {data.get(name)!r} is not a non-negative integer")
    watermark = data.get("watermark_ms")
    if watermark is not None and not _is_int(watermark):
        raise _unusable(path, f"watermark_ms = {watermark!r} is not an integer")
    state_dir = data.get("state_dir")
    if state_dir is not None and not (isinstance(state_dir, str) and _STATE_DIR.fullmatch(state_dir)):
        raise _unusable(path, f"state_dir = {state_dir!r} is not a state directory name")
    if not isinstance(data.get("final", False), bool):
        raise _unusable(path, "final is not true/false")
    cluster = data.get("cluster_id")
    topic_ids = data.get("topic_ids", {})
    if (
        not (cluster is None or isinstance(cluster, str))
        or not isinstance(topic_ids, dict)
        or not all(v is None or isinstance(v, str) for v in topic_ids.values())
    ):
        raise _unusable(path, "cluster_id / topic_ids have values of the wrong type")
    prints = data.get("fingerprints", {})
    if not isinstance(prints, dict) or set(prints) != set(offsets):
        raise _unusable(path, "fingerprints do not match the offsets")
    parts = data.get("parts", [])
    if not isinstance(parts, list) or not all(
        isinstance(p, str) and p and not p.startswith("/") and ".." not in Path(p).parts for p in parts
    ):
        raise _unusable(path, "parts is not a list of warehouse-relative paths")
    horizons = data.get("horizons")
    if horizons is not None and not isinstance(horizons, dict):
        raise _unusable(path, "horizons is not an object")
    return Checkpoint(
        batch_seq=data.get("batch_seq", 0),
        offsets=offsets,
        max_event_times=progress,
        watermark_ms=watermark,
        last_created_ms=data.get("last_created_ms", 0),
        state_dir=state_dir,
        final=data.get("final", False),
        cluster_id=cluster,
        topic_ids=topic_ids,
        fingerprints={k: _fingerprint(path, k, v) for k, v in prints.items()},
        parts=parts,
        horizons=horizons,
    )


def check_horizons(directory: Path, checkpoint: Checkpoint, horizons: StatHorizons) -> None:
    """Refuse to continue a job whose state and tables were built with other statistics horizons: its
    history may be shorter than a new sliding window needs, and its tables lack the new columns."""
    if checkpoint.horizons is not None and checkpoint.horizons != horizons.spec():
        was = _horizons_text(checkpoint.horizons)
        raise CheckpointError(
            f"checkpoint {directory / CHECKPOINT_FILE} was built with statistics horizons {was}, the "
            f"settings ask for {_horizons_text(horizons.spec())}; {RESET_HINT} (or set CTRFLOW_STAT_WINDOWS "
            "/ CTRFLOW_STAT_DECAYED_WINDOWS back)"
        )


def _horizons_text(spec: dict) -> str:
    sliding = ",".join(spec.get("sliding", {})) or "-"
    decayed = ",".join(spec.get("decayed", {})) or "-"
    return f"sliding {sliding}, decayed {decayed}"


def load_checkpoint(directory: Path) -> Checkpoint:
    """The committed checkpoint (an empty one when there is none); CheckpointError when unusable."""
    path = directory / CHECKPOINT_FILE
    try:
        text = path.read_text()
    except FileNotFoundError:
        return Checkpoint()
    except (OSError, UnicodeDecodeError) as exc:
        raise _unusable(path, f"cannot be read ({exc})") from exc
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise _unusable(path, f"not valid JSON ({exc})") from exc
    return _parse_checkpoint(path, data)


def _corrupt_state(path: Path, exc: BaseException) -> CheckpointError:
    lines = str(exc).strip().splitlines()
    reason = lines[0] if lines else type(exc).__name__
    return CheckpointError(f"state file {path} is corrupt ({reason}); {RESET_HINT}")


def check_state(directory: Path, checkpoint: Checkpoint, horizons: StatHorizons) -> None:
    """Every state file the checkpoint names is a readable Parquet file of its kind's schema, every
    page of it (one read of the state per run).

    Run on the driver before a run, so that a damaged file is one clear error; inside the pipeline it
    would be a worker's traceback on stderr (``read_state`` still names the file if one goes bad then).
    """
    if checkpoint.state_dir is None:
        return
    root = directory / checkpoint.state_dir
    if not root.is_dir():
        raise _unusable(directory / CHECKPOINT_FILE, f"its state directory {root} is missing")
    for kind, schema in state_kinds(horizons).items():
        for path in sorted((root / kind).glob("*.parquet")):
            try:
                names = pq.read_schema(path).names
            except (OSError, pa.ArrowException) as exc:
                raise _corrupt_state(path, exc) from exc
            if names != schema.names:
                raise CheckpointError(f"state file {path} has columns {names}, not {kind}'s; {RESET_HINT}")
            _read_state_file(path, schema)


def commit_checkpoint(directory: Path, checkpoint: Checkpoint) -> None:
    """Atomically make ``checkpoint`` the committed one, then drop state dirs it no longer names."""
    directory.mkdir(parents=True, exist_ok=True)
    tmp = directory / (CHECKPOINT_FILE + ".tmp")
    with open(tmp, "w") as f:
        json.dump(asdict(checkpoint), f, indent=1, sort_keys=True)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, directory / CHECKPOINT_FILE)
    for old in directory.glob("state-*"):
        if old.name != checkpoint.state_dir:
            shutil.rmtree(old, ignore_errors=True)


def state_dir_name(batch_seq: int) -> str:
    return f"state-{batch_seq:08d}"


# The entity column each kind's files are sharded by when written.
SHARDED_BY: dict[str, str] = {k: "item_id" if k.startswith("item_") else "user_id" for k in STATE_KIND_NAMES}


def state_file_name(shard: int, num_shards: int) -> str:
    return f"shard-{shard:04d}-of-{num_shards:04d}.parquet"


def read_state(
    state_root: Path | None, kind: str, schema: pa.Schema, column: str, shard: int, num_shards: int
) -> pa.Table:
    """Rows of one state kind (of ``schema``) whose ``column`` falls in ``shard`` (empty when there is
    no state yet).

    A shard reads just its own file when the state was written by as many shards, by the same column;
    otherwise (another shard count, or held events read by item) it filters every file of the kind.
    """
    if state_root is None or not (state_root / kind).is_dir():
        return schema.empty_table()
    directory = state_root / kind
    own = directory / state_file_name(shard, num_shards)
    if column == SHARDED_BY[kind] and own.exists():
        return _read_state_file(own, schema)
    files = sorted(directory.glob("*.parquet"))
    if not files:
        return schema.empty_table()
    table = pa.concat_tables([_read_state_file(f, schema) for f in files])
    return rows_of_shard(table, column, shard, num_shards)


def _read_state_file(path: Path, schema: pa.Schema) -> pa.Table:
    try:
        return pq.read_table(path, schema=schema)
    except (OSError, pa.ArrowException) as exc:  # damage past the footer that check_state reads
        raise _corrupt_state(path, exc) from exc


def write_state(
    state_root: Path, kind: str, schema: pa.Schema, shard: int, num_shards: int, table: pa.Table
) -> None:
    """Write one shard of one kind (temp file + rename: a half-written file is never read)."""
    directory = state_root / kind
    directory.mkdir(parents=True, exist_ok=True)
    name = state_file_name(shard, num_shards)
    tmp = directory / f".{name}.tmp"
    pq.write_table(table.select(schema.names).cast(schema), tmp)
    os.replace(tmp, directory / name)
