from datetime import datetime

import duckdb
import numpy as np
import pandas as pd
import pytest

from recsys_pipeline.data import warehouse


@pytest.fixture
def con(tmp_path):
    with warehouse.session(tmp_path / "w.duckdb") as c:
        yield c


def events(day: str, n: int) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "user_id": [f"u{i}" for i in range(n)],
            "item_id": "1",
            "timestamp": pd.Timestamp(day) + pd.to_timedelta(range(n), unit="h"),
            "value": 1.0,
        }
    )


def test_replace_window_is_idempotent_and_exact(con):
    day1, day2 = (datetime(2020, 1, 1), datetime(2020, 1, 2)), (datetime(2020, 1, 2), datetime(2020, 1, 3))
    warehouse.replace_window(con, "interactions", "timestamp", *day2, events("2020-01-02", 5))
    for _ in range(3):
        warehouse.replace_window(con, "interactions", "timestamp", *day1, events("2020-01-01", 24))
        assert warehouse.row_count(con, "interactions") == 29
    # the next day's rows are untouched by re-writing day 1
    n_day2 = con.execute("SELECT count(*) FROM interactions WHERE timestamp >= ?", [day2[0]]).fetchall()[0][0]
    assert n_day2 == 5


def test_failed_write_leaves_previous_state(con):
    warehouse.replace_window(
        con, "interactions", "timestamp", datetime(2020, 1, 1), datetime(2020, 1, 2), events("2020-01-01", 3)
    )
    broken = events("2020-01-01", 2).assign(user_id=None)  # violates NOT NULL after the DELETE ran
    with pytest.raises(duckdb.ConstraintException, match="NOT NULL"):
        warehouse.replace_window(con, "interactions", "timestamp", datetime(2020, 1, 1), datetime(2020, 1, 2), broken)
    assert warehouse.row_count(con, "interactions") == 3


def test_sync_embeddings_encodes_only_new_or_changed(con):
    calls = []

    def encode(positions):
        calls.append(list(positions))
        return np.full((len(positions), 3), float(len(calls)), dtype=np.float32)

    first = warehouse.sync_embeddings(con, "text_embeddings", "m1", ["a", "b"], ["h1", "h2"], encode)
    again = warehouse.sync_embeddings(con, "text_embeddings", "m1", ["a", "b"], ["h1", "h2"], encode)
    changed = warehouse.sync_embeddings(con, "text_embeddings", "m1", ["a", "b", "c"], ["h1", "h2x", "h3"], encode)
    assert (first["encoded"], again["encoded"], changed["encoded"]) == (2, 0, 2)
    assert calls == [[0, 1], [1, 2]]
    other_model = warehouse.sync_embeddings(con, "text_embeddings", "m2", ["a"], ["h1"], encode)
    assert other_model == {"encoded": 1, "reused": 0, "removed": 3, "total": 1}
    rows = con.execute("SELECT item_id, model_id, embedding FROM text_embeddings").fetchall()
    assert rows == [("a", "m2", (3.0, 3.0, 3.0))]


def daily_lists(day: str, users: int, version: str = "1") -> pd.DataFrame:
    """``recommendations`` rows of UTC day ``day``: ``users`` users x 2 ranks."""
    return pd.DataFrame(
        {
            "partition_date": pd.Timestamp(day).date(),
            "user_id": np.repeat([f"u{i}" for i in range(users)], 2),
            "rank": np.tile([1, 2], users),
            "item_id": "i",
            "score": 0.5,
            "strategy": "personalized",
            "model_run_id": f"run-{version}",
            "model_version": version,
            "produced_on": pd.Timestamp(day).date(),
            "model_partition_date": None,
            "explanation": None,
        }
    )


def per_day(con) -> dict[str, int]:
    rows = con.execute("SELECT strftime(partition_date, '%Y-%m-%d'), count(*) FROM recommendations GROUP BY 1")
    return dict(rows.fetchall())


def test_replace_partition_replaces_one_day_and_keeps_the_others(con):
    from datetime import date

    from recsys_pipeline.data.schema import RECOMMENDATIONS

    for day, users in (("2020-01-01", 3), ("2020-01-02", 4)):
        written = warehouse.replace_partition(con, RECOMMENDATIONS, date.fromisoformat(day), daily_lists(day, users))
        assert written == {"rows": 2 * users, "days_deleted": 0, "rows_deleted": 0}
    for _ in range(2):  # re-materializing a day: that day's new rows, no duplicates, the other day untouched
        warehouse.replace_partition(con, RECOMMENDATIONS, date(2020, 1, 1), daily_lists("2020-01-01", 5, "2"))
        assert per_day(con) == {"2020-01-01": 10, "2020-01-02": 8}
    assert con.execute(
        "SELECT DISTINCT model_version FROM recommendations WHERE partition_date = '2020-01-01'"
    ).fetchall() == [("2",)]
    with pytest.raises(ValueError, match=r"rows of \[datetime.date\(2020, 1, 2\)\] given for the partition 2020-01-01"):
        warehouse.replace_partition(con, RECOMMENDATIONS, date(2020, 1, 1), daily_lists("2020-01-02", 1))
    assert warehouse.partition_days(con, "recommendations") == [date(2020, 1, 1), date(2020, 1, 2)]


def test_retention_counts_back_from_the_day_written(con):
    from datetime import date, timedelta

    from recsys_pipeline.data.schema import RECOMMENDATIONS

    first = date(2020, 1, 1)
    for n in range(5):
        day = first + timedelta(days=n)
        warehouse.replace_partition(con, RECOMMENDATIONS, day, daily_lists(day.isoformat(), 1), keep_days=10)
    # keep 3 days ending with 2020-01-05: 01-03, 01-04, 01-05; two older days (4 rows) go
    written = warehouse.replace_partition(
        con, RECOMMENDATIONS, date(2020, 1, 5), daily_lists("2020-01-05", 1), keep_days=3
    )
    assert written == {"rows": 2, "days_deleted": 2, "rows_deleted": 4}
    assert sorted(per_day(con)) == ["2020-01-03", "2020-01-04", "2020-01-05"]
    # an older day written again is kept (retention counts back from it), and deletes nothing newer
    old = warehouse.replace_partition(con, RECOMMENDATIONS, first, daily_lists("2020-01-01", 1), keep_days=3)
    assert old["days_deleted"] == 0 and sorted(per_day(con)) == ["2020-01-01", "2020-01-03", "2020-01-04", "2020-01-05"]


def test_a_table_of_an_older_release_gets_its_partition_column(con):
    from datetime import date

    from recsys_pipeline.data.schema import RECOMMENDATIONS

    old = daily_lists("2019-12-31", 2).drop(columns=["partition_date", "model_partition_date", "explanation"])
    con.execute(  # what the release before daily partitions wrote: one whole set of lists, no partition_date
        "CREATE TABLE recommendations (user_id VARCHAR NOT NULL, rank BIGINT NOT NULL, item_id VARCHAR NOT NULL, "
        "score FLOAT NOT NULL, strategy VARCHAR NOT NULL, model_run_id VARCHAR NOT NULL, "
        "model_version VARCHAR NOT NULL, produced_on DATE NOT NULL)"
    )
    warehouse.insert_frame(con, "recommendations", old)
    warehouse.replace_partition(con, RECOMMENDATIONS, date(2020, 1, 1), daily_lists("2020-01-01", 3))
    # the old lists carry no day of the data (produced_on is the wall clock's): dropped, not dated after every day
    assert per_day(con) == {"2020-01-01": 6}
