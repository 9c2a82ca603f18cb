"""The daily partitions of event data: one UTC day each, from the configured first day to the last day of a static
source or to yesterday for a growing one (settings or a folder listing, never a parse of the data:
``data.sources.partitions_start`` / ``partitions_end``)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import dagster as dg

from recsys_pipeline.data.sources import partitions_end, partitions_start
from recsys_pipeline.settings import Settings, SettingsError


def daily_partitions(settings: Settings) -> dg.DailyPartitionsDefinition:
    """UTC days from ``partitions_start(settings)`` to ``partitions_end(settings)`` (never past yesterday), or to
    yesterday when the source grows.

    Raises:
        SettingsError: the last day is before the first.
    """
    start, end = partitions_start(settings), partitions_end(settings)
    end_date = None
    if end is not None:
        end = min(end, datetime.now(UTC).date() - timedelta(days=1))
        if end < start:
            raise SettingsError(f"RECSYS_PARTITIONS_END={end} is before the first partition {start}")
        end_date = (end + timedelta(days=1)).isoformat()  # Dagster's end_date is exclusive
    return dg.DailyPartitionsDefinition(start_date=start.isoformat(), end_date=end_date, timezone="UTC", fmt="%Y-%m-%d")


def window(context: dg.AssetExecutionContext) -> tuple[datetime, datetime]:
    """The run's partition window (one day, or a range in a single-run backfill) as naive UTC ``[start, end)``."""
    tw = context.partition_time_window
    return tw.start.replace(tzinfo=None), tw.end.replace(tzinfo=None)
