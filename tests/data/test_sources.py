from datetime import date, datetime

import pandas as pd
import pytest

from recsys_pipeline.data.sources import DailyFileSource, MovieLensSource, SourceError


def test_bundled_movielens_counts_and_dates():
    source = MovieLensSource()
    assert source.first_date() == date(1996, 3, 29)
    assert source.last_date() == date(2018, 9, 24)
    events = source.read_events(datetime(1996, 1, 1), datetime(2019, 1, 1))
    assert len(events) == 100_836
    items, tags = source.read_catalog()
    assert len(items) == 9_742 and len(tags) == 3_683
    assert items.loc[items["item_id"] == "1", "title"].item() == "Toy Story (1995)"


def test_movielens_window_is_half_open_utc_day():
    source = MovieLensSource()
    day = source.read_events(datetime(2018, 9, 24), datetime(2018, 9, 25))
    ts = pd.to_datetime(day["timestamp_raw"].astype(int), unit="s")
    assert len(day) > 0
    assert ts.min() >= pd.Timestamp("2018-09-24") and ts.max() < pd.Timestamp("2018-09-25")
    assert source.read_events(datetime(2018, 9, 25), datetime(2018, 9, 26)).empty


def test_ml1m_and_ml100k_layouts(tmp_path):
    ml1m = tmp_path / "ml-1m"
    ml1m.mkdir()
    (ml1m / "ratings.dat").write_text("1::10::5::978300760\n2::10::3::978300761\n")
    (ml1m / "movies.dat").write_text("10::GoldenEye (1995)::Action|Adventure|Thriller\n", encoding="latin-1")
    s = MovieLensSource(ml1m)
    assert len(s.read_events(datetime(2000, 12, 31), datetime(2001, 1, 2))) == 2
    assert s.read_catalog()[0]["genres"].item() == "Action|Adventure|Thriller"

    ml100k = tmp_path / "ml-100k"
    ml100k.mkdir()
    (ml100k / "u.data").write_text("196\t242\t3\t881250949\n")
    flags = "|".join(["0", "0", "0", "1", "1", "1"] + ["0"] * 13)
    (ml100k / "u.item").write_text(f"242|Kolya (1996)|24-Jan-1997||http://x|{flags}\n", encoding="latin-1")
    s = MovieLensSource(ml100k)
    assert s.first_date() == date(1997, 12, 4)
    assert s.read_catalog()[0]["genres"].item() == "Animation|Children|Comedy"


def test_movielens_bad_timestamp_is_a_clear_error(tmp_path):
    (tmp_path / "ratings.csv").write_text("userId,movieId,rating,timestamp\n1,1,4.0,notatime\n")
    with pytest.raises(SourceError, match="not epoch seconds"):
        MovieLensSource(tmp_path).first_date()
    with pytest.raises(SourceError, match="MovieLens folder not found"):
        MovieLensSource(tmp_path / "missing").first_date()
    (tmp_path / "empty").mkdir()
    with pytest.raises(SourceError, match="no ratings.csv"):
        MovieLensSource(tmp_path / "empty").first_date()


def test_daily_files_csv_jsonl_parquet(tmp_path):
    events = tmp_path / "events"
    events.mkdir()
    (events / "2024-01-05.csv").write_text("user_id,item_id,timestamp,value\nu1,a,2024-01-05T10:00:00Z,1\n")
    (events / "2024-01-06.jsonl").write_text('{"user_id": "u2", "item_id": "b", "timestamp": "2024-01-06T01:00:00Z"}\n')
    pd.DataFrame({"user_id": ["u3"], "item_id": ["a"], "timestamp": ["2024-01-07T00:00:00Z"]}).to_parquet(
        events / "2024-01-07.parquet"
    )
    (events / "notes.txt").write_text("ignored")
    catalog = tmp_path / "items.csv"
    catalog.write_text("item_id,title,description,image_uri\na,Alpha,first item,a.jpg\nb,Beta,,\n")
    source = DailyFileSource(events, catalog)
    assert (source.first_date(), source.last_date()) == (date(2024, 1, 5), date(2024, 1, 7))
    got = source.read_events(datetime(2024, 1, 5), datetime(2024, 1, 7))
    assert got["user_id"].tolist() == ["u1", "u2"]
    assert got["value_raw"].tolist() == ["1", None]
    assert got["source"].tolist() == ["2024-01-05.csv", "2024-01-06.jsonl"]
    items, _ = source.read_catalog()
    assert items["extra_text"].tolist() == ["first item", ""]
    assert items["image_uri"].tolist()[0] == "a.jpg"


def test_daily_files_missing_column_is_a_clear_error(tmp_path):
    events = tmp_path / "events"
    events.mkdir()
    (events / "2024-01-05.csv").write_text("user,item_id,timestamp\nu1,a,2024-01-05T10:00:00Z\n")
    source = DailyFileSource(events, tmp_path / "items.csv")
    with pytest.raises(SourceError, match=r"missing column\(s\) \['user_id'\]"):
        source.read_events(datetime(2024, 1, 5), datetime(2024, 1, 6))
    with pytest.raises(SourceError, match="catalog file not found"):
        source.read_catalog()


def test_daily_files_edge_cases_are_clear(tmp_path):
    events = tmp_path / "events"
    events.mkdir()
    (events / "2024-01-05.csv").write_bytes(b"")  # a day without events
    (events / "2024-01-06.csv").write_bytes(b"user_id,item_id,timestamp\ncaf\xe9,a,2024-01-06T10:00:00Z\n")
    source = DailyFileSource(events, tmp_path / "items.csv")
    assert source.read_events(datetime(2024, 1, 5), datetime(2024, 1, 6)).empty
    bad = source.read_events(datetime(2024, 1, 6), datetime(2024, 1, 7))  # non-UTF-8: kept as a bad line, not U+FFFD
    assert bad[["user_id", "parse_error", "raw_line"]].values.tolist() == [
        [None, "not UTF-8 (byte 3)", "caf\\xe9,a,2024-01-06T10:00:00Z"]
    ]
    (events / "2024-13-01.csv").write_text("user_id,item_id,timestamp\n")
    assert source.first_date() == date(2024, 1, 6)  # the empty day and the impossible date are not ingestable
    assert {r.name: r.reason for r in source.scan().rejections} == {
        "2024-01-05.csv": "empty_file",
        "2024-13-01.csv": "impossible_date",
    }
