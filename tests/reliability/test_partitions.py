"""Daily partitions are exact UTC days: boundaries, offsets and the local time zone never move a row."""

import time
from datetime import date, datetime

import dagster as dg
import pandas as pd
import pytest

from recsys_pipeline.assets import daily_partitions, ingestion_assets
from recsys_pipeline.data import warehouse
from recsys_pipeline.data.sources import MovieLensSource
from recsys_pipeline.resources import SourceResource, WarehouseResource
from recsys_pipeline.settings import get_settings

raw_events, interactions, item_catalog = ingestion_assets(daily_partitions(get_settings()))

pytestmark = pytest.mark.reliability


def daily_resources(tmp_path, files: dict[str, str]) -> dict:
    events = tmp_path / "events"
    events.mkdir()
    for name, text in files.items():
        (events / name).write_text(text)
    (tmp_path / "items.csv").write_text("item_id,title\na,Alpha\nb,Beta\nc,Gamma\n")
    return {
        "warehouse_db": WarehouseResource(path=str(tmp_path / "w.duckdb")),
        "source": SourceResource(kind="daily_files", events_dir=str(events), catalog_path=str(tmp_path / "items.csv")),
    }


def ingest(resources, partition_key: str) -> dg.ExecuteInProcessResult:
    result = dg.materialize(
        [raw_events, interactions, item_catalog],
        resources=resources,
        partition_key=partition_key,
        selection=[raw_events, interactions],
    )
    assert result.success
    return result


def rows_by_day(path) -> dict[str, list[tuple]]:
    with warehouse.session(path, read_only=True) as con:
        rows = con.execute("SELECT user_id, item_id, timestamp FROM interactions ORDER BY ALL").fetchall()
    out: dict[str, list[tuple]] = {}
    for user, item, ts in rows:
        out.setdefault(ts.date().isoformat(), []).append((user, item, ts))
    return out


HEADER = "user_id,item_id,timestamp\n"
JUNE_30 = HEADER + (
    "u1,a,2018-06-30T00:00:00Z\n"  # first instant of the day
    "u2,a,2018-06-30T23:59:59.999Z\n"  # last millisecond of the day
    "u3,b,2018-07-01T01:30:00+02:00\n"  # 23:30 UTC on June 30
    "u4,b,1530403199\n"  # epoch seconds: 2018-06-30 23:59:59 UTC
    "u5,c,2018-06-30T19:00:00-05:00\n"  # 2018-07-01 00:00 UTC: the next day, quarantined here
)
JULY_1 = HEADER + (
    "u1,b,2018-07-01T00:00:00Z\n"
    "u2,b,1530403200\n"  # 2018-07-01 00:00:00 UTC
    "u3,c,2018-07-01T00:00:00.000+00:00\n"
    "u4,c,2018-07-01T02:00:00+02:00\n"  # 00:00 UTC
)


def test_boundaries_and_offsets_land_in_their_own_utc_day(tmp_path):
    resources = daily_resources(tmp_path, {"2018-06-30.csv": JUNE_30, "2018-07-01.csv": JULY_1})
    assert dg.materialize(
        [item_catalog], resources=resources, partition_key=item_catalog.partitions_def.get_last_partition_key()
    ).success
    june = ingest(resources, "2018-06-30").asset_materializations_for_node("interactions")[0].metadata
    ingest(resources, "2018-07-01")
    days = rows_by_day(tmp_path / "w.duckdb")
    assert sorted(days) == ["2018-06-30", "2018-07-01"]
    assert [(u, str(ts)) for u, _, ts in days["2018-06-30"]] == [
        ("u1", "2018-06-30 00:00:00"),
        ("u2", "2018-06-30 23:59:59.999000"),
        ("u3", "2018-06-30 23:30:00"),
        ("u4", "2018-06-30 23:59:59"),
    ]
    assert [str(ts) for *_, ts in days["2018-07-01"]] == ["2018-07-01 00:00:00"] * 4
    assert june["quarantined"].value == 1
    assert june["quarantine_reasons"].value == {"timestamp outside partition": 1}

    # Re-running June 30 alone must neither delete nor duplicate any July 1 row (a DATE column compared with a
    # timestamp string, or an inclusive end, would touch the next day).
    before = rows_by_day(tmp_path / "w.duckdb")
    ingest(resources, "2018-06-30")
    assert rows_by_day(tmp_path / "w.duckdb") == before
    with warehouse.session(tmp_path / "w.duckdb", read_only=True) as con:
        raw = dict(
            con.execute("SELECT CAST(partition_date AS VARCHAR), count(*) FROM raw_events GROUP BY 1").fetchall()
        )
    assert raw == {"2018-06-30": 5, "2018-07-01": 4}


def test_local_time_zone_does_not_shift_partitions(tmp_path, monkeypatch):
    """UTC+14 and UTC-11 process time zones give the same rows as UTC."""
    files = {"2018-06-30.csv": JUNE_30, "2018-07-01.csv": JULY_1}
    results = []
    for n, tz in enumerate(["UTC", "Pacific/Kiritimati", "Pacific/Pago_Pago"]):
        monkeypatch.setenv("TZ", tz)
        time.tzset()
        (tmp_path / str(n)).mkdir()
        resources = daily_resources(tmp_path / str(n), files)
        assert dg.materialize(
            [item_catalog], resources=resources, partition_key=item_catalog.partitions_def.get_last_partition_key()
        ).success
        ingest(resources, "2018-06-30")
        ingest(resources, "2018-07-01")
        results.append(rows_by_day(tmp_path / str(n) / "w.duckdb"))
    monkeypatch.delenv("TZ")
    time.tzset()
    assert results[0] == results[1] == results[2]
    assert [len(results[0][d]) for d in ("2018-06-30", "2018-07-01")] == [4, 4]


def test_replace_window_on_a_date_column_touches_only_that_day(tmp_path):
    """raw_events.partition_date is a DATE; the window is a half-open TIMESTAMP range."""
    frame = pd.DataFrame(
        {
            "partition_date": pd.to_datetime(["2018-06-29", "2018-06-30", "2018-07-01"]),
            "user_id": ["u0", "u1", "u2"],
            "item_id": "a",
            "timestamp_raw": "x",
            "value_raw": None,
            "source": "f",
            "source_row": [0, 1, 2],
        }
    )
    with warehouse.session(tmp_path / "w.duckdb") as con:
        with warehouse.transaction(con, "raw_events"):
            warehouse.insert_frame(con, "raw_events", frame)
        n = warehouse.replace_window(
            con,
            "raw_events",
            "partition_date",
            datetime(2018, 6, 30),
            datetime(2018, 7, 1),
            frame.iloc[[1]].assign(user_id="u1-new"),
        )
        got = con.execute("SELECT CAST(partition_date AS VARCHAR), user_id FROM raw_events ORDER BY 1").fetchall()
    assert n == 1
    assert got == [("2018-06-29", "u0"), ("2018-06-30", "u1-new"), ("2018-07-01", "u2")]


def test_movielens_epoch_boundaries(tmp_path):
    (tmp_path / "ratings.csv").write_text(
        "userId,movieId,rating,timestamp\n1,1,4.0,1530403199\n2,1,4.0,1530403200\n3,1,4.0,1530316800\n"
    )
    source = MovieLensSource(tmp_path)
    assert (source.first_date(), source.last_date()) == (date(2018, 6, 30), date(2018, 7, 1))
    june = source.read_events(datetime(2018, 6, 30), datetime(2018, 7, 1))
    july = source.read_events(datetime(2018, 7, 1), datetime(2018, 7, 2))
    assert june["user_id"].tolist() == ["1", "3"] and july["user_id"].tolist() == ["2"]
