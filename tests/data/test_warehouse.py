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
