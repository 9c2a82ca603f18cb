"""The nightly schedule asks for yesterday's partition of the whole-graph job."""

from datetime import datetime, timezone

import dagster as dg


def test_nightly_tick_requests_yesterdays_partition():
    from recsys_pipeline.definitions import defs

    schedule = defs.resolve_schedule_def("nightly_retrain")
    context = dg.build_schedule_context(scheduled_execution_time=datetime(2024, 5, 3, 2, 0, tzinfo=timezone.utc))
    result = schedule.evaluate_tick(context)
    assert [r.partition_key for r in result.run_requests] == ["2024-05-02"]
    assert schedule.job_name == "recsys_pipeline_job"
