"""Hand-off of large Arrow tables between pipeline stages through files in a staging directory.

A shuffle (GroupByKey) then carries only paths: encoding whole tables through the runner's data plane
costs more than the feature computation itself. Arrow IPC files are written once and memory-mapped
on read. The staging directory must be visible to every worker (local disk for the in-process
runner; shared storage for a cluster, like the state directory) and is removed after each batch.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable
from pathlib import Path

import pyarrow as pa


def stage_table(staging: str, label: str, table: pa.Table) -> str:
    """Write ``table`` under ``staging`` and return its path (unique: a retried task never clashes)."""
    directory = Path(staging)
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{label}-{uuid.uuid4().hex}.arrow"
    with pa.OSFile(str(path), "wb") as sink, pa.ipc.new_file(sink, table.schema) as writer:
        writer.write_table(table)
    return str(path)


def load_staged(paths: Iterable[str | None], schema: pa.Schema) -> pa.Table:
    """All staged tables of ``paths`` (None entries are placeholders and skipped), as one table."""
    tables = []
    for path in paths:
        if path is not None:
            with pa.memory_map(path, "r") as source:
                tables.append(pa.ipc.open_file(source).read_all())
    if not tables:
        return schema.empty_table()
    return pa.concat_tables(tables, promote_options="permissive")
