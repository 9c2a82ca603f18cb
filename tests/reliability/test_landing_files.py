"""Landing files that cannot be ingested (impossible date, future date, empty file, unreadable name, other names)
never stop the code location or the other days: each is a ``landing_rejections`` row with its reason, counted in
the sensor tick and the ``raw_events`` metadata; the partitions never extend past yesterday (UTC), and
``recsys demo`` and ``recsys backfill`` agree on the range."""

import os
import time
from datetime import UTC, date, datetime, timedelta
from types import SimpleNamespace

import dagster as dg
import pytest

from recsys_pipeline import cli
from recsys_pipeline.data import warehouse
from recsys_pipeline.data.schema import LANDING_REJECTIONS
from recsys_pipeline.data.sources import DailyFileSource, listed_days, scan_landing_folder
from recsys_pipeline.definitions import build_definitions
from recsys_pipeline.resources import resources_for_home

pytestmark = pytest.mark.reliability

EVENTS = "user_id,item_id,timestamp\nu1,a,{day}T10:00:00Z\nu2,a,{day}T11:00:00Z\n"
UNREADABLE = b"2024-01-0\xff.csv"  # not UTF-8: the file system hands Python a surrogate escape


def hostile_folder(root):
    """Two good days, and one entry of every kind that cannot be ingested; an hour old (settled)."""
    events = root / "events"
    events.mkdir()
    for day in ("2024-01-05", "2024-01-06"):
        (events / f"{day}.csv").write_text(EVENTS.format(day=day))
    (events / "2024-02-30.csv").write_text(EVENTS.format(day="2024-02-28"))  # impossible date
    (events / "2099-01-01.csv").write_text(EVENTS.format(day="2024-01-05"))  # a copy, future-dated
    (events / "2024-01-07.csv").write_bytes(b"")  # empty
    with open(os.path.join(os.fsencode(events), UNREADABLE), "wb") as handle:
        handle.write(EVENTS.format(day="2024-01-08").encode())
    (events / "notes.txt").write_text("not an event file")
    (root / "items.csv").write_text("item_id,title\na,Alpha\n")
    old = time.time() - 3600
    for path in events.iterdir():
        os.utime(path, (old, old))
    return events


EXPECTED = {
    "2024-01-0\\xff.csv": "unreadable_name",
    "2024-01-07.csv": "empty_file",
    "2024-02-30.csv": "impossible_date",
    "2099-01-01.csv": "future_date",
    "notes.txt": "not_a_daily_file",
}


def test_the_scan_keeps_good_days_and_names_every_rejection(tmp_path):
    events = hostile_folder(tmp_path)
    scan = scan_landing_folder(events, today=date(2024, 3, 1))
    assert sorted(scan.files) == [date(2024, 1, 5), date(2024, 1, 6)]
    assert {r.name: r.reason for r in scan.rejections} == EXPECTED
    by_name = {r.name: r for r in scan.rejections}
    assert by_name["2024-02-30.csv"].detail == "2024-02-30 is not a real date (YYYY-MM-DD)"
    assert by_name["2024-01-07.csv"].size_bytes == 0
    assert scan.reason_counts() == dict.fromkeys(EXPECTED.values(), 1)
    # the day itself is not over: today's file waits, like a future one
    (events / "2024-03-01.csv").write_text(EVENTS.format(day="2024-03-01"))
    today = scan_landing_folder(events, today=date(2024, 3, 1))
    assert {r.name: r.reason for r in today.rejections}["2024-03-01.csv"] == "future_date"
    assert listed_days(events, today=date(2024, 3, 1)) == [date(2024, 1, 5), date(2024, 1, 6)]
    (events / "2024-03-01.csv").unlink()
    source = DailyFileSource(events, tmp_path / "items.csv")
    assert (source.first_date(), source.last_date()) == (date(2024, 1, 5), date(2024, 1, 6))
    assert source.read_events(datetime(2024, 1, 7), datetime(2024, 1, 8)).empty  # the empty day: no rows
    frame = scan.rejections_frame(datetime(2024, 3, 1, 12))
    assert list(frame.columns) == LANDING_REJECTIONS.column_names
    with warehouse.session(tmp_path / "w.duckdb") as con:  # every name fits the declared VARCHAR columns
        warehouse.replace_table(con, LANDING_REJECTIONS, frame)
        assert warehouse.row_count(con, "landing_rejections") == 5


@pytest.fixture
def hostile_env(tmp_path, monkeypatch):
    events = hostile_folder(tmp_path)
    monkeypatch.setenv("RECSYS_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("RECSYS_SOURCE_KIND", "daily_files")
    monkeypatch.setenv("RECSYS_EVENTS_DIR", str(events))
    monkeypatch.setenv("RECSYS_CATALOG_PATH", str(tmp_path / "items.csv"))
    return SimpleNamespace(events=events, home=tmp_path / "home")


def test_the_code_location_loads_and_the_other_days_ingest(hostile_env):
    defs = build_definitions()  # what `dagster asset list` and the UI load
    partitions = defs.get_assets_def("raw_events").partitions_def
    yesterday = (datetime.now(UTC).date() - timedelta(days=1)).isoformat()
    assert partitions.get_first_partition_key() == "2024-01-05"
    assert partitions.get_last_partition_key() == yesterday  # never 2099-01-01
    assert not partitions.has_partition_key("2099-01-01")

    sensor = defs.resolve_sensor_def("landing_events")
    resources = resources_for_home(str(hostile_env.home))
    tick = sensor.evaluate_tick(dg.build_sensor_context(resources=resources, definitions=defs))
    assert [r.partition_key for r in tick.run_requests] == ["2024-01-05", "2024-01-06"]
    assert {r.tags["recsys/landing_rejections"] for r in tick.run_requests} == {"5"}
    again = sensor.evaluate_tick(dg.build_sensor_context(cursor=tick.cursor, resources=resources, definitions=defs))
    assert again.run_requests == []
    assert again.skip_message == (
        "no new or changed day; 5 landing file(s) rejected: empty_file 1, future_date 1, impossible_date 1, "
        "not_a_daily_file 1, unreadable_name 1"
    )

    ingest = [defs.get_assets_def(k) for k in ("item_catalog", "raw_events", "interactions")]
    assert dg.materialize(ingest[:1], resources=resources, partition_key="2024-01-06").success
    result = dg.materialize(ingest, resources=resources, partition_key="2024-01-06", selection=ingest[1:])
    assert result.success
    meta = result.asset_materializations_for_node("raw_events")[0].metadata
    assert meta["dagster/partition_row_count"].value == 2 and meta["landing_rejections"].value == 5
    assert meta["landing_rejection_reasons"].value == dict.fromkeys(EXPECTED.values(), 1)
    with warehouse.session(resources_for_home(str(hostile_env.home))["warehouse_db"].path, read_only=True) as con:
        rows = dict(con.execute("SELECT file_name, reason FROM landing_rejections").fetchall())
        assert rows == EXPECTED
        assert warehouse.row_count(con, "interactions") == 2


def test_demo_and_backfill_agree_on_the_range(hostile_env, monkeypatch):
    ran = []
    monkeypatch.setattr(
        cli, "_run", lambda selection, label, first=None, last=None, **_: ran.append((first, last)) or {}
    )
    monkeypatch.setattr(cli, "_prepare_home", lambda home: cli._paths(home))
    cli.run_demo()
    # the data's days, not 2099-01-01: ingestion over every day, then content and model for the last day
    assert ran == [("2024-01-05", "2024-01-06"), ("2024-01-06", "2024-01-06")]
    args = SimpleNamespace(start="2024-01-05", end="2024-01-06", downstream=False, home=None)
    cli.backfill(args)
    assert ran[-1] == ("2024-01-05", "2024-01-06")
    for end in ("2099-01-01", datetime.now(UTC).date().isoformat()):
        with pytest.raises(ValueError, match=f"--end {end} is not a daily partition: .* to yesterday"):
            cli.run_demo(start="2024-01-05", end=end)
        with pytest.raises(ValueError, match=f"--end {end} is not a daily partition: .* to yesterday"):
            cli.backfill(SimpleNamespace(start="2024-01-05", end=end, downstream=False, home=None))
