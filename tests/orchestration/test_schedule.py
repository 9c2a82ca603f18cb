"""The nightly schedule asks for yesterday's partition of the whole-graph job."""

from datetime import UTC, datetime

import dagster as dg

from recsys_pipeline import automation


def test_nightly_tick_requests_yesterdays_partition(definitions):
    schedule = definitions.resolve_schedule_def("nightly_retrain")
    context = dg.build_schedule_context(scheduled_execution_time=datetime(2024, 5, 3, 2, 0, tzinfo=UTC))
    result = schedule.evaluate_tick(context)
    assert [r.partition_key for r in result.run_requests] == ["2024-05-02"]
    assert schedule.job_name == "recsys_pipeline_job"
    assert result.run_requests[0].tags[automation.ORIGIN_TAG] == automation.ORIGIN_SCHEDULE == "schedule"


def test_jobs_say_what_they_run(definitions):
    for name in (automation.PIPELINE_JOB, automation.INGEST_JOB):
        description = definitions.resolve_job_def(name).description
        assert description and len(description) > 40, name
    assert automation.ORIGIN_TAG == "recsys/origin"  # the key the `recsys` commands set (demo, backfill) too
    assert set(automation.ORIGINS) == {"schedule", "sensor", "demo", "backfill"}


def test_nightly_schedule_runs_the_whole_graph_at_two_utc(definitions):
    schedule = definitions.resolve_schedule_def("nightly_retrain")
    assert schedule.cron_schedule == "0 2 * * *" and schedule.execution_timezone in (None, "UTC")
    job = definitions.resolve_job_def(schedule.job_name)
    every_asset = set(definitions.resolve_all_asset_keys())
    assert set(job.asset_layer.executable_asset_keys) == every_asset
    # the unpartitioned assets run in the same partitioned run (Dagster runs them as plain steps)
    assert {"item_catalog", "recommender_model", "recommendations"} <= {k.to_user_string() for k in every_asset}


def test_nightly_hour_comes_from_the_settings_and_is_validated(monkeypatch):
    import pytest

    from recsys_pipeline.definitions import build_definitions
    from recsys_pipeline.settings import SettingsError

    monkeypatch.setenv("RECSYS_NIGHTLY_HOUR_UTC", "23")
    assert build_definitions().resolve_schedule_def("nightly_retrain").cron_schedule == "0 23 * * *"
    for bad in ("24", "-1", "2am"):
        monkeypatch.setenv("RECSYS_NIGHTLY_HOUR_UTC", bad)
        with pytest.raises(SettingsError, match="RECSYS_NIGHTLY_HOUR_UTC"):
            build_definitions()
