"""``RecentPopularity``: distinct users per item in a causal window of whole UTC days."""

import numpy as np
import pandas as pd
import pytest

from recsys_pipeline.models.popularity.recent import RecentPopularity, utc_seconds


@pytest.fixture
def counts():
    events = pd.DataFrame(
        {
            "user_id": ["a", "b", "c", "a", "b"],
            "item_id": ["x", "x", "y", "x", "y"],
            "timestamp": pd.to_datetime(
                ["2020-01-01 10:00", "2020-01-02 00:00", "2020-01-05 00:00", "2020-01-06 00:00", "2020-01-06 23:00"]
            ),
        }
    )
    return RecentPopularity.fit(events)


def at(*texts):
    return utc_seconds(pd.to_datetime(list(texts)))


def test_counts_are_distinct_first_interactions_per_day(counts):
    assert list(counts.item_ids) == ["x", "y"]
    # a's second x (2020-01-06) is a repeat: not counted
    np.testing.assert_array_equal(counts.counts.toarray(), [[1, 0], [1, 0], [0, 1], [0, 1]])
    assert counts.newest_day == utc_seconds(pd.to_datetime(["2020-01-06"]))[0] // 86_400


def test_the_window_is_the_days_before_the_time_s_day(counts):
    got = counts.window_counts(at("2020-01-06 12:00", "2020-01-03 00:00"), 3, ["x", "y", "never"])
    # 2020-01-03..05 for the first (b's y at 23:00 the same day is not counted); 2019-12-31..2020-01-02 for the second
    np.testing.assert_array_equal(got, [[0, 1, 0], [2, 0, 0]])
    np.testing.assert_array_equal(counts.window_counts(at("2020-01-06 12:00"), 10, ["x", "y"]), [[2, 1]])
    np.testing.assert_array_equal(counts.window_counts(at("2019-06-01 00:00"), 30, ["x", "y"]), [[0, 0]])


def test_a_time_after_the_data_reads_its_last_days(counts):
    # clamped to the day after the newest (2020-01-07): 2020-01-04..06
    np.testing.assert_array_equal(counts.window_counts(at("2030-01-01 00:00"), 3, ["x", "y"]), [[0, 2]])


def test_save_and_load_round_trip(counts, tmp_path):
    counts.save(tmp_path)
    loaded = RecentPopularity.load(tmp_path)
    times = at("2020-01-06 12:00", "2030-01-01 00:00")
    np.testing.assert_array_equal(
        loaded.window_counts(times, 5, ["y", "x"]), counts.window_counts(times, 5, ["y", "x"])
    )
    assert RecentPopularity.load(tmp_path / "elsewhere") is None


def test_utc_seconds_reads_numbers_naive_and_aware_times():
    assert utc_seconds([1577836800.7]).tolist() == [1577836800]
    assert utc_seconds(pd.to_datetime(["2020-01-01 00:00"])).tolist() == [1577836800]
    paris = pd.Series(pd.to_datetime(["2020-01-01 01:00"])).dt.tz_localize("Europe/Paris")
    assert utc_seconds(paris).tolist() == [1577836800]
    with pytest.raises(ValueError, match="1 missing timestamps"):
        utc_seconds(pd.Series([pd.Timestamp("2020-01-01"), pd.NaT]))


def test_bad_input_is_refused(counts):
    with pytest.raises(ValueError, match="window_days must be >= 1"):
        counts.window_counts(at("2020-01-06 00:00"), 0, ["x"])
    with pytest.raises(ValueError, match="lack \\['timestamp'\\]"):
        RecentPopularity.fit(pd.DataFrame({"user_id": ["a"], "item_id": ["x"]}))
    with pytest.raises(ValueError, match="no interactions"):
        RecentPopularity.fit(pd.DataFrame({"user_id": [], "item_id": [], "timestamp": []}))
