from datetime import datetime

import pandas as pd

from recsys_pipeline.data.catalog import build_item_catalog
from recsys_pipeline.data.cleaning import clean_events, parse_timestamps

DAY = (datetime(2020, 1, 1), datetime(2020, 1, 2))


def raw(rows):
    frame = pd.DataFrame(rows, columns=["user_id", "item_id", "timestamp_raw", "value_raw"])
    frame.insert(0, "partition_date", pd.Timestamp("2020-01-01"))
    frame["source"] = "f.csv"
    frame["source_row"] = range(len(frame))
    return frame


def test_partition_boundaries_and_offsets():
    ts = parse_timestamps(
        pd.Series(
            [
                "2020-01-01T23:59:59.999Z",
                "2020-01-02T00:00:00Z",
                "2020-01-01T12:00:00+05:00",
                "1577836800",
                "garbage",
                None,
            ]
        )
    )
    assert ts.tolist()[:4] == [
        pd.Timestamp("2020-01-01 23:59:59.999"),
        pd.Timestamp("2020-01-02"),
        pd.Timestamp("2020-01-01 07:00"),
        pd.Timestamp("2020-01-01"),
    ]
    assert ts.isna().tolist()[4:] == [True, True]
    good, bad = clean_events(
        raw([["u", "1", "2020-01-01T23:59:59.999Z", "1"], ["u", "2", "2020-01-02T00:00:00Z", "1"]]), *DAY
    )
    assert good["item_id"].tolist() == ["1"]
    assert bad["reason"].tolist() == ["timestamp outside partition"]


def test_every_bad_row_is_quarantined_with_its_reason():
    rows = [
        ["u1", "1", "2020-01-01T10:00:00Z", "4"],  # good
        ["", "1", "2020-01-01T10:00:00Z", "4"],  # missing user
        [" u1 ", None, "2020-01-01T10:00:00Z", "4"],  # missing item
        ["u1", "1", "not a time", "4"],  # unparseable
        ["u1", "1", "2020-01-01T10:00:00Z", "4"],  # duplicate of row 0
        ["u2", "1", "2020-01-01T11:00:00Z", "nan"],  # invalid value
        ["u2", "x" * 300, "2020-01-01T11:00:00Z", "1"],  # id too long
        ["u3", "999", "2020-01-01T11:00:00Z", "1"],  # unknown item
        ["u'); DROP TABLE interactions;--", "1", "2020-01-01T12:00:00Z", None],  # odd id, kept as text; value 1.0
        ["u4", "1", "99999999999999", "1"],  # far future epoch: unparseable
    ]
    good, bad = clean_events(raw(rows), *DAY, known_items={"1", "2"})
    assert len(good) + len(bad) == len(rows)
    assert good["user_id"].tolist() == ["u1", "u'); DROP TABLE interactions;--"]
    assert good["value"].tolist() == [4.0, 1.0]
    assert dict(zip(bad["source_row"], bad["reason"])) == {
        1: "missing user_id",
        2: "missing item_id",
        3: "unparseable timestamp",
        4: "duplicate event",
        5: "invalid value",
        6: "id too long",
        7: "unknown item",
        9: "unparseable timestamp",
    }


def test_catalog_year_genres_tags_and_text():
    items = pd.DataFrame(
        {
            "item_id": ["1", "2"],
            "title": ["Toy Story (1995)", "No Year"],
            "genres": ["Animation|Comedy", ""],
            "extra_text": ["", ""],
            "image_uri": [None, None],
            "audio_uri": [None, None],
        }
    )
    tags = pd.DataFrame({"item_id": ["1", "1", "1"], "tag": ["Pixar", "pixar ", "fun"]})
    cat = build_item_catalog(items, tags)
    assert cat["year"].tolist()[0] == 1995 and pd.isna(cat["year"].tolist()[1])
    assert cat["genres"].tolist() == [["Animation", "Comedy"], []]
    assert cat["tags_text"].tolist() == ["pixar, fun", ""]
    # the users' tags are kept but stay out of the encoded text unless asked: a new item has none yet
    assert cat["text"].tolist()[0] == "Toy Story (1995). Genres: Animation, Comedy."
    tagged = build_item_catalog(items, tags, tags_in_text=True)
    assert tagged["text"].tolist()[0] == "Toy Story (1995). Genres: Animation, Comedy. Tags: pixar, fun."


def test_rows_must_fall_on_their_own_partition_day_even_in_a_range_run():
    frame = raw([["u1", "1", "2020-01-01T10:00:00Z", "1"], ["u1", "2", "2020-01-02T10:00:00Z", "1"]])
    # both rows come from the 2020-01-01 file; the run covers two days
    good, bad = clean_events(frame, datetime(2020, 1, 1), datetime(2020, 1, 3))
    assert good["item_id"].tolist() == ["1"]
    assert bad["reason"].tolist() == ["timestamp outside partition"]
