"""What a materialization reports, written once for every asset: the table it wrote (``dagster/row_count``,
``dagster/column_schema`` from the ``data.schema`` declaration), figures rounded to :data:`FIGURE_DIGITS` places,
small tables for the rest, links into the MLflow UI, and the tags an MLflow run takes from its Dagster run.

Example::

    with warehouse_db.session() as con:
        ...  # write item_catalog
        meta = table_metadata(con, ITEM_CATALOG)  # {"dagster/row_count": 9742, "dagster/column_schema": ...}
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import dagster as dg
import duckdb
import pandas as pd

from recsys_pipeline.data import warehouse
from recsys_pipeline.data.schema import Table

FIGURE_DIGITS = 4  # figures in metadata: enough to compare runs, short enough to read
MAX_HEADLINE = 8  # scalar entries per materialization; everything else goes in one table
ROW_COUNT, PARTITION_ROW_COUNT = "dagster/row_count", "dagster/partition_row_count"
COLUMN_SCHEMA = "dagster/column_schema"
# Where a Dagster run came from: the run tag ORIGIN_TAG, one of ORIGINS (the schedule and sensor set it, the
# `recsys` commands too; a run launched from the UI has none). Defined here, the lowest module that reads it.
ORIGIN_TAG = "recsys/origin"
ORIGIN_SCHEDULE, ORIGIN_SENSOR, ORIGIN_DEMO, ORIGIN_BACKFILL = "schedule", "sensor", "demo", "backfill"
ORIGIN_ROLLBACK = "rollback"  # `recsys rollback`: the published lists answer from another day
ORIGIN_TUNE = "tune"  # `recsys tune`: the hyperparameter search
ORIGINS = (ORIGIN_SCHEDULE, ORIGIN_SENSOR, ORIGIN_DEMO, ORIGIN_BACKFILL, ORIGIN_ROLLBACK, ORIGIN_TUNE)
# Dagster run tags the MLflow runs repeat (run id, partition or range, where the run came from)
_PARTITION = "dagster/partition"
_RANGE_START, _RANGE_END = "dagster/asset_partition_range_start", "dagster/asset_partition_range_end"


def column_schema(table: Table) -> dg.TableSchema:
    """The ``dg.TableSchema`` of a ``data.schema`` declaration: one column per declared column, with its DuckDB type
    (``VARCHAR``, ``FLOAT[384]``, ...), description and constraints (nullable; the primary key is unique)."""
    return dg.TableSchema(
        columns=[
            dg.TableColumn(
                c.name,
                c.sql_type,
                description=c.description or None,
                constraints=dg.TableColumnConstraints(nullable=c.nullable, unique=c.name == table.primary_key),
            )
            for c in table.columns
        ]
    )


def table_metadata(con: duckdb.DuckDBPyConnection, table: Table, partition_rows: int | None = None) -> dict:
    """``dagster/row_count`` (rows in ``table`` now, counted on ``con``), ``dagster/column_schema`` and, for a
    partitioned asset, ``dagster/partition_row_count`` (``partition_rows``: the rows of the run's partitions)."""
    out = {
        ROW_COUNT: dg.MetadataValue.int(warehouse.row_count(con, table.name)),
        COLUMN_SCHEMA: dg.MetadataValue.table_schema(column_schema(table)),
    }
    if partition_rows is not None:
        out[PARTITION_ROW_COUNT] = dg.MetadataValue.int(int(partition_rows))
    return out


def add_daily_metadata(context: dg.AssetExecutionContext, days: Mapping[str, Mapping[str, object]]) -> None:
    """Metadata of each day of the run, on top of the metadata the asset returns (a key given here wins on that
    day's materialization): in a range run each partition's page then shows its own figures, such as that day's
    ``dagster/partition_row_count``, where the returned metadata is the run's (one result for every partition).

    ``days`` maps a partition key of the run (``"2018-09-03"``) to its entries. Dagster's public
    ``context.add_asset_metadata(metadata, partition_key=...)`` re-lists the run's range and copies every entry
    added so far on each call, quadratic in the days: about 8 s for the bundled data's 8,215 days. The entries are
    therefore added to the step's metadata accumulator in one pass where this Dagster version has one (checked
    by type; the same lookup ``context.add_asset_metadata`` feeds), else through the public call.

    Raises:
        ValueError: a key of ``days`` is not a partition of this run.
    """
    if not days:
        return
    outside = sorted(set(days) - set(context.partition_keys))
    if outside:
        raise ValueError(f"metadata for days outside the run's partitions: {outside[:3]}")
    step = getattr(context, "_step_execution_context", None)
    accumulator = getattr(step, "_metadata_accumulator", None)
    try:
        from dagster._core.execution.context.metadata_logging import AssetMetadataHandle, OutputMetadataAccumulator
    except ImportError:  # another Dagster layout: the public call, slower on long ranges
        accumulator = None
    if not isinstance(accumulator, OutputMetadataAccumulator):
        for key, entries in days.items():
            context.add_asset_metadata(dict(entries), partition_key=key)
        return
    merged = dict(accumulator.per_output_metadata)
    for key, entries in days.items():
        handle = AssetMetadataHandle(asset_key=context.asset_key, partition_key=key)
        merged[handle] = {**merged.get(handle, {}), **entries}
    step._metadata_accumulator = OutputMetadataAccumulator(per_output_metadata=merged)


def declared_width(con: duckdb.DuckDBPyConnection, table: str, column: str = "embedding") -> int | None:
    """The ``d`` of ``table.column FLOAT[d]`` as the warehouse holds it; ``None`` when the table or column is absent
    or the array has no fixed width (the argument of ``schema.embedding_table`` / ``item_features_table``)."""
    rows = con.execute(
        "SELECT data_type FROM information_schema.columns WHERE table_schema = 'main' AND table_name = ? "
        "AND column_name = ?",
        [table, column],
    ).fetchall()
    text = rows[0][0] if rows else ""
    inside = text.removeprefix("FLOAT[").removesuffix("]")
    return int(inside) if text.startswith("FLOAT[") and inside.isdigit() else None


def figure(value: float | int | None) -> float | None:
    """``value`` rounded to :data:`FIGURE_DIGITS` places; ``None`` for a missing or non-finite figure."""
    if value is None or not math.isfinite(float(value)):
        return None
    return round(float(value), FIGURE_DIGITS)


def frame_table(frame: pd.DataFrame) -> dg.TableMetadataValue:
    """``dg.MetadataValue.table`` of a small frame (a few rows and columns: it must fit a laptop screen), floats
    rounded to :data:`FIGURE_DIGITS` places and NaN shown empty; column types ``float``, ``int``, ``bool`` or
    ``string``."""

    def kind(series: pd.Series) -> str:
        if pd.api.types.is_bool_dtype(series):
            return "bool"
        if pd.api.types.is_integer_dtype(series):
            return "int"
        return "float" if pd.api.types.is_float_dtype(series) else "string"

    kinds = {str(c): kind(frame[c]) for c in frame.columns}

    def cell(value, column: str):
        if value is None or (isinstance(value, float) and math.isnan(value)):
            return None
        if kinds[column] == "float":
            return figure(value)
        if kinds[column] == "int":
            return int(value)
        return bool(value) if kinds[column] == "bool" else str(value)

    records = [
        dg.TableRecord({str(c): cell(v, str(c)) for c, v in zip(frame.columns, row)})
        for row in frame.itertuples(index=False)
    ]
    schema = dg.TableSchema(columns=[dg.TableColumn(c, t) for c, t in kinds.items()])
    return dg.MetadataValue.table(records, schema)


def key_value_table(values: Mapping[str, object]) -> dg.TableMetadataValue:
    """A two-column ``what | value`` table of the entries that are not headline figures (values as text)."""
    frame = pd.DataFrame({"what": list(values), "value": [_text(v) for v in values.values()]})
    return frame_table(frame)


def _text(value: object) -> str:
    if isinstance(value, float):
        rounded = figure(value)
        return "" if rounded is None else f"{rounded:g}"
    return str(value)


def mlflow_tags(context: dg.AssetExecutionContext) -> dict[str, str]:
    """The tags every MLflow run of this step carries: ``dagster.run_id``, the run's partition
    (``dagster.partition``; also for a range of one day) or range (``dagster.partition_range``, ``START...END``)
    when it has one, and where the run came from (``recsys.origin``, the Dagster run tag :data:`ORIGIN_TAG`) when
    that tag is set."""
    run_tags = context.run.tags
    tags = {"dagster.run_id": context.run.run_id}
    if run_tags.get(_PARTITION):
        tags["dagster.partition"] = run_tags[_PARTITION]
    elif run_tags.get(_RANGE_START) and run_tags[_RANGE_START] == run_tags.get(_RANGE_END):  # a one-day range
        tags["dagster.partition"] = run_tags[_RANGE_START]
    elif run_tags.get(_RANGE_START):
        tags["dagster.partition_range"] = f"{run_tags[_RANGE_START]}...{run_tags.get(_RANGE_END, '')}"
    if run_tags.get(ORIGIN_TAG):
        tags["recsys.origin"] = run_tags[ORIGIN_TAG]
    return tags
