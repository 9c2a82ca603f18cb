"""The daily partitions of event data: one UTC day each, from the configured first day (a setting or a folder
listing, never a parse of the data: ``data.sources.partitions_start``)."""

from __future__ import annotations

from datetime import datetime

import dagster as dg

from recsys_pipeline.data.sources import partitions_start
from recsys_pipeline.settings import Settings


def daily_partitions(settings: Settings) -> dg.DailyPartitionsDefinition:
    """UTC days from ``partitions_start(settings)`` to yesterday."""
    return dg.DailyPartitionsDefinition(
        start_date=partitions_start(settings).isoformat(), timezone="UTC", fmt="%Y-%m-%d"
    )


def window(context: dg.AssetExecutionContext) -> tuple[datetime, datetime]:
    """The run's partition window (one day, or a range in a single-run backfill) as naive UTC ``[start, end)``."""
    tw = context.partition_time_window
    return tw.start.replace(tzinfo=None), tw.end.replace(tzinfo=None)
