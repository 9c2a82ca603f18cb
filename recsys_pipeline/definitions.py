"""The code location: every asset, the whole-graph job, the nightly schedule, the resources."""

from __future__ import annotations

import os

import dagster as dg

from recsys_pipeline import dagster_sqlite
from recsys_pipeline.assets import ALL_ASSETS
from recsys_pipeline.assets.checks import ALL_CHECKS
from recsys_pipeline.resources import default_resources
from recsys_pipeline.settings import home_paths

dagster_sqlite.install()

# The whole graph; run for one day (or a range) it ingests those partitions and refreshes everything downstream.
pipeline_job = dg.define_asset_job("recsys_pipeline_job", selection=dg.AssetSelection.all())

# 02:00 UTC each night: ingest yesterday's partition, re-encode new items only, retrain, evaluate, publish.
nightly_schedule = dg.build_schedule_from_partitioned_job(
    pipeline_job,
    hour_of_day=int(os.environ.get("RECSYS_NIGHTLY_HOUR_UTC", "2")),
    minute_of_hour=0,
    name="nightly_retrain",
    default_status=dg.DefaultScheduleStatus.STOPPED,
)

defs = dg.Definitions(
    assets=ALL_ASSETS,
    asset_checks=ALL_CHECKS,
    jobs=[pipeline_job],
    schedules=[nightly_schedule],
    resources=default_resources(home_paths().ensure()),
)
