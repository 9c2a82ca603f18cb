"""The nightly schedule asks for yesterday's partition of the whole-graph job."""

from datetime import UTC, datetime

import dagster as dg

from recsys_pipeline import automation


def test_nightly_tick_requests_yesterdays_partition(tmp_path, monkeypatch):
    from recsys_pipeline.definitions import build_definitions

    # a growing source (a daily-files folder): its partitions run to yesterday, so every night has a new one
    monkeypatch.setenv("RECSYS_SOURCE_KIND", "daily_files")
    monkeypatch.setenv("RECSYS_EVENTS_DIR", str(tmp_path))
    monkeypatch.setenv("RECSYS_PARTITIONS_START", "2024-01-01")
    schedule = build_definitions().resolve_schedule_def("nightly_retrain")
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
    assert set(automation.ORIGINS) == {"schedule", "sensor", "demo", "backfill", "rollback"}


def test_partitions_of_the_bundled_data_end_at_its_last_day_and_growing_ones_at_yesterday(tmp_path, monkeypatch):
    from datetime import timedelta

    import pytest

    from recsys_pipeline.assets.partitions import daily_partitions
    from recsys_pipeline.settings import SettingsError, get_settings

    bundled = daily_partitions(get_settings())  # static: no grey days after 2018-09-24 in the UI
    assert (bundled.get_first_partition_key(), bundled.get_last_partition_key()) == ("1996-03-29", "2018-09-24")
    assert len(bundled.get_partition_keys()) == 8215
    monkeypatch.setenv("RECSYS_PARTITIONS_END", "2018-09-20")  # any static release: its last day, set
    assert daily_partitions(get_settings()).get_last_partition_key() == "2018-09-20"
    monkeypatch.setenv("RECSYS_PARTITIONS_END", "1990-01-01")
    with pytest.raises(SettingsError, match="RECSYS_PARTITIONS_END=1990-01-01 is before the first partition"):
        daily_partitions(get_settings())
    monkeypatch.setenv("RECSYS_PARTITIONS_END", "2999-01-01")  # never past yesterday
    yesterday = (datetime.now(UTC).date() - timedelta(days=1)).isoformat()
    assert daily_partitions(get_settings()).get_last_partition_key() == yesterday
    monkeypatch.delenv("RECSYS_PARTITIONS_END")
    monkeypatch.setenv("RECSYS_SOURCE_KIND", "daily_files")
    monkeypatch.setenv("RECSYS_EVENTS_DIR", str(tmp_path))
    assert daily_partitions(get_settings()).get_last_partition_key() == yesterday  # growing


def test_nightly_schedule_runs_the_whole_graph_at_two_utc(definitions):
    schedule = definitions.resolve_schedule_def("nightly_retrain")
    assert schedule.cron_schedule == "0 2 * * *" and schedule.execution_timezone in (None, "UTC")
    job = definitions.resolve_job_def(schedule.job_name)
    every_asset = set(definitions.resolve_all_asset_keys())
    assert set(job.asset_layer.executable_asset_keys) == every_asset
    # every stage is on the job's daily partitions: yesterday's run materializes yesterday's partition of each
    for key in every_asset:
        assert definitions.get_assets_def(key).partitions_def == job.partitions_def, key
    # a range of ingestion or content is one run; the model group: no policy, a backfill launches one run per day
    policies = {k.to_user_string(): definitions.get_assets_def(k).backfill_policy for k in every_asset}
    assert {k for k, p in policies.items() if p is None} == set(automation.MODEL_ASSETS)
    assert {k for k, p in policies.items() if p and p.max_partitions_per_run is None} == set(
        automation.DAILY_RANGE_ASSETS
    )


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
