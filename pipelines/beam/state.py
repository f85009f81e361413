"""The job's checkpoint: committed offsets plus a compact state snapshot, committed atomically.

State (Parquet per kind and shard under ``state-<seq>/``) is what the next micro-batch needs from the
past: events not yet behind the watermark, pending impressions and clicks, recently labelled ids,
the impression ids still inside their dedup window, 7 days of per-entity history and each user's
last N clicks. The checkpoint JSON names the offsets and the state directory; it is replaced with
``os.replace`` only after every sink wrote, so a killed job restarts from the last complete batch and
rewrites the same-named output files.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from pipelines.beam.attribution import CLICK_SCHEMA, FIRST_SEEN_SCHEMA, RECENT_SCHEMA
from pipelines.beam.parse import SOURCED_EVENT_SCHEMA
from pipelines.beam.sequences import CLICK_HISTORY_SCHEMA
from pipelines.beam.shards import rows_of_shard
from pipelines.events import EVENT_SCHEMA

CHECKPOINT_FILE = "checkpoint.json"
CHECKPOINT_VERSION = 1


def _history_schema(entity: str) -> pa.Schema:
    return pa.schema(
        [pa.field(entity, pa.string()), pa.field("event_time", pa.int64()), pa.field("is_click", pa.bool_())]
    )


# kind -> (schema, entity column the kind is sharded by in the user-keyed step)
STATE_KINDS: dict[str, pa.Schema] = {
    # Held events keep their origin: a held duplicate is dead-lettered by its source offset. (State
    # written before origins were kept reads back with null origins: only tie-breaks lose them.)
    "held": SOURCED_EVENT_SCHEMA,
    "user_history": _history_schema("user_id"),
    "item_history": _history_schema("item_id"),
    "click_history": CLICK_HISTORY_SCHEMA,
    "pending_impressions": EVENT_SCHEMA,
    "pending_clicks": CLICK_SCHEMA,
    "recent": RECENT_SCHEMA,
    "first_seen": FIRST_SEEN_SCHEMA,
}


@dataclass
class Checkpoint:
    """What has been committed: next offset per ``topic|partition``, watermark, state location."""

    batch_seq: int = 0
    offsets: dict[str, int] = field(default_factory=dict)
    max_event_times: dict[str, int] = field(default_factory=dict)
    watermark_ms: int | None = None
    last_created_ms: int = 0
    state_dir: str | None = None
    final: bool = False  # the last batch labelled everything (a finished log)
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


def load_checkpoint(directory: Path) -> Checkpoint:
    path = directory / CHECKPOINT_FILE
    if not path.exists():
        return Checkpoint()
    data = json.loads(path.read_text())
    if data.get("version") != CHECKPOINT_VERSION:
        raise ValueError(f"{path}: unsupported checkpoint version {data.get('version')!r}")
    return Checkpoint(**data)


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
SHARDED_BY: dict[str, str] = {k: "item_id" if k == "item_history" else "user_id" for k in STATE_KINDS}


def state_file_name(shard: int, num_shards: int) -> str:
    return f"shard-{shard:04d}-of-{num_shards:04d}.parquet"


def read_state(state_root: Path | None, kind: str, column: str, shard: int, num_shards: int) -> pa.Table:
    """Rows of one state kind whose ``column`` falls in ``shard`` (empty when there is no state yet).

    A shard reads just its own file when the state was written by as many shards, by the same column;
    otherwise (another shard count, or held events read by item) it filters every file of the kind.
    """
    schema = STATE_KINDS[kind]
    if state_root is None or not (state_root / kind).is_dir():
        return schema.empty_table()
    directory = state_root / kind
    own = directory / state_file_name(shard, num_shards)
    if column == SHARDED_BY[kind] and own.exists():
        return pq.read_table(own, schema=schema)
    files = sorted(directory.glob("*.parquet"))
    if not files:
        return schema.empty_table()
    table = pa.concat_tables([pq.read_table(f, schema=schema) for f in files])
    return rows_of_shard(table, column, shard, num_shards)


def write_state(state_root: Path, kind: str, shard: int, num_shards: int, table: pa.Table) -> None:
    """Write one shard of one kind (temp file + rename: a half-written file is never read)."""
    directory = state_root / kind
    directory.mkdir(parents=True, exist_ok=True)
    name = state_file_name(shard, num_shards)
    tmp = directory / f".{name}.tmp"
    pq.write_table(table.select(STATE_KINDS[kind].names).cast(STATE_KINDS[kind]), tmp)
    os.replace(tmp, directory / name)
