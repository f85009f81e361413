"""One rule for missing features, applied identically to Feast results, the ASOF fast path and online
lookups: nulls become ``feature_default`` values and every column gets its warehouse Arrow type."""

from __future__ import annotations

import pyarrow as pa
import pyarrow.compute as pc

from features.feature_repo.definitions import feature_arrow_type, feature_default
from pipelines.tables import StatHorizons


def normalize_feature_column(
    name: str, column: pa.ChunkedArray | pa.Array, horizons: StatHorizons
) -> pa.ChunkedArray:
    """Fill nulls of the feature ``<view>__<feature>`` with its default and cast to its Arrow type."""
    arrow_type = feature_arrow_type(name, horizons)
    if isinstance(column, pa.Array):
        column = pa.chunked_array([column])
    # Feast turns Int64 features with nulls into float64; the cast back is exact for counts.
    if not column.type.equals(arrow_type):
        column = column.cast(arrow_type)
    fill = feature_default(name.split("__", 1)[1])
    if column.null_count == 0 or fill is None:
        return column
    default = pa.scalar(fill, type=arrow_type)
    return pc.if_else(pc.is_null(column), default, column)


def normalize_features(table: pa.Table, feature_columns: list[str], horizons: StatHorizons) -> pa.Table:
    """Return ``table`` with every listed feature column filled and typed."""
    for name in feature_columns:
        i = table.schema.get_field_index(name)
        table = table.set_column(i, pa.field(name, feature_arrow_type(name, horizons)),
                                 normalize_feature_column(name, table.column(i), horizons))
    return table
