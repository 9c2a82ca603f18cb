"""The daily partitions of event data: one UTC day each, from the first day of the source's data."""


import os
from datetime import date, datetime

import dagster as dg


def partitions_start() -> date:
    """``RECSYS_PARTITIONS_START`` (YYYY-MM-DD) if set, else the first day of the configured source.

    Raises:
        ValueError: ``RECSYS_PARTITIONS_START`` is not a date.
    """
    text = os.environ.get("RECSYS_PARTITIONS_START")
    if text:
        try:
            return date.fromisoformat(text)
        except ValueError as exc:
            raise ValueError(f"RECSYS_PARTITIONS_START={text!r} is not a YYYY-MM-DD date") from exc
    from recsys_pipeline.resources import source_from_env

    return source_from_env().build().first_date()


daily_partitions = dg.DailyPartitionsDefinition(
    start_date=partitions_start().isoformat(), timezone="UTC", fmt="%Y-%m-%d"
)


def window(context: dg.AssetExecutionContext) -> tuple[datetime, datetime]:
    """The run's partition window (one day, or a range in a single-run backfill) as naive UTC ``[start, end)``."""
    tw = context.partition_time_window
    return tw.start.replace(tzinfo=None), tw.end.replace(tzinfo=None)
