"""Raw events → typed, validated, de-duplicated interactions; every rejected row kept with its reason.

Rules, applied in order (the first failing rule is the row's reason):

==============================  =========================================================
reason                          when
==============================  =========================================================
``malformed … line: …``         the source line could not be parsed (``parse_error``: wrong
                                field count, unbalanced quote, invalid JSON, ``NaN`` in JSON);
                                ``not UTF-8``
``missing user_id``             empty or whitespace-only user id
``missing item_id``             empty or whitespace-only item id
``id too long``                 an id longer than ``MAX_ID_LENGTH`` characters
``missing timestamp``           no timestamp, or an empty one
``unparseable timestamp``       neither epoch seconds nor an ISO-8601 date-time
``timestamp outside partition`` the UTC time is not on the row's partition day ``[day, day + 1)``
``invalid value``               a value that is not a finite number
``unknown item``                an item id absent from the catalog (when a catalog is given)
``item not in catalog yet``     the event's UTC day is before the day its item entered the catalog
                                (``item_catalog.added_at``, when the catalog is given with its days)
``duplicate event``             the same (user_id, item_id, timestamp) seen earlier
==============================  =========================================================

Timestamps given with a UTC offset are converted to UTC; timestamps without one are taken as UTC.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from datetime import date, datetime

import numpy as np
import pandas as pd

from recsys_pipeline.data.schema import INTERACTIONS, QUARANTINE

MAX_ID_LENGTH = 256
INTERACTION_COLUMNS = INTERACTIONS.column_names
QUARANTINE_COLUMNS = QUARANTINE.column_names


def parse_timestamps(raw: pd.Series) -> pd.Series:
    """Parse text timestamps to naive UTC ``datetime64[us]``; NaT where unparseable.

    Integers/decimals are epoch seconds; other text is ISO 8601 (offsets honoured, naive taken as UTC).
    """
    text = raw.astype("string").str.strip()
    numeric = pd.to_numeric(text.where(text.str.fullmatch(r"-?\d+(\.\d+)?", na=False)), errors="coerce")
    out = pd.Series(pd.NaT, index=raw.index, dtype="datetime64[us]")
    is_num = numeric.notna() & np.isfinite(numeric) & (numeric.abs() < 32503680000)  # before year 3000
    if is_num.any():
        out[is_num] = pd.to_datetime(numeric[is_num], unit="s").astype("datetime64[us]")
    rest = ~is_num & text.notna() & ~text.str.fullmatch(r"-?\d+(\.\d+)?", na=False)
    if rest.any():
        parsed = pd.to_datetime(text[rest], utc=True, errors="coerce", format="ISO8601")
        out[rest] = parsed.dt.tz_localize(None).astype("datetime64[us]")
    return out


def clean_events(
    raw: pd.DataFrame,
    window_start: datetime,
    window_end: datetime,
    known_items: Collection[str] | Mapping[str, date] | None = None,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Validate raw events of one partition window.

    Args:
        raw: rows with ``sources.RAW_EVENT_COLUMNS`` (text columns as str/None; ``parse_error`` and ``raw_line``
            may be absent).
        window_start, window_end: the partition's half-open UTC window ``[start, end)``, naive datetimes.
        known_items: catalog item ids (a mapping: each with the UTC day it entered the catalog, and an event of an
            earlier day is quarantined too); events for other items are quarantined. ``None`` skips the check.

    Returns:
        ``(interactions, quarantine)``: interactions with ``user_id, item_id`` (str), ``timestamp``
        (datetime64, naive UTC), ``value`` (float64; 1.0 where the source gave none), sorted by timestamp;
        quarantine with ``QUARANTINE_COLUMNS`` (``stage='interactions'``). ``len(interactions) + len(quarantine)
        == len(raw)``: no row is dropped silently.
    """
    frame = raw.reset_index(drop=True)
    for col in ("parse_error", "raw_line"):
        if col not in frame.columns:
            frame[col] = None
    user = frame["user_id"].astype("string").str.strip()
    item = frame["item_id"].astype("string").str.strip()
    ts = parse_timestamps(frame["timestamp_raw"])
    value_text = frame["value_raw"].astype("string").str.strip()
    value = pd.to_numeric(value_text, errors="coerce").astype("float64")
    no_value = value_text.isna() | (value_text == "")
    value = value.where(~no_value, 1.0)

    reason = pd.Series(pd.NA, index=frame.index, dtype="string")

    def flag(mask: pd.Series, why: str) -> None:
        reason[mask.fillna(True).astype(bool) & reason.isna()] = why

    parse_error = frame["parse_error"].astype("string")
    reason[parse_error.notna()] = parse_error[parse_error.notna()]
    flag(user.isna() | (user == ""), "missing user_id")
    flag(item.isna() | (item == ""), "missing item_id")
    flag((user.str.len() > MAX_ID_LENGTH) | (item.str.len() > MAX_ID_LENGTH), "id too long")
    ts_text = frame["timestamp_raw"].astype("string").str.strip()
    flag(ts_text.isna() | (ts_text == ""), "missing timestamp")
    flag(ts.isna(), "unparseable timestamp")
    # Each row must fall on its own partition's UTC day (not merely inside the run's window), so a day re-run
    # alone deletes and re-inserts exactly the rows a range run gave it.
    day = pd.to_datetime(frame["partition_date"]).astype("datetime64[us]")
    flag((ts < day) | (ts >= day + pd.Timedelta(days=1)), "timestamp outside partition")
    flag((ts < pd.Timestamp(window_start)) | (ts >= pd.Timestamp(window_end)), "timestamp outside partition")
    flag(~np.isfinite(value.fillna(np.nan)), "invalid value")
    if known_items is not None:
        flag(~item.isin(pd.Index(list(known_items), dtype="string")), "unknown item")
    if isinstance(known_items, Mapping):
        added = pd.to_datetime(item.map(lambda i: known_items.get(i) if isinstance(i, str) else None))
        flag((ts.dt.floor("D") < added).fillna(False), "item not in catalog yet")
    valid = reason.isna()
    key = pd.DataFrame({"u": user, "i": item, "t": ts})
    # Duplicates are judged among valid rows only, in source order.
    dup = key[valid].duplicated(keep="first").reindex(frame.index, fill_value=False)
    reason[dup] = "duplicate event"

    good = reason.isna()
    interactions = (
        pd.DataFrame(
            {
                "user_id": user[good].astype(str),
                "item_id": item[good].astype(str),
                "timestamp": ts[good],
                "value": value[good],
            }
        )
        .sort_values(["timestamp", "user_id", "item_id"], kind="stable")
        .reset_index(drop=True)
    )
    bad = ~good
    quarantine = pd.DataFrame(
        {
            "stage": "interactions",
            "partition_date": frame.loc[bad, "partition_date"],
            "reason": reason[bad].astype(str),
            "user_id": frame.loc[bad, "user_id"],
            "item_id": frame.loc[bad, "item_id"],
            "timestamp_raw": frame.loc[bad, "timestamp_raw"],
            "value_raw": frame.loc[bad, "value_raw"],
            "source": frame.loc[bad, "source"],
            "source_row": frame.loc[bad, "source_row"],
            "raw_line": frame.loc[bad, "raw_line"],
        },
        columns=QUARANTINE_COLUMNS,
    ).reset_index(drop=True)
    return interactions, quarantine


def clean_catalog_items(items: pd.DataFrame, source: str) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Split catalog rows into usable items and quarantined rows, each rejected row with its reason.

    Rules, first failing rule wins: ``missing item_id`` (empty or whitespace-only), ``id too long`` (over
    ``MAX_ID_LENGTH`` characters), ``duplicate item_id`` (the first row with an id is kept, later ones are
    quarantined).

    Args:
        items: rows with ``sources.CATALOG_COLUMNS`` as read (text columns str/None).
        source: the catalog's file or folder name, recorded with each quarantined row.

    Returns:
        ``(items, quarantine)``: the kept rows unchanged (index reset); quarantine with ``QUARANTINE_COLUMNS``
        (``stage='item_catalog'``, ``partition_date`` None, ``source_row`` the 0-based catalog row).
        ``len(items) + len(quarantine) == len(input)``.
    """
    frame = items.reset_index(drop=True)
    ids = frame["item_id"].astype("string").str.strip()
    reason = pd.Series(pd.NA, index=frame.index, dtype="string")
    reason[(ids.isna() | (ids == "")).fillna(True).astype(bool)] = "missing item_id"
    reason[(ids.str.len() > MAX_ID_LENGTH).fillna(False).astype(bool) & reason.isna()] = "id too long"
    dup = ids[reason.isna()].duplicated(keep="first").reindex(frame.index, fill_value=False)
    reason[dup] = "duplicate item_id"
    bad = reason.notna()
    quarantine = pd.DataFrame(
        {
            "stage": "item_catalog",
            "partition_date": pd.Series(pd.NaT, index=frame.index[bad], dtype="datetime64[us]"),
            "reason": reason[bad].astype(str),
            "user_id": None,
            "item_id": frame.loc[bad, "item_id"],
            "timestamp_raw": None,
            "value_raw": None,
            "source": source,
            "source_row": frame.index[bad].astype("int64"),
            "raw_line": None,
        },
        columns=QUARANTINE_COLUMNS,
    ).reset_index(drop=True)
    return frame[~bad].reset_index(drop=True), quarantine
