"""The nightly schedule asks for yesterday's partition of the whole-graph job."""

from datetime import UTC, date, datetime

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
    assert set(automation.ORIGINS) == {"schedule", "sensor", "demo", "backfill", "rollback", "tune"}


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
    # every asset but the on-demand ones: the hyperparameter search, the text encoder's fine-tuning
    every_asset = set(definitions.resolve_all_asset_keys()) - {dg.AssetKey(a) for a in automation.ON_DEMAND_ASSETS}
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


def test_weekly_tuning_schedule_runs_model_tuning_alone_and_starts_stopped(definitions):
    schedule = definitions.resolve_schedule_def("weekly_model_tuning")
    assert schedule.cron_schedule == "0 3 * * 0" and schedule.execution_timezone == "UTC"
    assert schedule.default_status == dg.DefaultScheduleStatus.STOPPED
    job = definitions.resolve_job_def(schedule.job_name)
    assert {k.to_user_string() for k in job.asset_layer.executable_asset_keys} == {"model_tuning"}
    assert definitions.get_assets_def("model_tuning").partitions_def is None


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


def test_the_model_of_a_day_reads_the_interactions_up_to_that_day_or_its_window(monkeypatch):
    """What the UI's lineage shows for a model partition: every interactions partition up to its day, or the
    RECSYS_TRAINING_WINDOW_DAYS days ending with it; the catalog as of that day."""
    import dagster as dg

    from recsys_pipeline.assets.model import _training_window
    from recsys_pipeline.definitions import build_definitions

    def parents(graph, asset: str, day: str) -> dict[str, list[str]]:
        found = graph.get_parents_partitions(dg.AssetKey(asset), day).parent_partitions
        out: dict[str, list[str]] = {}
        for parent in found:
            out.setdefault(parent.asset_key.to_user_string(), []).append(parent.partition_key)
        return {k: sorted(v) for k, v in out.items()}

    graph = build_definitions().resolve_asset_graph()
    every = parents(graph, "recommender_model", "1996-04-02")
    assert every["interactions"] == ["1996-03-29", "1996-03-30", "1996-03-31", "1996-04-01", "1996-04-02"]
    assert every["item_features"] == ["1996-04-02"]
    assert len(parents(graph, "model_evaluation", "2018-09-24")["interactions"]) == 8215  # every day of the data
    monkeypatch.setenv("RECSYS_TRAINING_WINDOW_DAYS", "7")
    windowed = parents(build_definitions().resolve_asset_graph(), "recommender_model", "2018-09-24")
    assert windowed["interactions"] == [f"2018-09-{d}" for d in range(18, 25)]
    since, until = _training_window(date(2018, 9, 24), 7)
    assert (since, until) == (datetime(2018, 9, 18), datetime(2018, 9, 25))  # what training reads: [since, until)
    assert _training_window(date(2018, 9, 24), None) == (None, datetime(2018, 9, 25))


def test_model_tuning_is_outside_the_daily_model_group(definitions):
    """ "Materialize all" on the UI's model group backfills days: the search, unpartitioned, must not be in it."""
    groups = {
        k.to_user_string(): definitions.get_assets_def(k).group_names_by_key[k]
        for k in definitions.resolve_all_asset_keys()
    }
    assert {name for name, group in groups.items() if group == "model"} == set(automation.MODEL_ASSETS)
    assert groups["model_tuning"] == "tuning" and groups["text_encoder_adaptation"] == "tuning"
    adaptation = definitions.resolve_job_def(automation.ADAPTATION_JOB)
    assert {k.to_user_string() for k in adaptation.asset_layer.executable_asset_keys} == {"text_encoder_adaptation"}
    assert definitions.get_assets_def("text_encoder_adaptation").partitions_def is None
