"""The code location: every asset and check, the jobs, the nightly schedule, the landing sensor, the resources."""

from __future__ import annotations

from collections.abc import Mapping

import dagster as dg

from recsys_pipeline import dagster_sqlite
from recsys_pipeline.assets import ALL_ASSETS
from recsys_pipeline.assets.checks import ALL_CHECKS
from recsys_pipeline.automation import JOBS, SCHEDULES, SENSORS
from recsys_pipeline.resources import default_resources
from recsys_pipeline.settings import home_paths

dagster_sqlite.install()


def build_definitions(resources: Mapping[str, dg.ConfigurableResource]) -> dg.Definitions:
    """The code location with ``resources`` (e.g. ``default_resources(paths)`` with another ``source``).

    Steps run in the run's process, one after another: they share one DuckDB file (one writer at a time), and a
    subprocess per step would re-import torch and transformers for every asset and check.
    """
    return dg.Definitions(
        assets=ALL_ASSETS, asset_checks=ALL_CHECKS, jobs=JOBS, schedules=SCHEDULES, sensors=SENSORS,
        resources=dict(resources), executor=dg.in_process_executor,
    )


defs = build_definitions(default_resources(home_paths().ensure()))
