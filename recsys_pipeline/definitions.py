"""The code location: assembles the assets and checks, the jobs, the nightly schedule, the landing sensor and the
resources. Nothing else.

``defs`` is loaded lazily (``@dg.definitions``): importing this module reads no setting, creates no folder and
opens no data file; Dagster (``dagster dev -m recsys_pipeline.definitions``, the ``recsys`` commands) calls it when
it loads the code location, which reads the settings of that moment. The code location name is the module's,
``recsys_pipeline.definitions`` (``pyproject.toml``'s ``[tool.dagster]``): an installed package is a complete code
location.
"""

from __future__ import annotations

from collections.abc import Mapping

import dagster as dg

from recsys_pipeline.settings import Settings, get_settings


def build_definitions(
    settings: Settings | None = None, resources: Mapping[str, object] | None = None
) -> dg.Definitions:
    """The code location for ``settings`` (default: the environment now) with ``resources`` (default: every
    resource resolving from the settings when a run starts; e.g. ``resources_for_home(path)`` in tests).

    The executor is ``settings.resolved_executor`` (``instance.pool_aware_executor``): on the sqlite profile steps
    run in the run's process, one after another (they share one DuckDB file, and a subprocess per step would
    re-import torch and transformers for every asset and check); on the postgres profile a process per step
    (Dagster's ``multi_or_in_process`` executor; ``execution: config: in_process: {}`` in the run config selects one
    process), or a Kubernetes job per step (``RECSYS_EXECUTOR=k8s``). The ``duckdb`` pool keeps the DuckDB writers
    one at a time in every case.
    """
    from recsys_pipeline import automation, instance
    from recsys_pipeline.assets import (
        content_assets,
        content_checks,
        daily_partitions,
        ingestion_assets,
        ingestion_checks,
        model_assets,
        model_checks,
        tuning_assets,
    )
    from recsys_pipeline.resources import default_resources

    settings = settings or get_settings()
    partitions = daily_partitions(settings)
    jobs = automation.jobs()
    return dg.Definitions(
        assets=[
            *ingestion_assets(partitions),
            *content_assets(partitions),
            *model_assets(partitions, settings),
            *tuning_assets(),
        ],
        asset_checks=[*ingestion_checks(partitions), *content_checks(), *model_checks(partitions)],
        jobs=jobs,
        schedules=automation.schedules(jobs[0], settings),
        sensors=automation.sensors(partitions),
        resources=dict(resources) if resources is not None else default_resources(),
        executor=instance.pool_aware_executor(settings.resolved_executor),
        loggers={"step_lines": instance.step_lines},
    )


@dg.definitions
def defs() -> dg.Definitions:
    """What Dagster loads: :func:`build_definitions` with the settings of the loading process."""
    from recsys_pipeline import instance

    instance.relax_sqlite_sync()  # the processes that write the instance's events load this code location
    return build_definitions()
