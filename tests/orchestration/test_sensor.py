"""The landing-folder sensor: one run request per new or changed day, nothing for unchanged files."""

import json
import os
import time

import dagster as dg
import pandas as pd
import pytest

from recsys_pipeline import automation
from recsys_pipeline.resources import SourceResource

EVENTS = "user_id,item_id,timestamp,value\nu1,i1,{day}T10:00:00Z,4.0\n"


def write_day(folder, name, age_seconds=3600.0, text=None):
    path = folder / name
    path.write_text(text or EVENTS.format(day=name[:10]))
    old = time.time() - age_seconds
    os.utime(path, (old, old))
    return path


@pytest.fixture
def tick(definitions):
    """``tick(folder, cursor=None)``: one evaluation of ``landing_events`` on the daily-files folder."""
    sensor = definitions.resolve_sensor_def("landing_events")

    def evaluate(folder, cursor=None):
        source = SourceResource(kind="daily_files", events_dir=str(folder), catalog_path=str(folder / "items.csv"))
        context = dg.build_sensor_context(cursor=cursor, resources={"source": source}, definitions=definitions)
        return sensor.evaluate_tick(context)

    return evaluate


def test_new_days_are_requested_once_and_changed_files_again(tmp_path, capfd, tick, definitions):
    write_day(tmp_path, "2018-09-01.csv")
    write_day(tmp_path, "2018-09-02.jsonl", text='{"user_id": "u1", "item_id": "i1", "timestamp": 1535882400}\n')
    write_day(tmp_path, "1990-01-01.csv")  # before the first partition (conftest: 1996-03-29)
    write_day(tmp_path, "2999-01-01.csv")  # not a partition yet
    write_day(tmp_path, "2018-09-03.csv", age_seconds=0)  # still being written
    (tmp_path / "notes.txt").write_text("not an event file")

    first = tick(tmp_path)
    assert [r.partition_key for r in first.run_requests] == ["2018-09-01", "2018-09-02"]
    assert all(r.run_key.startswith(r.partition_key + ":") for r in first.run_requests)
    assert all(r.tags[automation.ORIGIN_TAG] == automation.ORIGIN_SENSOR == "sensor" for r in first.run_requests)
    logged = capfd.readouterr().err
    assert "skipping 1990-01-01.csv: 1990-01-01 is not a partition" in logged
    assert "rejected landing file 2999-01-01.csv: future_date: 2999-01-01 is not over yet" in logged
    assert "rejected landing file notes.txt: not_a_daily_file" in logged
    assert "2018-09-03: ['2018-09-03.csv'] modified in the last 30 s" in logged
    for request in first.run_requests:  # the partition keys and job resolve against the real job
        assert definitions.resolve_job_def("ingest_events_job").partitions_def.has_partition_key(request.partition_key)

    write_day(tmp_path, "2018-09-03.csv")  # finished writing
    second = tick(tmp_path, first.cursor)
    assert [r.partition_key for r in second.run_requests] == ["2018-09-03"]
    logged = capfd.readouterr().err
    assert "skipping" not in logged and "rejected" not in logged  # logged once, not every tick

    third = tick(tmp_path, second.cursor)
    assert third.run_requests == [] and json.loads(third.cursor) == json.loads(second.cursor)

    write_day(
        tmp_path,
        "2018-09-01.csv",
        age_seconds=60,
        text=EVENTS.format(day="2018-09-01") + "u2,i1,2018-09-01T11:00:00Z,3.0\n",
    )
    fourth = tick(tmp_path, third.cursor)
    assert [r.partition_key for r in fourth.run_requests] == ["2018-09-01"]
    assert fourth.run_requests[0].run_key != first.run_requests[0].run_key


def test_a_second_file_for_a_day_requests_that_day_again(tmp_path, tick):
    write_day(tmp_path, "2018-09-01.csv")
    first = tick(tmp_path)
    pd.DataFrame({"user_id": ["u3"], "item_id": ["i1"], "timestamp": ["2018-09-01T12:00:00Z"]}).to_parquet(
        tmp_path / "2018-09-01.parquet"
    )
    os.utime(tmp_path / "2018-09-01.parquet", (time.time() - 120, time.time() - 120))
    second = tick(tmp_path, first.cursor)
    assert [r.partition_key for r in second.run_requests] == ["2018-09-01"]


@pytest.mark.parametrize(
    "source",
    [
        SourceResource(),
        SourceResource(kind="daily_files", events_dir="/nonexistent", catalog_path="/nonexistent/items.csv"),
    ],
)
def test_nothing_to_watch_is_a_skip_with_its_reason(source, tmp_path, definitions):
    sensor = definitions.resolve_sensor_def("landing_events")
    result = sensor.evaluate_tick(dg.build_sensor_context(resources={"source": source}))
    assert result.run_requests == [] or result.run_requests is None
    assert result.skip_message and ("movielens" in result.skip_message or "not found" in result.skip_message)


def test_sensor_and_schedule_are_registered_stopped(definitions):
    defs = definitions
    sensor = defs.resolve_sensor_def("landing_events")
    assert sensor.job_name == "ingest_events_job"
    assert sensor.default_status == dg.DefaultSensorStatus.STOPPED
    assert defs.resolve_schedule_def("nightly_retrain").default_status == dg.DefaultScheduleStatus.STOPPED
