"""The daily partitions every asset shares: one UTC day each, from the configured first day to the last day of a
static source or to yesterday for a growing one (settings or a folder listing, never a parse of the data:
``data.sources.partitions_start`` / ``partitions_end``).

How a day's partition reads its inputs (the partition mappings Dagster shows as lineage):

- ingestion and content: day D is D's own events, and the catalog as of D (items with ``added_at`` <= D);
- the model group: day D is trained and evaluated on the interactions of D and every day before it, or of the
  ``RECSYS_TRAINING_WINDOW_DAYS`` days ending with D (:func:`interactions_up_to`), and on the catalog as of D.
"""

from __future__ import annotations

import warnings
from datetime import UTC, date, datetime, timedelta

import dagster as dg

from recsys_pipeline.data.sources import partitions_end, partitions_start
from recsys_pipeline.settings import Settings, SettingsError

# "every day before D" as a time-window offset: 100,000 days (about 274 years) reach back past any first partition
# (Dagster clamps the window to the days that exist: allow_nonexistent_upstream_partitions)
ALL_HISTORY_DAYS = 100_000


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


def interactions_up_to(settings: Settings) -> dg.TimeWindowPartitionMapping:
    """Day D of a model asset reads the interactions partitions of D and the ``training_window_days - 1`` days
    before it (``RECSYS_TRAINING_WINDOW_DAYS``; unset: every day before D). Days before the first partition do not
    exist and are not required."""
    days = settings.training_window_days or ALL_HISTORY_DAYS
    with warnings.catch_warnings():  # the parameter is "beta" in Dagster 1.13; it is what "up to D" needs
        warnings.simplefilter("ignore", category=Warning)
        return dg.TimeWindowPartitionMapping(
            start_offset=-(days - 1), end_offset=0, allow_nonexistent_upstream_partitions=True
        )


def window(context: dg.AssetExecutionContext) -> tuple[datetime, datetime]:
    """The run's partition window (one day, or a range in a single-run backfill) as naive UTC ``[start, end)``."""
    tw = context.partition_time_window
    return tw.start.replace(tzinfo=None), tw.end.replace(tzinfo=None)


def one_day(context: dg.AssetExecutionContext) -> date:
    """The UTC day of a run of one partition (the model group: a backfill launches one run per day).

    Raises:
        dagster.Failure: the run covers a range of days (a model is trained as of one day: backfill the range as
            one run per day instead, e.g. from the UI or with ``recsys backfill --downstream``).
    """
    keys = context.partition_keys
    if len(keys) != 1:
        raise dg.Failure(
            f"{context.asset_key.to_user_string()} runs one day per run, this run covers {len(keys)} "
            f"({keys[0]} .. {keys[-1]}): launch a backfill of the range (one run per day)"
        )
    return date.fromisoformat(keys[0])


def day_end(day: date) -> datetime:
    """The end of the UTC day ``day``: the next midnight, naive UTC (an exclusive bound)."""
    return datetime(day.year, day.month, day.day) + timedelta(days=1)
